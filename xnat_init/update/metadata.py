"""git-annex metadata of the registered files: which fields, and which keys need a change.

Every file the instance registers gets XNAT's values as git-annex metadata, named like the
pathfmt placeholders (FIELDS), so that `git annex find --metadata scan_type=T1w`, `git annex
get --metadata quality=usable` and `git annex view subject=*` work on the dataset. Metadata
belongs to a key, not a path: a key several files share holds the union of their values.

Deciding without reading every key's log: a file's values are a function of its record, and
the record's subject, session and scan are rows of the instance's tables (tables.py), which the
last update committed together with the metadata it wrote. So a file needs its key's log
looked at only when it is registered now (new, changed, forced) or when one of its rows differs
from the last update's (a scan type corrected, a quality set on the server) or is not there (a
dataset registered before metadata was written). For each such key the log gets this update's
values of all the files of the dataset that have the key, and loses the values the last
update's rows gave those files that none of them has now; values written by hand, or by
another instance, stay. An update that finds nothing of that kind reads and writes no log.

The work is per dataset (Annotations: each dataset has its own git-annex branch); the
contexts (the distinct sets of values, a few per scan) are shared.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections import defaultdict
from typing import Iterator

from git_annex_remote_xnat.keys import hashdir_lower
from git_annex_remote_xnat.records import FileRecord

from .metalog import MetaChange
from .spool import LineSpool, sorted_lines
from .tables import Tables

FIELDS = ("project", "subject", "subject_id", "session", "session_id", "date", "xsitype",
          "scan", "scan_type", "series_description", "quality", "assessor", "resource",
          "level")

UNKNOWN = -1  # the context a file had at the last update is not known

Fields = tuple[tuple[str, str], ...]


def file_metadata(record: FileRecord) -> Fields:
    """The metadata of one file, (field, value) in FIELDS order, empty values left out."""
    values = (record.project, record.subject_label, record.subject_id, record.session_label,
              record.session_id, record.session_date, record.session_xsi_type,
              record.scan_id, record.scan_type, record.series_description, record.quality,
              record.assessor_label, record.resource, record.level)
    return tuple((name, value) for name, value in zip(FIELDS, values) if value)


class Contexts:
    """The distinct metadata of this update's files (a number each), and what the last
    update's tables say each file had."""

    def __init__(self, old: Tables) -> None:
        self._old = old
        self._ids: dict[Fields, int] = {}
        self.fields: list[Fields] = []
        self._by_place: dict[tuple, tuple[int, int]] = {}
        self._unions: dict[frozenset[int], dict[str, frozenset[str]]] = {}

    def intern(self, fields: Fields) -> int:
        found = self._ids.get(fields)
        if found is None:
            found = self._ids[fields] = len(self.fields)
            self.fields.append(fields)
        return found

    def of(self, record: FileRecord) -> tuple[int, int]:
        """(this update's context, the last update's or UNKNOWN) of a record; one look-up per
        file: everything a context holds is the same for every file of one resource."""
        place = (record.level, record.subject_id, record.session_id, record.scan_id,
                 record.assessor_id, record.resource)
        found = self._by_place.get(place)
        if found is None:
            new = self.intern(file_metadata(record))
            before = self._before(record)
            old = UNKNOWN if before is None else self.intern(file_metadata(before))
            found = self._by_place[place] = (new, old)
        return found

    def _before(self, record: FileRecord) -> FileRecord | None:
        """The record as the last update's tables had it; None where they lack a row (or
        there are no tables: a dataset registered before they were written)."""
        if not self._old.present:
            return None
        level = record.level
        if level == "project":
            return record
        if level == "subject":
            row = self._old.subjects.get(record.subject_id)
            return None if row is None else dataclasses.replace(
                record, subject_label=row.get("subject", ""))
        session = self._old.sessions.get(record.session_id)
        if session is None:
            return None
        changes = dict(subject_label=session.get("subject", ""),
                       subject_id=session.get("subject_id", ""),
                       session_label=session.get("session", ""),
                       session_date=session.get("date", ""),
                       session_xsi_type=session.get("xsitype", ""))
        if level == "scan":
            scan = self._old.scans.get((record.session_id, record.scan_id))
            if scan is None:
                return None
            changes.update(scan_type=scan.get("scan_type", ""),
                           series_description=scan.get("series_description", ""),
                           quality=scan.get("quality", ""))
        return dataclasses.replace(record, **changes)

    def values(self, ids: frozenset[int]) -> dict[str, frozenset[str]]:
        """The union of the contexts `ids`, by field (computed once per set of contexts)."""
        found = self._unions.get(ids)
        if found is None:
            merged: dict[str, set[str]] = {}
            for context in ids:
                for name, value in self.fields[context]:
                    merged.setdefault(name, set()).add(value)
            found = self._unions[ids] = {name: frozenset(values)
                                         for name, values in merged.items()}
        return found


class Annotations:
    """The metadata work of one dataset: a spool line per file whose key's log needs a look
    (`<hashdir><key>`, this update's context, the last one's), and for the other files only
    two numbers (key fingerprint, context), to find the other files of a key that needs one."""

    def __init__(self) -> None:
        self._spool: LineSpool | None = None
        self.pending = 0
        self._pending_keys = array("q")   # hash() of the keys: in this process only
        self._other_keys = array("q")
        self._other_contexts = array("l")

    def add(self, key: str, context: tuple[int, int], registered: bool) -> bool:
        """One file of the dataset with `key`, its (new, old) context; `registered`: it is
        registered in this update (its key's log needs a look whatever the context).
        Whether its key's log needs a look."""
        new, old = context
        if registered or new != old:
            if self._spool is None:
                self._spool = LineSpool("xnat-meta-")
            self._spool.write(f"{hashdir_lower(key)}{key}\t{new}\t{old}\n")
            self._pending_keys.append(hash(key))
            self.pending += 1
            return True
        self._other_keys.append(hash(key))
        self._other_contexts.append(new)
        return False

    def changes(self, contexts: Contexts) -> Iterator[tuple[str, str, MetaChange]]:
        """(`<hashdir><key>`, key, change) per key whose log needs a look, in the order of the
        keys on git-annex's branch (the order the registration writes it in)."""
        if not self.pending or self._spool is None:
            return
        others: defaultdict[int, set[int]] = defaultdict(set)
        if len(self._other_keys):
            pending = set(self._pending_keys)
            for fingerprint, context in zip(self._other_keys, self._other_contexts):
                if fingerprint in pending:
                    others[fingerprint].add(context)
        self._spool.flush()
        located: str | None = None
        new: set[int] = set()
        old: set[int] = set()

        def change() -> tuple[str, str, MetaChange]:
            key = located[_HASHDIR_LENGTH:]
            holders = frozenset(new.union(others.get(hash(key), ())) if others else new)
            wanted = contexts.values(holders)
            unwanted = {}
            if old - holders:
                for name, values in contexts.values(frozenset(old)).items():
                    gone = values - wanted.get(name, frozenset())
                    if gone:
                        unwanted[name] = gone
            return located, key, MetaChange(wanted, unwanted, holders)

        for line in sorted_lines(self._spool.path, 1):
            where, new_context, old_context = line.rstrip("\n").split("\t")
            if where != located:
                if located is not None:
                    yield change()
                located, new, old = where, set(), set()
            new.add(int(new_context))
            if int(old_context) != UNKNOWN:
                old.add(int(old_context))
        if located is not None:
            yield change()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


_HASHDIR_LENGTH = len("abc/def/")
