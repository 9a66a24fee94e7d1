"""Every file of a project as FileRecords, with about one request per session.

Walking XNAT resource by resource costs a request per scan and resource; a project of thousands
of sessions would take hours. The strategy here asks for whole levels at once instead: one
``scans/ALL/files`` listing per session, and XNAT's comma lists of IDs in a path
(``/data/experiments/E1,E2,.../files``) for session and subject resources and scan types.
Whether a server takes comma lists at a level is learnt from its first answer and remembered
for the life of the client.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, unquote

from ..records import LEVELS, FileRecord
from . import listings
from .errors import AuthenticationError, NotFoundError, ServerUnreachableError, XnatError
from .listings import Assessor, Experiment, RemoteFile, Scan, uri_part
from .session import Session

# Comma lists of session or subject IDs per request for level-wide file listings.
ID_BATCH = 50
# Scan files of a session read by its worker; more are read as the caller takes them, so memory
# stays within about 2 * jobs * PREFETCH_ROWS records however large a session is.
PREFETCH_ROWS = 2000

Rows = list[dict[str, Any]]


@dataclass
class Walk:
    """What an enumeration walked: the accession IDs of the subjects and sessions it listed the
    files of (after the subject and experiment filters), filled before the first record, and
    the resource labels of the files it listed (before the resources filter), filled as it goes.

    A caller that compares a listing with what it tracked earlier needs it: a tracked file of a
    walked session that the listing did not name is gone from the server. The labels tell a
    resources filter that matched nothing from a mistyped one, at no extra request."""

    subjects: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)


class Enumeration:
    """`iter_files` for one server; thread-safe (its memory is only ever filled in)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._resource_labels: dict[str, str] = {}
        self._comma_support: dict[str, bool] = {}  # "prefix*suffix" -> server takes "ID1,ID2"

    def iter_files(self, project: str, subjects: Iterable[str] = (),
                   experiments: Iterable[str] = (), resources: Iterable[str] | None = None,
                   jobs: int = 8, scan_types: bool = True,
                   levels: Iterable[str] = LEVELS, walk: Walk | None = None) -> Iterator[FileRecord]:
        """Every file of a project as FileRecords, in a deterministic order, with few requests.

        Requests: the subjects and the experiments listing; per session one `scans/ALL/files`
        listing (every scan's files at once); per ID_BATCH sessions one `scans` listing (scan
        types, series descriptions, quality), one `files` listing (session resources) and one
        `assessors` listing, using XNAT's comma lists of IDs; per image assessor one `files`
        listing;
        one project `files` listing; subject resources per ID_BATCH subjects, or per subject
        when the server refuses comma lists there. A server that refuses a comma list gets one
        request per ID instead. `jobs` requests run at a time; memory stays bounded.
        `subjects` and `experiments`, when given, keep those (each an ID or a label; any one
        the project lacks raises NotFoundError naming it); `resources` keeps only those labels;
        `levels` limits which of LEVELS are listed; `walk`,
        when given, is told the subjects and sessions walked.
        """
        session = self._session
        wanted = set(_names(resources)) if resources else None
        levels = set(levels)
        quoted_project = quote(project, safe="")
        subject_names, experiment_names = _names(subjects), _names(experiments)
        subject_filter = bool(subject_names)
        subjects = {s.id: s for s in listings.subjects(session, project)}
        if subject_filter:
            subjects = {sid: s for sid, s in subjects.items()
                        if sid in subject_names or s.label in subject_names}
            _require_all(subject_names, [(sid, s.label) for sid, s in subjects.items()],
                         f"project {project} has no subject")
        sessions = [e for e in self._unique_experiments(project)
                    if e.subject_id in subjects or (not e.subject_id and not subject_filter)]
        if experiment_names:
            sessions = [e for e in sessions
                        if e.id in experiment_names or e.label in experiment_names]
            _require_all(experiment_names, [(e.id, e.label) for e in sessions],
                         f"project {project} has no experiment",
                         f" for subject {', '.join(subject_names)}" if subject_filter else "")

        if walk is not None:
            walk.subjects.update(subjects)
            walk.sessions.update(e.id for e in sessions)

        def keep(records: Iterable[FileRecord]) -> Iterator[FileRecord]:
            for record in records:
                if walk is not None:
                    walk.resources.add(record.resource)
                if wanted is None or record.resource in wanted:
                    yield record

        tasks: list[Callable[[], Iterable[FileRecord]]] = []
        if "project" in levels and not subject_filter and not experiment_names:
            def project_task() -> Iterable[FileRecord]:
                return keep([FileRecord(project, "", "", "", "", "", "", "project",
                                        *self._record_tail(f))
                             for f in self._level_files(f"/data/projects/{quoted_project}")])
            tasks.append(project_task)

        if "subject" in levels and not experiment_names:
            subject_prefix = f"/data/projects/{quoted_project}/subjects/"
            aliases = {s.label: sid for sid, s in subjects.items()}

            def subject_task(ids: list[str], rows: Rows | None
                             ) -> Callable[[], Iterable[FileRecord]]:
                def run() -> Iterable[FileRecord]:
                    found = self._files_by_owner(subject_prefix, ids, "subjects", aliases, rows)
                    return keep([FileRecord(project, sid, subjects[sid].label, "", "", "", "",
                                            "subject", *self._record_tail(f))
                                 for sid in ids for f in found.get(sid, [])])
                return run
            tasks.extend(subject_task(ids, rows)
                         for ids, rows in self._id_groups(subject_prefix, list(subjects)))

        need_types = scan_types and "scan" in levels
        session_ids = [e.id for e in sessions]
        batches = [session_ids[i:i + ID_BATCH] for i in range(0, len(session_ids), ID_BATCH)]
        batch_of = {eid: n for n, batch in enumerate(batches) for eid in batch}
        batch_locks = [threading.Lock() for _ in batches]
        batch_data: dict[int, _SessionBatch] = {}

        def session_batch(n: int) -> _SessionBatch:
            """Scan types, session-level files and assessors of a batch of sessions, fetched
            once."""
            with batch_locks[n]:
                if n not in batch_data:
                    ids = batches[n]
                    batch_data[n] = _SessionBatch(
                        self._scans(ids) if need_types else {},
                        (self._files_by_owner("/data/experiments/", ids, "experiments")
                         if "session" in levels else {}),
                        self._assessors(ids) if "assessor" in levels else {})
                return batch_data[n]

        def session_task(exp: Experiment) -> Callable[[], Iterable[FileRecord]]:
            def run() -> Iterable[FileRecord]:
                batch = session_batch(batch_of[exp.id])
                subj = subjects.get(exp.subject_id)
                # The project's subject listing has the subject's label in this project (a
                # shared subject has its own there); a session row may carry its primary one.
                head = (project, exp.subject_id, subj.label if subj else exp.subject_label,
                        exp.id, exp.label)
                about = dict(session_date=exp.date, session_xsi_type=exp.xsi_type)
                scan_records: Iterable[FileRecord] = ()
                if "scan" in levels:
                    session_scans = batch.scans.get(exp.id, {})

                    def scan_record(row: dict[str, Any]) -> FileRecord:
                        remote_file = RemoteFile.from_row(row)
                        scan_id = unquote(uri_part(remote_file.uri, "scans"))
                        scan = session_scans.get(scan_id, _NO_SCAN)
                        return FileRecord(*head, scan_id, scan.type, "scan",
                                          *self._record_tail(remote_file),
                                          series_description=scan.series_description,
                                          quality=scan.quality, **about)
                    scan_records = _prefetched(map(scan_record, session.iter_rows(
                        f"/data/experiments/{quote(exp.id, safe='')}/scans/ALL/files")))
                records = []
                for remote_file in batch.own_files.get(exp.id, []):
                    records.append(FileRecord(*head, "", "", "session",
                                              *self._record_tail(remote_file), **about))
                for assessor in batch.assessors.get(exp.id, []):
                    path = (f"/data/experiments/{quote(exp.id, safe='')}"
                            f"/assessors/{quote(assessor.id, safe='')}")
                    for remote_file in self._level_files(path):
                        records.append(FileRecord(*head, "", "", "assessor",
                                                  *self._record_tail(remote_file),
                                                  assessor_id=assessor.id,
                                                  assessor_label=assessor.label, **about))
                return keep(itertools.chain(scan_records, records))
            return run
        tasks.extend(session_task(exp) for exp in sessions)

        for records in _ordered_map(lambda task: task(), tasks, jobs):
            yield from records

    def _unique_experiments(self, project: str) -> list[Experiment]:
        seen: dict[str, Experiment] = {}
        for exp in listings.experiments(self._session, project):
            seen.setdefault(exp.id, exp)
        return list(seen.values())

    def _record_tail(self, remote_file: RemoteFile) -> tuple[str, str, int, str | None]:
        label = remote_file.resource or self._resource_label(remote_file)
        return label, remote_file.path, remote_file.size or 0, remote_file.md5

    def _resource_label(self, remote_file: RemoteFile) -> str:
        """Label for a row without `collection`: one resources listing per level, cached."""
        if remote_file.resource_id in self._resource_labels:
            return self._resource_labels[remote_file.resource_id]
        level = remote_file.uri.split("/resources/", 1)[0]
        try:
            for resource in listings.resources(self._session, level):
                self._resource_labels[resource.id] = resource.label
        except XnatError:
            pass
        return self._resource_labels.setdefault(remote_file.resource_id, remote_file.resource_id)

    def _level_files(self, level_path: str) -> list[RemoteFile]:
        try:
            return listings.files(self._session, level_path)
        except NotFoundError:
            return []

    def _comma_list(self, prefix: str, ids: list[str], suffix: str) -> Rows | None:
        """Rows of `prefix` + "ID1,ID2,..." + `suffix`, or None when the server refuses the list.

        XNAT accepts comma lists of experiment IDs in paths; whether a server also does for
        other levels is learnt from the first answer and remembered.
        """
        key = prefix + "*" + suffix
        if len(ids) < 2 or self._comma_support.get(key) is False:
            return None
        try:
            rows = self._session.rows(prefix + ",".join(quote(i, safe="") for i in ids) + suffix)
        except (AuthenticationError, ServerUnreachableError):
            raise
        except XnatError:
            self._comma_support[key] = False
            return None
        self._comma_support[key] = True
        return rows

    def _id_groups(self, prefix: str, ids: list[str]) -> list[tuple[list[str], Rows | None]]:
        """Batches of IDs for comma lists (single IDs once the server refused a list), each
        with its `files` rows when they are known already.

        The first batch is asked for here when the server's answer to comma lists is not known
        yet, because the groups depend on it; its rows go with it instead of being fetched twice.
        """
        if not ids:
            return []
        first = ids[:ID_BATCH]
        probed = None
        if self._comma_support.get(prefix + "*/files") is None and len(ids) > 1:
            probed = self._comma_list(prefix, first, "/files")
        if not self._comma_support.get(prefix + "*/files"):
            return [([i], None) for i in ids]
        return [(first, probed)] + [(ids[i:i + ID_BATCH], None)
                                    for i in range(ID_BATCH, len(ids), ID_BATCH)]

    def _files_by_owner(self, prefix: str, ids: list[str], owner_kind: str,
                        aliases: dict[str, str] | None = None,
                        rows: Rows | None = None) -> dict[str, list[RemoteFile]]:
        """Files of the own resources of several sessions or subjects, keyed by owner ID.

        One comma-list request when the server takes it (the owner of each row is read from its
        URI), else one request per ID; `rows`, when given, is that comma list's answer.
        """
        if rows is None:
            rows = self._comma_list(prefix, ids, "/files")
        if rows is None:
            return {owner: self._level_files(prefix + quote(owner, safe="")) for owner in ids}
        found: dict[str, list[RemoteFile]] = {}
        for row in rows:
            remote_file = RemoteFile.from_row(row)
            owner = unquote(uri_part(remote_file.uri, owner_kind))
            owner = (aliases or {}).get(owner, owner)  # a URI may name a subject by label
            if owner in ids:
                found.setdefault(owner, []).append(remote_file)
        return found

    def _assessors(self, session_ids: list[str]) -> dict[str, list[Assessor]]:
        """{session ID: its image assessors}: one `assessors` listing per batch, or per session."""
        rows = self._comma_list("/data/experiments/", session_ids, "/assessors")
        found: dict[str, list[Assessor]] = {}
        if rows is None:
            rows = [row for session_id in session_ids
                    for row in self._session.rows(
                        f"/data/experiments/{quote(session_id, safe='')}/assessors")]
        for row in rows:
            assessor = Assessor.from_row(row)
            found.setdefault(assessor.session_id, []).append(assessor)
        return found

    def _scans(self, session_ids: list[str]) -> dict[str, dict[str, Scan]]:
        """{session ID: {scan ID: scan}} (type, series description, quality): one `scans`
        listing per batch, or per session."""
        rows = self._comma_list("/data/experiments/", session_ids, "/scans")
        found: dict[str, dict[str, Scan]] = {}
        if rows is not None:
            for row in rows:
                scan = Scan.from_row(row)
                owner = unquote(uri_part(scan.uri, "experiments"))
                found.setdefault(owner, {})[scan.id] = scan
            if all(owner in session_ids for owner in found):
                return found
            found = {}
        for session_id in session_ids:
            found[session_id] = {scan.id: scan
                                 for scan in listings.scans(self._session, session_id)}
        return found


@dataclass
class _SessionBatch:
    """What is listed once for a batch of sessions and read by each session's task."""

    scans: dict[str, dict[str, Scan]]            # session ID -> scan ID -> scan
    own_files: dict[str, list[RemoteFile]]       # session ID -> files of its own resources
    assessors: dict[str, list[Assessor]]         # session ID -> its image assessors


_NO_SCAN = Scan("", "", "", "", "", "")  # a scan the scans listing did not name


def _prefetched(items: Iterator[Any], count: int = PREFETCH_ROWS) -> Iterable[Any]:
    """The first `count` items read now (in a listing's worker thread), the rest, if any, as
    the caller iterates: a session of a million files streams through instead of being held."""
    first = list(itertools.islice(items, count))
    return first if len(first) < count else itertools.chain(first, items)


def _ordered_map(func: Callable[[Any], Any], items: list[Any], jobs: int) -> Iterator[Any]:
    """Like executor.map, but with at most 2*jobs results in flight so memory stays flat."""
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            yield func(item)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="xnat-list") as pool:
        pending: deque[Future] = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(func, item))
                break
            yield result


def _names(value: Iterable[str] | None) -> list[str]:
    """A filter's names; one string is one name, not its letters."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _require_all(names: list[str], found: list[tuple[str, str]], what: str,
                 where: str = "") -> None:
    """NotFoundError naming each of `names` that none of `found` has: a mistyped one among
    several would otherwise narrow the selection without a word."""
    missing = listings.unknown_names(names, found)
    if missing:
        raise NotFoundError(f"{what} {', '.join(missing)}{where}")
