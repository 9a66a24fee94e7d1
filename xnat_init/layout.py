"""Where each XNAT file goes in the dataset: pathfmt parsing, rendering, sanitising, subdatasets.

A *pathfmt* names the folders a file of a scan resource is put in, e.g. the default
``{subject}/{session}/{scan}/``. The file's relative path inside its resource (nested folders
kept) follows the rendered folders. ``//`` instead of ``/`` marks a subdataset boundary: with
``{subject}//{session}/{scan}/`` every subject becomes its own DataLad dataset.

Placeholders (labels are what users see in XNAT's UI, IDs are accession numbers):

=============== ===============================================
``{project}``   project ID
``{subject}``   subject label            ``{subject_id}`` subject accession ID
``{session}``   session (experiment) label ``{session_id}`` session accession ID
``{scan}``      scan ID                  ``{scan_type}`` scan type
``{resource}``  resource label (``DICOM``, ``NIFTI``, ...)
=============== ===============================================

Resources that do not belong to a scan (session-, subject- and project-level resources) have no
scan (or session, or subject), so their folders are the pathfmt cut before the first segment that
uses a placeholder they lack (or ``{resource}``), followed by ``resources/<resource label>/``;
an image assessor's resources (QC, segmentations, processed data) go beside its session's, in
``assessors/<assessor label>/<resource label>/``. With the default pathfmt::

    SUBJ01/SUBJ01_MR1/1/file.dcm                  scan 1, any resource
    SUBJ01/SUBJ01_MR1/resources/BIDS/sub-01/...   session resource BIDS
    SUBJ01/SUBJ01_MR1/assessors/SUBJ01_MR1_QC/QC/qc_report.txt
                                                  resource QC of the assessor SUBJ01_MR1_QC
    SUBJ01/resources/notes/x.txt                  subject resource notes
    resources/protocol/README.txt                 project resource protocol

That layout is collision-free by construction: a rendered segment that would itself be
``resources`` or ``assessors`` (a scan with ID ``resources``) gets a ``_`` appended. Anything that still renders
two files to one path (a pathfmt without ``{resource}`` and two resources with the same file
name, say) is reported by :class:`CollisionTracker`.

Why sanitise: XNAT labels are free text. A ``/`` in a label must not create folders, and no label
or file name may lead out of the dataset or into ``.git``/``.datalad``. A rewritten label is
remembered (:meth:`PathFormat.rewritten`) so that the update can say which folder it got. A name
no file system holds (over ``NAME_MAX`` bytes, or not valid UTF-8) is refused with LayoutError,
before anything is written, rather than failing git in the middle of a commit.
"""

from __future__ import annotations

import hashlib
import re
import string
from array import array
from itertools import islice
from dataclasses import dataclass
from typing import Iterable

from git_annex_remote_xnat.records import FileRecord
from git_annex_remote_xnat.urls import FileLocation

PLACEHOLDERS = ("project", "subject", "session", "subject_id", "session_id", "scan",
                "scan_type", "resource")
DEFAULT_PATHFMT = "{subject}/{session}/{scan}/"
RESOURCES_DIR = "resources"
ASSESSORS_DIR = "assessors"

# Placeholders a record of each level lacks (a non-scan record's folders stop before them).
_UNAVAILABLE = {
    "scan": frozenset(),
    "session": frozenset({"scan", "scan_type", "resource"}),
    "assessor": frozenset({"scan", "scan_type", "resource"}),
    "subject": frozenset({"scan", "scan_type", "resource", "session", "session_id"}),
    "project": frozenset({"scan", "scan_type", "resource", "session", "session_id",
                          "subject", "subject_id"}),
}
# Names that must never appear as a path segment: they would change how git or DataLad treat
# the dataset (.git, .gitattributes, ...) or overwrite DataLad's own files.
_FORBIDDEN_SEGMENTS = frozenset({".git", ".datalad", ".gitattributes", ".gitmodules",
                                 ".gitignore", ".annex"})
# The longest name (one path segment) in bytes that file systems hold: NAME_MAX on Linux and
# macOS. git would create the file and fail on the symlink, after the listing was planned.
NAME_MAX = 255
# How many rewritten labels a PathFormat remembers for its report (they are few in practice).
_MAX_REWRITES = 1000


class LayoutError(ValueError):
    """A pathfmt, label or file name that cannot be placed in the dataset; the message says why."""


def sanitize_label(value: str) -> str:
    """A label made safe to be (part of) one path segment.

    `/` and `\\` (folder separators), control characters and NUL become `_`; a leading `.` becomes
    `_` so that no label can name `.git`, `.datalad` or `..`. A lone surrogate (a label that
    was not valid UTF-8) becomes `_` too: no file system name can hold it.
    """
    cleaned = "".join("_" if (ch in "/\\" or ord(ch) < 32 or ord(ch) == 127
                              or 0xD800 <= ord(ch) <= 0xDFFF) else ch
                      for ch in value)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned


def check_relative_path(path: str) -> list[str]:
    """The segments of a file's path inside its resource, or LayoutError if it is unsafe.

    Unlike labels, file paths are not rewritten: a file called `../x` or `.git/config` is refused,
    because silently renaming it would make the dataset disagree with the server.
    """
    if not path or path.startswith("/") or "\\" in path:
        raise LayoutError(f"file path {path!r} is empty, absolute or has a backslash")
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise LayoutError(f"file path {path!r} has an empty, '.' or '..' segment "
                              "and would leave its folder")
        if segment in _FORBIDDEN_SEGMENTS:
            raise LayoutError(f"file path {path!r} would write into {segment}")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in segment):
            raise LayoutError(f"file path {path!r} contains control characters")
        check_name(segment, "file name")
    return segments


def check_name(name: str, what: str) -> None:
    """LayoutError unless `name` can be one file or folder name: valid UTF-8 (no lone
    surrogate) and at most NAME_MAX bytes. `what` says what the name is ("file name")."""
    shown = repr(name) if len(name) <= 40 else repr(name[:32]) + "..."
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise LayoutError(f"{what} {shown} is not valid UTF-8 (character {exc.start + 1}), "
                          "which no file system name can hold") from None
    if size > NAME_MAX:
        raise LayoutError(f"{what} {shown} is {size} bytes long; file systems hold at most "
                          f"{NAME_MAX} bytes per name")


@dataclass(frozen=True)
class _Segment:
    """One folder level of a pathfmt: literal text and placeholders, and whether a `//` ends it."""

    parts: tuple[tuple[str, str | None], ...]   # (literal, placeholder or None)
    fields: frozenset[str]
    dataset_boundary: bool                     # a '//' follows: a subdataset starts below it

    def text(self, values: dict[str, str]) -> str:
        """The segment with the values filled in as they are (render makes a safe name)."""
        return "".join(literal + (values[name] if name else "") for literal, name in self.parts)

    def render(self, values: dict[str, str]) -> str:
        text = self.text(values)
        if not self.fields:
            return text
        if text == "":
            return "_"
        if text in (RESOURCES_DIR, ASSESSORS_DIR):  # keep the non-scan folders unambiguous
            return text + "_"
        if text.startswith("."):
            return "_" + text[1:]
        return text


@dataclass(frozen=True)
class RenderedPath:
    """Where one file goes: `path` from the top dataset, `dataset` the (sub)dataset holding it.

    `dataset` is '' for the top dataset, else a prefix of `path` (without trailing '/').
    """

    dataset: str
    path: str

    @property
    def path_in_dataset(self) -> str:
        return self.path[len(self.dataset) + 1:] if self.dataset else self.path


class PathFormat:
    """A parsed, validated pathfmt. Construction raises LayoutError with a fix-it message."""

    def __init__(self, pathfmt: str) -> None:
        self.pathfmt = pathfmt
        self.segments = self._parse(pathfmt)
        self.fields = frozenset().union(*(segment.fields for segment in self.segments))
        # Folder prefixes are shared by many files (one scan resource holds hundreds), so cache
        # the rendered (dataset, folder) per value tuple. Bounded, to keep memory flat.
        self._cache: dict[tuple, tuple[str, str]] = {}
        self._patterns: dict[tuple, re.Pattern[str]] = {}
        self._rewritten: dict[tuple[int, str], str] = {}

    @staticmethod
    def _parse(pathfmt: str) -> list[_Segment]:
        if not isinstance(pathfmt, str) or not pathfmt:
            raise LayoutError("pathfmt is empty; give e.g. '{subject}/{session}/{scan}/'")
        if not pathfmt.endswith("/"):
            raise LayoutError(f"pathfmt {pathfmt!r} must end with '/': it names folders, and the "
                              "file's own path inside its resource follows; "
                              f"try {pathfmt + '/'!r}")
        if pathfmt.startswith("/"):
            raise LayoutError(f"pathfmt {pathfmt!r} must be relative (no leading '/')")
        if pathfmt.endswith("//"):
            raise LayoutError(f"pathfmt {pathfmt!r} ends with '//': a subdataset boundary needs "
                              "a folder below it; write e.g. '{subject}//{session}/'")
        if "///" in pathfmt:
            raise LayoutError(f"pathfmt {pathfmt!r} has '///'; use '/' between folders and '//' "
                              "to start a subdataset")
        raw_segments = pathfmt[:-1].split("/")
        segments: list[_Segment] = []
        formatter = string.Formatter()
        index = 0
        while index < len(raw_segments):
            raw = raw_segments[index]
            boundary = index + 1 < len(raw_segments) and raw_segments[index + 1] == ""
            if raw == "":
                raise LayoutError(f"pathfmt {pathfmt!r} has an empty folder name")
            parts: list[tuple[str, str | None]] = []
            try:
                parsed = list(formatter.parse(raw))
            except ValueError as exc:
                raise LayoutError(f"pathfmt {pathfmt!r}: {exc}; write placeholders as {{name}} "
                                  "and literal braces as {{ and }}") from None
            for literal, name, spec, conversion in parsed:
                if name is not None:
                    if name not in PLACEHOLDERS:
                        raise LayoutError(
                            f"pathfmt {pathfmt!r} uses unknown placeholder {{{name}}}; known: "
                            + ", ".join("{" + p + "}" for p in PLACEHOLDERS))
                    if spec or conversion:
                        raise LayoutError(f"pathfmt {pathfmt!r}: placeholder {{{name}}} takes no "
                                          "format spec or conversion")
                parts.append((literal, name))
            fields = frozenset(name for _, name in parts if name)
            literal_text = "".join(literal for literal, _ in parts)
            if not fields and (literal_text in (".", "..") or literal_text in _FORBIDDEN_SEGMENTS):
                raise LayoutError(f"pathfmt {pathfmt!r} has the folder {literal_text!r}, which "
                                  "would leave the dataset or write into git's or DataLad's files")
            segments.append(_Segment(tuple(parts), fields, boundary))
            index += 2 if boundary else 1
        return segments

    @property
    def has_subdatasets(self) -> bool:
        return any(segment.dataset_boundary for segment in self.segments)

    @staticmethod
    def _labels(record: FileRecord) -> dict[str, str]:
        """The placeholders' values as XNAT has them."""
        return {
            "project": record.project,
            "subject": record.subject_label or record.subject_id,
            "subject_id": record.subject_id,
            "session": record.session_label or record.session_id,
            "session_id": record.session_id,
            "scan": record.scan_id,
            "scan_type": record.scan_type,
            "resource": record.resource,
        }

    def _values(self, record: FileRecord) -> dict[str, str]:
        return {name: sanitize_label(value) for name, value in self._labels(record).items()}

    def folder(self, record: FileRecord) -> tuple[str, str]:
        """(dataset, folder) for a record: the rendered folders with a trailing '/'.

        `dataset` is the deepest subdataset the folder lies in ('' for the top dataset).
        LayoutError if a folder name is one no file system holds (over NAME_MAX bytes).
        """
        level = record.level or "scan"
        try:
            unavailable = _UNAVAILABLE[level]
        except KeyError:
            raise LayoutError(f"unknown resource level {level!r}") from None
        cache_key = (level, record.project, record.subject_id, record.subject_label,
                     record.session_id, record.session_label, record.scan_id, record.scan_type,
                     record.resource, record.assessor_label)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        labels = self._labels(record)
        values = self._values(record)
        dataset = ""
        # (where in the layout, XNAT's text, the folder name written)
        names: list[tuple[int, str, str]] = []
        for index, segment in enumerate(self.segments):
            if segment.fields & unavailable:
                break
            names.append((index, segment.text(labels), segment.render(values)))
            if segment.dataset_boundary:
                dataset = "/".join(name for _, _, name in names)
        tail = len(self.segments)
        if level == "assessor":
            names += [(tail, ASSESSORS_DIR, ASSESSORS_DIR),
                      (tail + 1, record.assessor_label,
                       _segment_text(sanitize_label(record.assessor_label))),
                      (tail + 2, record.resource, _segment_text(values["resource"]))]
        elif level != "scan":
            names += [(tail, RESOURCES_DIR, RESOURCES_DIR),
                      (tail + 2, record.resource, _segment_text(values["resource"]))]
        for _, label, name in names:
            check_name(name, f"the folder name for {label!r}")
        for position, (index, label, name) in enumerate(names):
            if label != name and len(self._rewritten) < _MAX_REWRITES:
                self._rewritten.setdefault(
                    (index, label), "/".join(n for _, _, n in names[:position + 1]))
        folder = "".join(name + "/" for _, _, name in names)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[cache_key] = (dataset, folder)
        return dataset, folder

    def rewritten(self) -> list[tuple[str, str]]:
        """(XNAT's label, the folder written for it) of every label that folder() rewrote to be
        a safe name ('../x' -> '_._x'), once per label: the dataset shows other names than
        XNAT, and the user should hear which."""
        return [(label, folder) for (_, label), folder in self._rewritten.items()]

    def render(self, record: FileRecord) -> RenderedPath:
        """Where `record` goes; LayoutError if its relative path is unsafe."""
        check_relative_path(record.path)
        dataset, folder = self.folder(record)
        return RenderedPath(dataset, folder + record.path)

    def may_hold(self, path: str, location: FileLocation,
                 labels: dict[str, str] | None = None) -> bool:
        """Whether `path` (from the top dataset) is where this layout puts the file an xnat: URL
        names, as far as the URL tells: its IDs, resource and file path must be rendered as the
        layout renders them, while labels (an xnat: URL has none) may be anything, unless
        `labels` gives them ({"subject": …, "session": …, "scan_type": …}, as XNAT has them).

        An update owns a tracked file only where its layout put it: a user's copy of the file
        elsewhere (`cp -P` into `analysis/`) is the user's.
        """
        if not path.endswith("/" + location.path):
            return False
        known = {"project": location.project, "subject_id": location.subject_id,
                 "session_id": location.session_id, "scan": location.scan_id,
                 "resource": location.resource, **(labels or {})}
        key = (location.level, *sorted(known.items()))
        pattern = self._patterns.get(key)
        if pattern is None:
            if len(self._patterns) > 4096:
                self._patterns.clear()
            pattern = self._patterns[key] = re.compile(self._folder_pattern(location.level,
                                                                            known))
        return pattern.fullmatch(path[:-len(location.path)]) is not None

    def _folder_pattern(self, level: str, known: dict[str, str]) -> str:
        """A regular expression of the folders of a level's files: segments whose placeholders
        are all known rendered exactly, any other segment one folder of any name."""
        unavailable = _UNAVAILABLE.get(level)
        if unavailable is None:
            return "(?!)"
        values = {name: sanitize_label(known.get(name, "")) for name in PLACEHOLDERS}
        fixed = {name for name, value in known.items() if value}
        pattern = ""
        for segment in self.segments:
            if segment.fields & unavailable:
                break
            pattern += (re.escape(segment.render(values)) if segment.fields <= fixed
                        else "[^/]+") + "/"
        resource = re.escape(_segment_text(values["resource"]))
        if level == "assessor":
            pattern += f"{ASSESSORS_DIR}/[^/]+/{resource}/"
        elif level != "scan":
            pattern += f"{RESOURCES_DIR}/{resource}/"
        return pattern

    def datasets(self, dataset: str) -> list[str]:
        """The chain of datasets from the top down to `dataset` (which it ends with), without ''."""
        if not dataset:
            return []
        chain = []
        folder = ""
        parts = dataset.split("/")
        # A dataset path is a prefix ending at a boundary; rebuild prefixes segment by segment.
        for segment, part in zip(self.segments, parts):
            folder = f"{folder}/{part}" if folder else part
            if segment.dataset_boundary:
                chain.append(folder)
        return chain


def _segment_text(label: str) -> str:
    return label if label not in ("", ".", "..") else "_" + label


# ---------------------------------------------------------------------------------------------
# collision checks in flat memory


def path_hash(path: str) -> int:
    """A 64-bit fingerprint of a path, so a million paths cost 8 bytes each, not a str each."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "little")


class CollisionTracker:
    """Finds files that render to one path, and files that would sit where a folder must be.

    Paths are remembered as 64-bit fingerprints in an `array` (8 bytes per file), folders in a set
    (there are few: one per scan resource, roughly). `duplicates()` gives the fingerprints seen
    twice; the caller names the records behind them in a second pass over its spool.
    """

    def __init__(self) -> None:
        self._files = array("Q")
        self._folders: set[int] = set()
        self._last_folder = ""

    def add(self, path: str) -> int:
        fingerprint = path_hash(path)
        self._files.append(fingerprint)
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        if folder != self._last_folder:
            self._last_folder = folder
            while folder:
                fp = path_hash(folder)
                if fp in self._folders:
                    break
                self._folders.add(fp)
                folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
        return fingerprint

    def __len__(self) -> int:
        return len(self._files)

    def duplicates(self) -> set[int]:
        """Fingerprints used by two files, or by a file and a folder.

        Sorted in 256 buckets by the top byte: sorting all at once would make a list of Python
        ints (about 40 bytes per file, 40 MB at a million files) where the buckets cost 8 bytes
        per file and one small list at a time.
        """
        buckets = [array("Q") for _ in range(256)]
        for fingerprint in self._files:
            buckets[fingerprint >> 56].append(fingerprint)
        clashes: set[int] = set()
        for index, bucket in enumerate(buckets):
            ordered = sorted(bucket)
            buckets[index] = array("Q")  # free it as soon as it is sorted
            clashes.update(a for a, b in zip(ordered, islice(ordered, 1, None)) if a == b)
            clashes.update(fp for fp in ordered if fp in self._folders)
        return clashes


def describe_collisions(paths_and_sources: Iterable[tuple[str, str]], limit: int = 10) -> str:
    """One message naming the clashing paths and what they come from, with the fix to try."""
    lines = []
    for index, (path, source) in enumerate(sorted(paths_and_sources)):
        if index == limit:
            lines.append("...")
            break
        lines.append(f"{path} <- {source}")
    return ("several files render to the same path (or a file to a folder): "
            + "; ".join(lines)
            + ". Add {resource} (and perhaps {scan}) to --pathfmt, e.g. "
              "'{subject}/{session}/{scan}/{resource}/'")
