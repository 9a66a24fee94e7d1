"""The data model: site -> projects -> subjects -> experiments -> scans -> resources -> files.

Everything down to resources is ordinary Python objects (a 1,000,000-file project has a few
thousand sessions, which is cheap). Files are never materialised as a list for generated
resources: a `FileSource` derives name, size and content of file *i* arithmetically, and a
resource keeps only its run-time mutations in small dicts.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Callable, Iterator

from .content import Blob, BytesBlob, Filler, GeneratedBlob

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# guards the mutation dicts of every Resource (mutations are rare; reads copy under it)
MUTATION_LOCK = threading.Lock()


_B36_PAIRS = [a + b for a in _B36 for b in _B36]


def short_hash(text: str) -> str:
    """Six base-36 characters derived from `text` (like XNAT's DICOM file-name hashes)."""
    v = zlib.crc32(text.encode("utf-8"))
    return _B36_PAIRS[v % 1296] + _B36_PAIRS[(v // 1296) % 1296] + \
        _B36_PAIRS[(v // 1679616) % 1296]


class FileEntry:
    """One file of a resource. `digest` is True (computed MD5), "" (no digest) or a given string."""

    __slots__ = ("path", "blob", "digest_spec", "fmt", "content", "tags", "mtime", "_md5")

    def __init__(self, path: str, blob: Blob, *, digest: "bool | str | None" = True,
                 fmt: str = "", content: str = "", tags: str = "", mtime: float = 0.0) -> None:
        self.path = path
        self.blob = blob
        self.digest_spec = digest
        self.fmt = fmt
        self.content = content
        self.tags = tags
        self.mtime = mtime
        self._md5: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def size(self) -> int:
        return self.blob.size

    def md5(self) -> str:
        """The true MD5 of the content."""
        if self._md5 is None:
            self._md5 = self.blob.md5()
        return self._md5

    def digest(self) -> str:
        """What XNAT publishes as `digest`: MD5 hex, or "" when the catalog has none."""
        spec = self.digest_spec
        if spec is True:
            return self.md5()
        if not spec:
            return ""
        return str(spec)


class FileSource:
    """Arithmetic file generator: file i of `count` files."""

    count: int

    def entry(self, i: int) -> FileEntry:
        raise NotImplementedError

    def index_of(self, path: str) -> int | None:
        for i in range(self.count):
            if self.entry(i).path == path:
                return i
        return None

    def total_size(self) -> int:
        return sum(self.entry(i).size for i in range(self.count))


class DicomSeries(FileSource):
    """`count` DICOM files named `<StudyUID>-<series>-<instance>-<hash>.dcm`, equal size.

    MD5s are cached compactly (16 bytes per file) once computed.
    """

    def __init__(self, filler: Filler, ident: str, study_uid: str, series: int, count: int,
                 size: int, mtime: float, no_digest: Callable[[int], bool] | None = None,
                 fmt: str = "DICOM", content: str = "") -> None:
        self.filler = filler
        self.ident = ident
        self.study_uid = study_uid
        self.series = series
        self.count = count
        self.size = size
        self.mtime = mtime
        self.no_digest = no_digest
        self.fmt = fmt
        self.content = content
        self._digests: bytearray | None = None
        self._have: bytearray | None = None

    def name(self, i: int) -> str:
        return f"{self.study_uid}-{self.series}-{i + 1}-{short_hash(f'{self.ident}/{i}')}.dcm"

    def entry(self, i: int) -> FileEntry:
        name = self.name(i)
        blob = GeneratedBlob(self.filler, f"{self.ident}/{i}", name, self.size)
        digest: bool | str = True
        if self.no_digest is not None and self.no_digest(i):
            digest = ""
        e = FileEntry(name, blob, digest=digest, fmt=self.fmt, content=self.content,
                      mtime=self.mtime)
        if digest is True:
            if self._digests is None:
                self._digests = bytearray(16 * self.count)
                self._have = bytearray(self.count)
            if self._have[i]:
                e._md5 = bytes(self._digests[16 * i:16 * i + 16]).hex()
            else:
                md5 = e.md5()
                self._digests[16 * i:16 * i + 16] = bytes.fromhex(md5)
                self._have[i] = 1
        return e

    def index_of(self, path: str) -> int | None:
        prefix = f"{self.study_uid}-{self.series}-"
        if "/" in path or not path.startswith(prefix) or not path.endswith(".dcm"):
            return None
        parts = path[len(prefix):-4].split("-")
        if len(parts) != 2 or not parts[0].isdigit():
            return None
        i = int(parts[0]) - 1
        if 0 <= i < self.count and self.name(i) == path:
            return i
        return None

    def total_size(self) -> int:
        return self.count * self.size


class Resource:
    """A catalog resource. Files come from a static list and/or a FileSource, plus mutations."""

    def __init__(self, xnat_id: int, label: str, category: str, *, fmt: str = "",
                 content: str = "", tags: str = "", cat_id: str = "", cat_desc: str = "",
                 element_name: str = "xnat:resourceCatalog",
                 files: list[FileEntry] | None = None, source: FileSource | None = None) -> None:
        self.xnat_id = xnat_id
        self.label = label
        self.category = category
        self.fmt = fmt
        self.content = content
        self.tags = tags
        self.cat_id = cat_id
        self.cat_desc = cat_desc
        self.element_name = element_name
        self.static: list[FileEntry] = list(files or [])
        self.source = source
        # mutations: path -> FileEntry (replacement) or None (deleted); added files in order
        self.overrides: dict[str, FileEntry | None] = {}
        self.added: dict[str, FileEntry] = {}
        self.owner = None  # set by the parent

    # -- reading ------------------------------------------------------------------------
    def _base(self) -> Iterator[FileEntry]:
        yield from self.static
        if self.source is not None:
            for i in range(self.source.count):
                yield self.source.entry(i)

    def entries(self) -> Iterator[FileEntry]:
        with MUTATION_LOCK:
            overrides = dict(self.overrides)
            added = list(self.added.values())
        for e in self._base():
            if overrides:
                if e.path in overrides:
                    repl = overrides[e.path]
                    if repl is not None:
                        yield repl
                    continue
            yield e
        yield from added

    def _base_get(self, path: str) -> FileEntry | None:
        for e in self.static:
            if e.path == path:
                return e
        if self.source is not None:
            i = self.source.index_of(path)
            if i is not None:
                return self.source.entry(i)
        return None

    def get(self, path: str) -> FileEntry | None:
        with MUTATION_LOCK:
            if path in self.added:
                return self.added[path]
            if path in self.overrides:
                return self.overrides[path]
        return self._base_get(path)

    def stats(self) -> tuple[int, int]:
        if not self.overrides and not self.added and not self.static and self.source is not None:
            return self.source.count, self.source.total_size()
        n = size = 0
        for e in self.entries():
            n += 1
            size += e.size
        return n, size

    # -- mutations ----------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.get(path) is not None

    def put(self, entry: FileEntry) -> None:
        path = entry.path
        in_base = self._base_get(path) is not None
        with MUTATION_LOCK:
            if in_base:
                self.overrides[path] = entry
            else:
                self.added[path] = entry

    def remove(self, path: str) -> None:
        in_base = self._base_get(path) is not None
        with MUTATION_LOCK:
            if path in self.added:
                del self.added[path]
            elif in_base and self.overrides.get(path, True) is not None:
                self.overrides[path] = None
            else:
                raise KeyError(path)


class _ResourceOwner:
    """What holds resources (project, subject, scan, experiment): `resources` and adding one."""

    resources: list[Resource]

    def add_resource(self, res: Resource) -> Resource:
        res.owner = self
        self.resources.append(res)
        return res


class _Shared(_ResourceOwner):
    """A subject or experiment: one label per project it is in, its own project's first."""

    project: "Project"
    labels: dict[str, str]

    @property
    def label(self) -> str:
        return self.labels[self.project.id]

    def label_in(self, pid: str) -> str:
        return self.labels.get(pid, self.label)


class Project(_ResourceOwner):
    def __init__(self, pid: str, *, name: str = "", description: str = "",
                 accessibility: str = "public", pi_firstname: str = "", pi_lastname: str = "",
                 secondary_id: str = "", aliases: tuple[str, ...] = (),
                 members: dict[str, str] | None = None, insert_date: str = "") -> None:
        self.id = pid
        self.secondary_id = secondary_id or pid
        self.name = name or pid
        self.description = description
        self.accessibility = accessibility
        self.pi_firstname = pi_firstname
        self.pi_lastname = pi_lastname
        self.aliases = aliases
        self.members = dict(members or {})
        self.insert_date = insert_date
        self.resources: list[Resource] = []
        self.subjects: list[Subject] = []          # primary subjects and shared ones, in order
        self.experiments: list[Experiment] = []    # primary and shared subject assessors


class Subject(_Shared):
    def __init__(self, sid: str, project: Project, label: str, *, insert_date: str = "",
                 insert_user: str = "admin", gender: str = "", yob: str = "") -> None:
        self.id = sid
        self.project = project
        self.labels: dict[str, str] = {project.id: label}
        self.insert_date = insert_date
        self.insert_user = insert_user
        self.gender = gender
        self.yob = yob
        self.resources: list[Resource] = []
        self.experiments: list[Experiment] = []


class Scan(_ResourceOwner):
    def __init__(self, scan_id: str, session: "Experiment", xnat_id: int, *, type: str = "",
                 series_description: str = "", quality: str = "usable", note: str = "",
                 xsi_type: str = "xnat:mrScanData", uid: str = "", frames: int = 0) -> None:
        self.id = scan_id
        self.session = session
        self.xnat_id = xnat_id
        self.type = type
        self.series_description = series_description
        self.quality = quality
        self.note = note
        self.xsi_type = xsi_type
        self.uid = uid
        self.frames = frames
        self.resources: list[Resource] = []


class Experiment(_Shared):
    """An imaging session (subject assessor) or an image assessor (kind == "assessor")."""

    def __init__(self, eid: str, subject: Subject, project: Project, label: str, *,
                 xsi_type: str = "xnat:mrSessionData", date: str = "", time_: str = "",
                 insert_date: str = "", insert_user: str = "admin", modality: str = "MR",
                 uid: str = "", scanner_manufacturer: str = "", scanner_model: str = "",
                 field_strength: str = "", kind: str = "session",
                 session: "Experiment | None" = None) -> None:
        self.id = eid
        self.subject = subject
        self.project = project
        self.labels: dict[str, str] = {project.id: label}
        self.xsi_type = xsi_type
        self.date = date
        self.time = time_
        self.insert_date = insert_date
        self.insert_user = insert_user
        self.modality = modality
        self.uid = uid
        self.scanner_manufacturer = scanner_manufacturer
        self.scanner_model = scanner_model
        self.field_strength = field_strength
        self.kind = kind
        self.session = session            # for assessors: the image session assessed
        self.scans: list[Scan] = []
        self.resources: list[Resource] = []   # session resources, or assessor "out" resources
        self.in_resources: list[Resource] = []
        self.assessors: list[Experiment] = []

    @property
    def is_assessor(self) -> bool:
        return self.kind == "assessor"

    def scan(self, scan_id: str) -> Scan | None:
        for sc in self.scans:
            if sc.id == scan_id:
                return sc
        return None


class Site:
    """All data of one emulated XNAT, plus ID counters for run-time additions."""

    def __init__(self, seed: int = 0, site_id: str = "XNAT") -> None:
        self.seed = seed
        self.site_id = site_id
        self.filler = Filler(seed)
        self.projects: dict[str, Project] = {}
        self.subjects: dict[str, Subject] = {}
        self.experiments: dict[str, Experiment] = {}
        self.next_subject = 1
        self.next_experiment = 1
        self.next_scan_id = 1001
        self.next_resource_id = 101
        self.lock = threading.RLock()
        self.created = time.time()

    # -- construction -------------------------------------------------------------------
    def new_subject_id(self) -> str:
        sid = f"{self.site_id}_S{self.next_subject:05d}"
        self.next_subject += 1
        return sid

    def new_experiment_id(self) -> str:
        eid = f"{self.site_id}_E{self.next_experiment:05d}"
        self.next_experiment += 1
        return eid

    def new_scan_xnat_id(self) -> int:
        v = self.next_scan_id
        self.next_scan_id += 1
        return v

    def new_resource_id(self) -> int:
        v = self.next_resource_id
        self.next_resource_id += 1
        return v

    def add_project(self, project: Project) -> Project:
        self.projects[project.id] = project
        return project

    def add_subject(self, project: Project, label: str, **kw) -> Subject:
        subj = Subject(self.new_subject_id(), project, label, **kw)
        self.subjects[subj.id] = subj
        project.subjects.append(subj)
        return subj

    def add_session(self, subject: Subject, label: str, **kw) -> Experiment:
        exp = Experiment(self.new_experiment_id(), subject, subject.project, label, **kw)
        self.experiments[exp.id] = exp
        subject.experiments.append(exp)
        subject.project.experiments.append(exp)
        return exp

    def add_assessor(self, session: Experiment, label: str, **kw) -> Experiment:
        kw.setdefault("xsi_type", "xnat:qcAssessmentData")
        exp = Experiment(self.new_experiment_id(), session.subject, session.project, label,
                         kind="assessor", session=session, **kw)
        self.experiments[exp.id] = exp
        session.assessors.append(exp)
        return exp

    def add_scan(self, session: Experiment, scan_id: str, **kw) -> Scan:
        sc = Scan(scan_id, session, self.new_scan_xnat_id(), **kw)
        session.scans.append(sc)
        return sc

    def resource(self, label: str, category: str, **kw) -> Resource:
        return Resource(self.new_resource_id(), label, category, **kw)

    def share_subject(self, subject: Subject, project: Project, label: str) -> None:
        subject.labels[project.id] = label
        project.subjects.append(subject)

    def share_experiment(self, exp: Experiment, project: Project, label: str) -> None:
        exp.labels[project.id] = label
        project.experiments.append(exp)

    def gen(self, ident: str, name: str, size: int) -> GeneratedBlob:
        return GeneratedBlob(self.filler, ident, name, size)

    # -- lookup -------------------------------------------------------------------------
    def project(self, token: str) -> Project | None:
        p = self.projects.get(token)
        if p is not None:
            return p
        for p in self.projects.values():
            if token in p.aliases or token == p.secondary_id:
                return p
        return None


def text_blob(text: str) -> BytesBlob:
    return BytesBlob(text.encode("utf-8"))
