"""The plan: what each dataset gets from an update, decided before anything is written.

Input: the server's file records (as the client lists them) and the datasets as they are
(datasets.Hierarchy). Output: a Plan, one ChangeSet per dataset. Each file of the server is

* skipped (a path that would leave its folder or write into `.git`: reported with its name,
  the rest of the project goes ahead),
* new, changed (other content than the dataset tracks), or unchanged: compared by 64-bit
  fingerprints of path and symlink, so an unchanged file costs a hash and nothing else;
  files to register (and, in the default mode, files whose content is wanted) go to the
  dataset's spool on disk, not into Python objects, so memory stays flat;

and each file a dataset tracks that the server no longer lists is *gone* when this instance owns
it: an xnat: URL of its server inside its scope (Scope), at the path the layout gives that URL
(a user's copy elsewhere is not the instance's) and not listed any more (the same content listed
elsewhere, by this or another instance, keeps it). It is removed only with --remove-gone. A
file the last update put at labels the server has since renamed is *moved* instead: removed
there, as it is registered at the new labels. The instance's `//` subdatasets that no listed
file went to (a subject gone, or renamed) are looked into as well. Counts are those of the
change sets, summed where a total is shown.

Files without an XNAT digest get their key from their content: the planner hands them out
(unkeyed), the caller downloads and hashes them (fetch.hash_contents) and gives each key back
(keyed), or says it failed (unhashable); with --reckless fast, which downloads nothing, they get
a VURL key instead (keyed_by_url), which git-annex verifies from the first download on.
"""

from __future__ import annotations

import tempfile
from fnmatch import fnmatchcase
from array import array
from dataclasses import dataclass, field, fields
from typing import Callable

from git_annex_remote_xnat.client import Walk
from git_annex_remote_xnat.keys import is_vurl_key, key_size, md5e_key, vurl_key
from git_annex_remote_xnat.records import FileRecord
from git_annex_remote_xnat.urls import FileLocation, normalize_base_url, parse_file_url

from ..common import scan_selected
from ..config import read_config
from ..layout import (
    CollisionTracker,
    LayoutError,
    PathFormat,
    RenderedPath,
    describe_collisions,
    path_hash,
)
from .datasets import DatasetView, Hierarchy
from .gitannex import key_urls, symlink_fingerprint, tracked_keys
from .metadata import Annotations, Contexts
from .spool import Entry, EntrySpool, spool_directory
from .tables import ATTRIBUTES, ATTRIBUTES_CONTENT, TableBuilder, Tables

MAX_LISTED_PROBLEMS = 20


class UpdateAborted(Exception):
    """Problems found before anything was written; each item is one result message."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclass
class PlanOptions:
    force: bool          # re-register files that look unchanged
    skip_changed: bool   # --ifexists skip: keep the old version of a changed file
    fetch: bool          # the default mode: the content of every listed file is wanted
    remove_gone: bool


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0
    forced: int = 0      # re-registered although unchanged (--force); counted as unchanged too
    gone: int = 0
    removed: int = 0
    bytes_added: int = 0
    bytes_changed: int = 0
    no_digest: int = 0   # listed without an XNAT digest (keyed by hashing, or VURL keys)
    relabelled: int = 0  # not registered again, but XNAT's values for them changed (metadata)
    moved: int = 0       # at labels the server renamed: removed there (their files are listed
                         # at the new labels, and registered there)

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in fields(self)})


@dataclass
class ChangeSet:
    """What one dataset gets: files to register, content wanted, files gone."""

    view: DatasetView
    entries: EntrySpool = field(default_factory=EntrySpool)
    annotations: Annotations = field(default_factory=Annotations)   # git-annex metadata
    counts: Counts = field(default_factory=Counts)
    gone: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)   # at renamed labels (Planner.renamed)
    remove_gone: bool = False

    @property
    def relpath(self) -> str:
        return self.view.relpath

    @property
    def removals(self) -> list[str]:
        """What the commit removes: the files moved away from renamed labels, and the files
        gone with --remove-gone."""
        return self.moved + (self.gone if self.remove_gone else [])

    def close(self) -> None:
        self.entries.close()
        self.annotations.close()


@dataclass
class Plan:
    """The change sets of every dataset touched (ancestors of a changed one included), the
    files that could not be planned (reported, the rest goes ahead), the metadata contexts the
    change sets' annotations name, and the instance's tables where they changed (path in the
    top dataset -> content)."""

    change_sets: dict[str, ChangeSet]
    failures: list[str]
    contexts: Contexts = field(default_factory=lambda: Contexts(Tables()))
    tables: dict[str, bytes] = field(default_factory=dict)

    @property
    def totals(self) -> Counts:
        total = Counts()
        for change_set in self.change_sets.values():
            total = total + change_set.counts
        return total

    @property
    def wanted(self) -> int:
        return sum(c.entries.wanted for c in self.change_sets.values())


class Scope:
    """Which registered xnat: URLs this update is responsible for: those of its server in its
    project and in its subjects, experiments and collections where given. `walk` holds the
    accession IDs of the subjects and sessions the listing walked (filled by the client's
    enumeration): the selected ones, also when a filter named them by label."""

    def __init__(self, base_url: str, project: str, subjects: list[str],
                 experiments: list[str], collections: list[str], walk: Walk,
                 scan_types: list[str] | None = None, qualities: list[str] | None = None
                 ) -> None:
        self.base_url = base_url
        self.project = project
        self.subjects = subjects
        self.experiments = experiments
        self.collections = collections
        self.walk = walk
        self.scan_types = scan_types or []
        self.qualities = qualities or []
        self.scans_seen: dict[str, set[str]] = {"scan type": set(), "quality": set()}
        self.patterns_matched: set[str] = set()

    def takes(self, record: FileRecord) -> bool:
        """Whether a listed file is selected by --scan-type and --quality (every file when
        neither is given; only scan files when one is). A listed file that is not selected
        is still listed: the tracked file it names is not gone, it is left as it is."""
        if record.level == "scan":
            for what, patterns, value in (("scan type", self.scan_types, record.scan_type),
                                          ("quality", self.qualities, record.quality)):
                if patterns:
                    self.scans_seen[what].add(value)
                    self.patterns_matched.update(f"{what} {p}" for p in patterns
                                                 if fnmatchcase(value, p))
        return scan_selected(record, self.scan_types, self.qualities)

    def unmatched(self) -> list[str]:
        """One line per --scan-type or --quality pattern that matched no listed scan, with
        what the listing had."""
        lines = []
        for what, patterns in (("scan type", self.scan_types), ("quality", self.qualities)):
            missed = [p for p in patterns if f"{what} {p}" not in self.patterns_matched]
            if missed:
                seen = sorted(v or "(none)" for v in self.scans_seen[what])
                lines.append(f"{what} {', '.join(missed)} matched no scan; the scans listed "
                             f"have: {', '.join(seen[:20]) or 'none'}"
                             + (" ..." if len(seen) > 20 else ""))
        return lines

    def location(self, url: str) -> FileLocation | None:
        """What `url` names when it is inside the scope, else None."""
        location = parse_file_url(url, self.base_url)
        if location is None:
            return None
        if self.collections and location.resource not in self.collections:
            return None
        if not location.project:
            # The older form names a session by its ID only: inside when the listing walked it.
            return location if location.session_id in self.walk.sessions else None
        if location.project != self.project:
            return None
        if location.level == "project":
            return None if self.subjects or self.experiments else location
        if self.subjects and location.subject_id not in self.walk.subjects:
            return None
        if location.level == "subject":
            return None if self.experiments else location
        if self.experiments and location.session_id not in self.walk.sessions:
            return None
        return location

    def lists_subject(self, subject_id: str) -> bool:
        """Whether this run lists the subject's own files (its row in the tables is this
        run's to write; a subject the run lists and does not find is gone)."""
        if self.experiments:
            return False
        return not self.subjects or subject_id in self.walk.subjects

    def lists_session(self, subject_id: str, session_id: str) -> bool:
        """Whether this run lists the files of that session (of that subject)."""
        if self.experiments:
            return session_id in self.walk.sessions
        return not self.subjects or subject_id in self.walk.subjects


@dataclass
class _Unkeyed:
    """A file without an XNAT digest, waiting for its key."""

    rendered: RenderedPath
    url: str
    record: FileRecord


class Planner:
    """Builds the Plan from the server's records, one at a time (see the module docstring)."""

    def __init__(self, hierarchy: Hierarchy, fmt: PathFormat, options: PlanOptions,
                 scope: Scope, on_top_wanted: Callable[[Entry], None] | None = None,
                 instance: str = "default") -> None:
        """`on_top_wanted` is told each file of the top dataset whose content is wanted, as
        it is planned (the default mode's downloads start during the listing); `instance`
        names the tables (.xnat/<instance>/) the top dataset keeps."""
        self.hierarchy = hierarchy
        self.fmt = fmt
        self.options = options
        self.scope = scope
        self.on_top_wanted = on_top_wanted
        self.instance = instance
        top = hierarchy.view("")
        self.old_tables = Tables.read(top.path, top.head if top.exists else None, instance)
        self.contexts = Contexts(self.old_tables)
        self._tables = TableBuilder()
        self.change_sets: dict[str, ChangeSet] = {}
        self.failures: list[str] = []
        self._collisions = CollisionTracker()
        self._sources = tempfile.NamedTemporaryFile("w+", encoding="utf-8",
                                                    errors="surrogateescape", prefix="xnat-paths-",
                                                    dir=spool_directory())
        self._conflicts: list[str] = []
        self._unkeyed: list[_Unkeyed] = []
        self._left_out_unkeyed: list[_Unkeyed] = []   # tracked, deselected, key not listed
        self._unseen_keys: dict[str, dict[str, str]] = {}
        self._listed_urls = array("Q")  # fingerprints of every URL the server listed
        self._placed_urls = array("Q")  # of those this run put at a path (new, changed, kept)

    def change_set(self, relpath: str) -> ChangeSet:
        found = self.change_sets.get(relpath)
        if found is None:
            for ancestor in self.hierarchy.ancestors(relpath):
                self.change_set(ancestor)
            found = self.change_sets[relpath] = ChangeSet(
                self.hierarchy.view(relpath), remove_gone=self.options.remove_gone)
        return found

    # ------------------------------------------------------------------------------ listing

    def add(self, record: FileRecord, url: str) -> None:
        """One file the server lists, with its xnat: URL."""
        self._listed_urls.append(path_hash(url))
        self._tables.add(record)
        if not self.scope.takes(record):
            self._left_out(record, url)
            return
        try:
            rendered = self.fmt.render(record)
        except LayoutError as exc:
            self.failures.append(f"skipped {url}: {exc}; rename it on the server or leave it "
                                 "out with --collection")
            return
        fingerprint = self._collisions.add(rendered.path)
        self._sources.write(f"{fingerprint}\t{rendered.path}\t{url}\n")
        if record.md5 is None:
            self.change_set(rendered.dataset).counts.no_digest += 1
            self._unkeyed.append(_Unkeyed(rendered, url, record))
            return
        self._consider(rendered, Entry(rendered.path_in_dataset,
                                       md5e_key(record.size, record.md5, record.path), url),
                       record)

    def _left_out(self, record: FileRecord, url: str) -> None:
        """A listed file outside --scan-type/--quality: neither registered nor gone, but a
        tracked copy at its path gets this update's values (a scan rated unusable leaves a
        `--quality usable` selection, and its files then say unusable, as scans.tsv does).
        Only datasets already installed are looked in: a deselected file installs nothing."""
        try:
            rendered = self.fmt.render(record)
        except LayoutError:
            return
        if not self.hierarchy.installed(rendered.dataset):
            return
        change_set = self.change_set(rendered.dataset)
        tree, inner = change_set.view.tree, rendered.path_in_dataset
        index = tree.lookup(path_hash(inner)) if tree.paths else None
        if index is None or tree.blobs[index] == 0:
            return
        if record.md5 is not None:
            key = md5e_key(record.size, record.md5, record.path)
            if tree.blobs[index] == symlink_fingerprint(key, inner):
                tree.mark_seen(inner)
                self._annotate(change_set, key, record, registered=False)
                return
        self._left_out_unkeyed.append(_Unkeyed(rendered, url, record))

    def _annotate_left_out_unkeyed(self) -> None:
        """The tracked files outside the selection whose key the listing could not give (no
        digest, or content the server changed): their key is read from the dataset."""
        for item in self._left_out_unkeyed:
            key = self._tracked_unseen(item.rendered.dataset).get(item.rendered.path_in_dataset)
            if key:
                self._annotate(self.change_set(item.rendered.dataset), key, item.record,
                               registered=False)
        self._left_out_unkeyed = []

    def check(self) -> None:
        """UpdateAborted if the listing found what stops the update before it writes: two
        files on one path, a path used by a file that is not from XNAT."""
        problems = []
        duplicates = self._collisions.duplicates()
        if duplicates:
            self._sources.seek(0)
            clashing = []
            for line in self._sources:
                fingerprint, path, url = line.rstrip("\n").split("\t")
                if int(fingerprint) in duplicates:
                    clashing.append((path, url))
            problems.append(describe_collisions(clashing))
        self._sources.close()
        if self._conflicts:
            problems.append("these paths are already used by files that are not registered "
                            "from XNAT: " + ", ".join(self._conflicts[:MAX_LISTED_PROBLEMS])
                            + "; move them away or choose another --pathfmt")
        if problems:
            raise UpdateAborted(problems + ["nothing was changed"])

    def _consider(self, rendered: RenderedPath, entry: Entry, record: FileRecord,
                  size: int | None = None) -> None:
        """Compare one file with what its dataset tracks, and plan what it needs (`size`:
        its content's, when it is known better than the listing's)."""
        size = record.size if size is None else size
        self._placed_urls.append(path_hash(entry.url))
        change_set = self.change_set(rendered.dataset)
        tree, counts = change_set.view.tree, change_set.counts
        index = tree.mark_seen(entry.path)
        want = self.options.fetch
        if index is not None:
            old = tree.blobs[index]
            if old == 0:
                self._conflicts.append(rendered.path)
                return
            same = old == symlink_fingerprint(entry.key, entry.path)
            if same and not self.options.force:
                counts.unchanged += 1
                self._plan(change_set, entry, record, register=False, want=want)
                return
            if not same and self.options.skip_changed:
                counts.skipped += 1  # the dataset keeps the version the server no longer has
                return
            if same:
                counts.unchanged += 1
                counts.forced += 1
            else:
                counts.changed += 1
                counts.bytes_changed += size
        else:
            counts.added += 1
            counts.bytes_added += size
        self._plan(change_set, entry, record, register=True, want=want)

    def _plan(self, change_set: ChangeSet, entry: Entry, record: FileRecord, *, register: bool,
              want: bool) -> None:
        change_set.entries.add(entry, register=register, want=want)
        self._annotate(change_set, entry.key, record, registered=register)
        if want and not change_set.relpath and self.on_top_wanted is not None:
            self.on_top_wanted(entry)

    def _annotate(self, change_set: ChangeSet, key: str, record: FileRecord, *,
                  registered: bool) -> None:
        if change_set.annotations.add(key, self.contexts.of(record), registered) \
                and not registered:
            change_set.counts.relabelled += 1

    # ------------------------------------------------------------------- files without digest

    def unkeyed(self) -> list[_Unkeyed]:
        """The files without digest whose content must be hashed to key them.

        A file the dataset already tracks with a key of the same size counts as unchanged:
        without a digest the server cannot tell of a change of content, and hashing every such
        file on every update would make each update cost what the first one did. --force
        hashes them again, and so does the default mode a file with a VURL key (registered by
        --reckless fast): it downloads the content anyway, so the file gets its MD5E key.
        """
        remaining = []
        for item in self._unkeyed:
            inner = item.rendered.path_in_dataset
            key = None if self.options.force else \
                self._tracked_unseen(item.rendered.dataset).get(inner)
            if not key or key_size(key) != item.record.size or \
                    (self.options.fetch and is_vurl_key(key)):
                remaining.append(item)
                continue
            change_set = self.change_set(item.rendered.dataset)
            change_set.view.tree.mark_seen(inner)
            change_set.counts.unchanged += 1
            self._plan(change_set, Entry(inner, key, item.url), item.record, register=False,
                       want=self.options.fetch)
        self._unkeyed = []
        return remaining

    def keyed(self, item: _Unkeyed, md5: str, size: int) -> None:
        """The content of an unkeyed file was hashed."""
        self._consider(item.rendered, Entry(item.rendered.path_in_dataset,
                                            md5e_key(size, md5, item.record.path), item.url),
                       item.record, size)

    def keyed_by_url(self, item: _Unkeyed) -> None:
        """An unkeyed file gets a VURL key with its listed size, without a download (--reckless
        fast); git-annex records its checksum at the first download and checks later copies."""
        self._consider(item.rendered, Entry(item.rendered.path_in_dataset,
                                            vurl_key(item.record.size, item.url,
                                                     item.record.path), item.url), item.record)

    def unhashable(self, item: _Unkeyed, error: str) -> None:
        """An unkeyed file could not be downloaded: reported; what the dataset has of it stays
        and is not called gone."""
        self.failures.append(f"could not hash {item.url} (the server has no digest for it): "
                             f"{error}")
        self.change_set(item.rendered.dataset).view.tree.mark_seen(
            item.rendered.path_in_dataset)

    # ------------------------------------------------------------------------------ the end

    def _tracked_unseen(self, relpath: str) -> dict[str, str]:
        """path -> key of the annexed files of a dataset that the listing did not mark seen
        (read once per dataset: the second and last reading of its tree)."""
        found = self._unseen_keys.get(relpath)
        if found is None:
            view = self.hierarchy.view(relpath)
            unseen = view.tree.unseen() if view.exists and view.head else set()
            found = self._unseen_keys[relpath] = dict(tracked_keys(view.path, view.head, unseen)) \
                if unseen else {}
        return found

    def close(self) -> None:
        """Remove the spools (the plan is carried out, or abandoned)."""
        self._sources.close()
        for change_set in self.change_sets.values():
            change_set.close()

    def finish(self) -> Plan:
        """The plan, with the files gone from the server found.

        A tracked file the listing did not put where it is is gone when one of its key's URLs
        is inside the scope, is one the layout puts at that path (labels aside, which a URL
        does not carry), and was not listed. A URL the server still lists was put at its path
        this time, so it says nothing about this one: the same content elsewhere (another
        session, another instance's project, a user's copy) keeps the file. Unless it was
        renamed: the last update put the file at that path by the labels its tables recorded,
        the server's labels now put it elsewhere (`renamed`), and this run put it there (a
        file outside the selection, or skipped, is not); then the file is *moved*: removed
        here in the commit that registers it at the new labels (whatever --remove-gone says:
        the server still has it, at the new labels, with the same key).
        """
        self._annotate_left_out_unkeyed()
        found: list[tuple[str, str, str, list[tuple[str, FileLocation]]]] = []
        for relpath in list(self.change_sets) + self._untouched_subdatasets():
            view = self.hierarchy.view(relpath)
            candidates = [(path, key) for path, key in self._tracked_unseen(relpath).items()
                          if not view.tree.is_seen(path)]
            if not candidates:
                continue
            urls = key_urls(view.path, {key for _, key in candidates})
            for path, key in candidates:
                full_path = f"{relpath}/{path}" if relpath else path
                owned = [(url, location) for url in urls.get(key, [])
                         if (location := self.scope.location(url)) is not None
                         and self.fmt.may_hold(full_path, location)]
                if owned:
                    found.append((relpath, path, full_path, owned))
        fingerprints = {path_hash(url) for *_, owned in found for url, _ in owned}
        listed = _among(self._listed_urls, fingerprints)
        placed = _among(self._placed_urls, fingerprints)
        for relpath, path, full_path, owned in found:
            if any(path_hash(url) not in listed for url, _ in owned):
                change_set = self.change_set(relpath)
                change_set.gone.append(path)
                change_set.counts.gone += 1
                change_set.counts.removed += self.options.remove_gone
            elif any(path_hash(url) in placed and self.renamed(full_path, location)
                     for url, location in owned):
                change_set = self.change_set(relpath)
                change_set.moved.append(path)
                change_set.counts.moved += 1
        tables = self._changed_tables()
        if tables:
            self.change_set("")
        return Plan(self.change_sets, self.failures, self.contexts, tables)

    def _untouched_subdatasets(self) -> list[str]:
        """The installed `//` subdatasets of this instance that no listed file went to (their
        subject or session is gone from the server, or was renamed), found through the
        gitlinks of the datasets looked at: their files may be gone too. Another dataset
        registered there (one of the user's, another instance's) is not looked into, nor is
        any when the run lists some subjects or sessions only (-s, -e): the others are not
        its to find gone, and looking into each would cost a narrowed run the whole tree."""
        if not self.fmt.has_subdatasets or self.scope.subjects or self.scope.experiments:
            return []
        found: list[str] = []
        looked = set(self.change_sets)
        pending = list(self.change_sets)
        while pending:
            parent = pending.pop()
            view = self.hierarchy.view(parent)
            for inner in view.tree.gitlinks:
                child = f"{parent}/{inner}" if parent else inner
                if child in looked:
                    continue
                looked.add(child)
                chain = self.fmt.datasets(child)
                if not chain or chain[-1] != child or not self.hierarchy.installed(child):
                    continue  # no boundary of the layout there, or nothing to look at
                config = read_config(self.hierarchy.top / child, self.instance)
                if config is None or config.project != self.scope.project or \
                        normalize_base_url(config.url) != normalize_base_url(self.scope.base_url):
                    continue
                found.append(child)
                pending.append(child)
        return found

    def renamed(self, path: str, location: FileLocation) -> bool:
        """Whether the last update put the file `location` names at `path` (by the labels its
        tables recorded) and this listing's labels put it elsewhere: its subject, session or
        scan type was renamed on the server (XNAT keeps the ID, and so the URL). False when
        either set of labels is not known (tables from before them, a part not walked)."""
        before = _labels(self.old_tables, location)
        now = _labels(self._tables.tables, location)
        return before is not None and now is not None and before != now \
            and self.fmt.may_hold(path, location, before) \
            and not self.fmt.may_hold(path, location, now)

    def _changed_tables(self) -> dict[str, bytes]:
        """The tables (and their .gitattributes) whose content this update changes."""
        old, scope = self.old_tables, self.scope

        def walked(table: str, row: dict[str, str]) -> bool:
            if table == "subjects":
                return scope.lists_subject(row.get("subject_id", ""))
            session_id = row.get("session_id", "")
            subject_id = row.get("subject_id") if table == "sessions" else \
                old.sessions.get(session_id, {}).get("subject_id", "")
            return scope.lists_session(subject_id or "", session_id)

        contents = self._tables.finish(old, walked).contents(self.instance)
        contents[ATTRIBUTES] = ATTRIBUTES_CONTENT
        return {path: content for path, content in contents.items()
                if old.raw.get(path) != content}



def _among(urls: array, fingerprints: set[int]) -> set[int]:
    """Those of `fingerprints` that `urls` holds (one pass over the flat array)."""
    if not fingerprints:
        return set()
    return {fp for fp in urls if fp in fingerprints}


def _labels(tables: Tables, location: FileLocation) -> dict[str, str] | None:
    """The labels the layout renders for what `location` names, as `tables` have them (a
    missing label falls back to the ID, as PathFormat does); None when `tables` lack a row."""
    subject = tables.subjects.get(location.subject_id) if location.subject_id else None
    if subject is None:
        return None  # a project's own files (no labels), or a URL of the older form
    labels = {"subject": subject.get("subject") or location.subject_id}
    if location.level == "subject":
        return labels
    session = tables.sessions.get(location.session_id)
    if session is None:
        return None
    labels["session"] = session.get("session") or location.session_id
    if location.level == "scan":
        scan = tables.scans.get((location.session_id, location.scan_id))
        if scan is None:
            return None
        labels["scan_type"] = scan.get("scan_type", "")
    return labels
