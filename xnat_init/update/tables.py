"""The instance's tables: what the server lists, as text a clone can search without the server.

Each update writes `.xnat/<instance>/subjects.tsv`, `sessions.tsv` and `scans.tsv` into the
top dataset (plain blobs in git, never annexed: `.xnat/.gitattributes` says so), in the commit
that registers the files. One row per subject, session and scan that has files in the listing,
with XNAT's values and the number and bytes of their files; sorted, with a header, so that the
files change only when the server does and `git log -p .xnat/` shows what changed on it.

The tables also remember what each file's metadata was written from: a file whose subject,
session or scan row is unchanged since the last update needs no metadata written
(metadata.py). Values are XNAT's; a tab, newline, carriage return or backslash in one is
written as `\\t`, `\\n`, `\\r`, `\\\\` (the escapes of PostgreSQL's text format).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from git_annex_remote_xnat.records import FileRecord

from .gitannex import CatFile

TABLES_DIR = ".xnat"
ATTRIBUTES = f"{TABLES_DIR}/.gitattributes"
ATTRIBUTES_CONTENT = b"# written by datalad xnat-update: these tables stay in git\n" \
                     b"* annex.largefiles=nothing\n"

SUBJECT_COLUMNS = ("subject", "subject_id", "sessions", "files", "bytes")
SESSION_COLUMNS = ("subject", "subject_id", "session", "session_id", "date", "xsitype",
                   "scans", "files", "bytes")
SCAN_COLUMNS = ("subject", "session", "session_id", "scan", "scan_type", "series_description",
                "quality", "files", "bytes")
COLUMNS = {"subjects": SUBJECT_COLUMNS, "sessions": SESSION_COLUMNS, "scans": SCAN_COLUMNS}

Row = dict[str, str]

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def table_path(instance: str, table: str) -> str:
    return f"{TABLES_DIR}/{instance}/{table}.tsv"


def _escape(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\tnr]", lambda m: _UNESCAPES[m.group(0)], value)


def _natural(text: str) -> tuple:
    """Sort key that puts scan 2 before scan 10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


def render(table: str, rows: Iterable[Row]) -> bytes:
    """A table's TSV: the header, then the rows in their fixed order."""
    columns = COLUMNS[table]
    order = _ROW_ORDER[table]
    lines = ["\t".join(columns)]
    lines += ["\t".join(_escape(row.get(column, "")) for column in columns)
              for row in sorted(rows, key=order)]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def parse(content: bytes) -> list[Row]:
    """The rows of a table written by `render` (or edited by hand: columns by header name)."""
    lines = content.decode("utf-8", "surrogateescape").split("\n")
    header = lines[0].split("\t") if lines else []
    return [dict(zip(header, map(_unescape, line.split("\t")))) for line in lines[1:] if line]


_ROW_ORDER: dict[str, Callable[[Row], tuple]] = {
    "subjects": lambda r: (r.get("subject", ""), r.get("subject_id", "")),
    "sessions": lambda r: (r.get("subject", ""), r.get("session", ""), r.get("session_id", "")),
    "scans": lambda r: (r.get("subject", ""), r.get("session", ""), _natural(r.get("scan", "")),
                        r.get("scan", ""), r.get("session_id", "")),
}


def subject_key(row: Row) -> str:
    return row.get("subject_id", "")


def session_key(row: Row) -> str:
    return row.get("session_id", "")


def scan_key(row: Row) -> tuple[str, str]:
    return row.get("session_id", ""), row.get("scan", "")


@dataclass
class Tables:
    """The rows of the three tables, by the IDs that name them."""

    subjects: dict[str, Row] = field(default_factory=dict)
    sessions: dict[str, Row] = field(default_factory=dict)
    scans: dict[tuple[str, str], Row] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)   # path -> content, as read
    present: bool = False    # read from a commit that has them (not a dataset from before them)

    @classmethod
    def read(cls, repo: Path, head: str | None, instance: str) -> "Tables":
        """The tables the commit `head` holds (empty ones where it has none)."""
        tables = cls()
        if head is None:
            return tables
        catfile = CatFile(repo)
        try:
            content = catfile.get(f"{head}:{ATTRIBUTES}")
            if content is not None:
                tables.raw[ATTRIBUTES] = content
            for name, keyed in (("subjects", subject_key), ("sessions", session_key),
                                ("scans", scan_key)):
                path = table_path(instance, name)
                content = catfile.get(f"{head}:{path}")
                if content is not None:
                    tables.raw[path] = content
                    tables.present = True
                    getattr(tables, name).update((keyed(row), row) for row in parse(content))
        finally:
            catfile.close()
        return tables

    def contents(self, instance: str) -> dict[str, bytes]:
        """{path in the dataset: content} of the three tables."""
        return {table_path(instance, name): render(name, getattr(self, name).values())
                for name in COLUMNS}


class TableBuilder:
    """Collects the rows of the tables from the listed file records, as they come (a few
    dictionary look-ups per file: the listing of a million files must not wait for it)."""

    def __init__(self) -> None:
        self.tables = Tables()
        self._counts: dict[str, dict] = {name: {} for name in COLUMNS}  # key -> [files, bytes]
        self._sessions_of: dict[str, int] = {}   # subject ID -> sessions seen
        self._scans_of: dict[str, int] = {}      # session ID -> scans seen

    def add(self, record: FileRecord) -> None:
        size = record.size
        if record.subject_id:
            counts = self._counts["subjects"].get(record.subject_id)
            if counts is None:
                counts = self._counts["subjects"][record.subject_id] = [0, 0]
                self.tables.subjects[record.subject_id] = {
                    "subject": record.subject_label, "subject_id": record.subject_id}
            counts[0] += 1
            counts[1] += size
        if not record.session_id:
            return
        counts = self._counts["sessions"].get(record.session_id)
        if counts is None:
            counts = self._counts["sessions"][record.session_id] = [0, 0]
            self._sessions_of[record.subject_id] = self._sessions_of.get(record.subject_id, 0) + 1
            self.tables.sessions[record.session_id] = {
                "subject": record.subject_label, "subject_id": record.subject_id,
                "session": record.session_label, "session_id": record.session_id,
                "date": record.session_date, "xsitype": record.session_xsi_type}
        counts[0] += 1
        counts[1] += size
        if record.level != "scan":
            return
        key = (record.session_id, record.scan_id)
        counts = self._counts["scans"].get(key)
        if counts is None:
            counts = self._counts["scans"][key] = [0, 0]
            self._scans_of[record.session_id] = self._scans_of.get(record.session_id, 0) + 1
            self.tables.scans[key] = {
                "subject": record.subject_label, "session": record.session_label,
                "session_id": record.session_id, "scan": record.scan_id,
                "scan_type": record.scan_type, "series_description": record.series_description,
                "quality": record.quality}
        counts[0] += 1
        counts[1] += size

    def finish(self, old: Tables, walked: "Callable[[str, Row], bool]") -> Tables:
        """The tables of this update: its rows, and the old rows of what it did not walk (a
        narrower -s/-e given for this run keeps the rest of the tables as they were).

        `walked(table, row)` says whether this run listed the subject or session of an old
        row; an old row it listed and this listing lacks is gone from the server."""
        tables = self.tables
        for name in COLUMNS:
            for key, (files, size) in self._counts[name].items():
                getattr(tables, name)[key].update(files=str(files), bytes=str(size))
        for subject_id, row in tables.subjects.items():
            row["sessions"] = str(self._sessions_of.get(subject_id, 0))
        for session_id, row in tables.sessions.items():
            row["scans"] = str(self._scans_of.get(session_id, 0))
        merged = Tables()
        for name in COLUMNS:
            new, kept = getattr(tables, name), getattr(merged, name)
            kept.update((key, row) for key, row in getattr(old, name).items()
                        if not walked(name, row))
            for key, row in new.items():
                if walked(name, row) or key not in kept:
                    kept[key] = row
        return merged
