"""Listing routes: the ResultSet tables of projects, subjects, experiments, scans, assessors,
resources and files.

Each route builds XNAT's rows (every value a string, `""` for nulls) and hands them to
`representations.table`, which applies the query's columns, filters, sorting and paging. A
files listing of more than STREAM_ROWS files asked for as plain JSON is written as it is built
(chunked), so the emulator can serve a session of a million files without holding its rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterator

from . import file_routes
from .faults import Endless
from .model import Experiment, Subject
from .paths import Target, archive_format
from .representations import RESERVED, like, table
from .scope import Scope, file_pairs, iter_file_rows, level_resources
from .wire import Request, Response

if TYPE_CHECKING:
    from .app import App

JSON = "application/json;charset=UTF-8"
STREAM_ROWS = 10_000

SUBJECT_COLS = ["ID", "project", "label", "insert_date", "insert_user"]

# query keys (lower case) that make /data/experiments list from a narrower root element
SUBJ_ASSESSOR_KEYS = {"subject_id", "subject_label", "subject_project", "modality", "uid",
                      "scanner", "fieldstrength", "session_type", "visit_id", "age"}
IMG_ASSESSOR_KEYS = {"session_id", "session_label"}


def _table(app: "App", req: Request, rows: list[dict], cols: list[str], **kw) -> Response:
    endless = app.faults.endless_listings
    if endless:
        row = rows[0] if rows else {c: "" for c in cols}
        return Response(200, b"", JSON, stream=Endless(
            b'{"ResultSet": {"Result": [', json.dumps(row).encode() + b", ", endless))
    return table(req, rows, cols, legacy=app.legacy, **kw)


def is_assessor_type(xsi: str) -> bool:
    x = xsi.lower()
    return "assess" in x and "session" not in x


# -- /data/projects, /data/subjects, /data/experiments ----------------------------------------

def projects(app: "App", req: Request, user: str) -> Response:
    rows = []
    for p in app.site.projects.values():
        if not app.can_see(user, p):
            continue
        rows.append({"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                     "description": p.description, "pi_firstname": p.pi_firstname,
                     "pi_lastname": p.pi_lastname, "URI": f"/data/projects/{p.id}",
                     "keywords": "", "alias": ",".join(p.aliases), "note": ""})
    cols = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname"]
    return _table(app, req, rows, cols, total=True)


def _subject_row(s: Subject, pid: str | None) -> dict:
    return {"ID": s.id, "project": s.project.id,
            "label": s.label_in(pid) if pid else s.label,
            "insert_date": s.insert_date, "insert_user": s.insert_user,
            "URI": f"/data/subjects/{s.id}", "gender": s.gender, "yob": s.yob,
            "group": "", "src": "", "last_modified": s.insert_date}


def subjects_global(app: "App", req: Request, user: str) -> Response:
    rows = [_subject_row(s, None) for s in list(app.site.subjects.values())
            if app.can_read_subject(user, s)]
    return _table(app, req, rows, SUBJECT_COLS, total=True, paging=True)


def _experiment_row(e: Experiment, pid: str | None) -> dict:
    row = {"ID": e.id, "project": e.project.id, "date": e.date, "xsiType": e.xsi_type,
           "label": e.label_in(pid) if pid else e.label, "insert_date": e.insert_date,
           "time": e.time, "insert_user": e.insert_user, "URI": f"/data/experiments/{e.id}",
           "subject_ID": e.subject.id,
           # the subject's own label, as XNAT's subject_label column shows it (seen: a subject
           # shared into the listed project keeps its primary project's label here)
           "subject_label": e.subject.label,
           "subject_project": e.subject.project.id, "last_modified": e.insert_date,
           "note": "", "visit_id": ""}
    if e.is_assessor:
        row["session_ID"] = e.session.id
        row["session_label"] = e.session.label_in(pid) if pid else e.session.label
    else:
        row.update({"modality": e.modality, "UID": e.uid, "scanner": e.scanner_model,
                    "fieldStrength": e.field_strength, "session_type": "",
                    "session_ID": "", "session_label": ""})
    return row


def experiments_global(app: "App", req: Request, user: str) -> Response:
    q = req.query
    xsi = q.get("xsiType", "")
    keys = {k.lower() for k in q if k not in RESERVED}
    cols_req = {c.strip().lower() for c in q.get("columns", "").split(",") if c.strip()}
    root = "experiment"
    if xsi and "," not in xsi:
        root = "assessor" if is_assessor_type(xsi) else "subject_assessor"
    elif (keys | cols_req) & IMG_ASSESSOR_KEYS:
        root = "assessor"
    elif (keys | cols_req) & SUBJ_ASSESSOR_KEYS:
        root = "subject_assessor"
    project = q.get("project")
    rows = []
    for e in list(app.site.experiments.values()):
        if root == "subject_assessor" and e.is_assessor:
            continue
        if root == "assessor" and not e.is_assessor:
            continue
        if xsi and "," not in xsi and e.xsi_type.lower() != xsi.lower():
            continue
        if project is not None and not any(like(project, pid) for pid in e.labels):
            continue
        if not app.can_read_experiment(user, e):
            continue
        rows.append(_experiment_row(e, None))
    cols = ["ID", "project", "date", "xsiType", "label", "insert_date"]
    if root == "subject_assessor":
        cols += ["subject_ID", "subject_label"]
    elif root == "assessor":
        cols += ["session_ID", "session_label"]
    return _table(app, req, rows, cols, total=True, title="Matching experiments",
                  paging=True, skip_filters={"project"})


# -- listings inside a project, subject or experiment -----------------------------------------

def subjects(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    p = scope.project
    rows = [_subject_row(s, p.id) for s in p.subjects]
    return _table(app, req, rows, SUBJECT_COLS, total=True, paging=True)


def experiments(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    p = scope.project if scope.project is not None else scope.subject.project
    pool = scope.subject.experiments if scope.subject is not None else p.experiments
    rows = []
    for e in pool:
        if e.is_assessor:
            continue
        if scope.project is not None and p.id not in e.labels:
            continue
        if scope.project is None and not app.can_read_experiment(req.user, e):
            continue
        xsi = req.query.get("xsiType")
        if xsi and "," not in xsi and e.xsi_type.lower() != xsi.lower():
            continue
        row = _experiment_row(e, p.id)
        row["xnat:subjectassessordata/id"] = e.id
        rows.append(row)
    cols = ["ID", "project", "date", "xsiType", "label", "insert_date",
            "xnat:subjectassessordata/id"]
    return _table(app, req, rows, cols, total=True, paging=True)


def experiment_projects(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    """The projects an experiment is in (its own and those it is shared into)."""
    e = scope.experiments[0]
    rows = [{"ID": pid, "label": e.labels[pid], "URI": f"/data/projects/{pid}"}
            for pid in e.labels]
    return _table(app, req, rows, ["ID", "label", "URI"], total=True)


def scans(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    rows = []
    for e in scope.experiments:
        for s in e.scans:
            rows.append({"xnat_imagescandata_id": str(s.xnat_id), "ID": s.id, "type": s.type,
                         "quality": s.quality, "xsiType": s.xsi_type, "note": s.note,
                         "series_description": s.series_description,
                         "URI": f"/data/experiments/{e.id}/scans/{s.id}",
                         "UID": s.uid, "frames": str(s.frames) if s.frames else "",
                         "modality": e.modality, "scanner": e.scanner_model,
                         "fieldStrength": e.field_strength})
    cols = ["xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
            "series_description"]
    return _table(app, req, rows, cols, total=True)


def assessors(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    rows = []
    pid = scope.project.id if scope.project else None
    for e in scope.experiments:
        for a in e.assessors:
            row = _experiment_row(a, pid)
            row["xnat:imageassessordata/id"] = a.id
            row["URI"] = f"/data/experiments/{a.id}"
            rows.append(row)
    cols = ["ID", "project", "date", "xsiType", "label", "insert_date", "session_ID",
            "session_label", "xnat:imageassessordata/id"]
    return _table(app, req, rows, cols, total=True)


# -- resources and files ----------------------------------------------------------------------

RESOURCE_COLS = ["xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                 "cat_desc", "format", "content", "tags", "file_count", "file_size"]


def resources(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    rows = []
    for _owner, r, _base in level_resources(scope, t, None):
        count, size = r.stats()
        rows.append({"xnat_abstractresource_id": str(r.xnat_id), "label": r.label,
                     "element_name": r.element_name, "category": r.category,
                     "cat_id": r.cat_id, "cat_desc": r.cat_desc, "format": r.fmt,
                     "content": r.content, "tags": r.tags, "file_count": str(count),
                     "file_size": str(size)})
    return _table(app, req, rows, RESOURCE_COLS, total=True, title="Resources",
                  all_columns=True)


FILE_COLS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
             "cat_ID", "digest"]


def files(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    """A files listing, or the same files as an archive when the format asks for one."""
    pairs = file_pairs(scope, t)
    fmt = req.fmt
    arch = archive_format(t.template, fmt)
    if arch is not None:
        return file_routes.archive(app, req, scope, t, pairs, kind=arch)
    drop = bool(app.faults.drop_digests) or not app.checksums
    columns_meta = [{"key": "URI", "serverRoot": app.context_path}]

    def file_rows() -> Iterator[dict]:
        for _owner, r, base, e in iter_file_rows(req, pairs, t):
            yield {"Name": e.name, "Size": str(e.size),
                   "URI": f"{base}/resources/{r.xnat_id}/files/{e.path}",
                   "collection": r.label, "file_tags": e.tags, "file_format": e.fmt,
                   "file_content": e.content, "cat_ID": str(r.xnat_id),
                   "digest": "" if drop else e.digest()}
    if (fmt == "json" and set(req.query) <= {"format"} and not app.faults.endless_listings
            and sum(r.stats()[0] for _o, r, _b in pairs) > STREAM_ROWS):
        return Response(200, b"", JSON, stream=_StreamedFiles(file_rows(), columns_meta))
    return _table(app, req, list(file_rows()), FILE_COLS, total=False, title="Files",
                  columns_meta=columns_meta, all_columns=True)


class _StreamedFiles:
    """The JSON of `table` for a files listing without query options, written row by row."""

    def __init__(self, rows: Iterator[dict], columns_meta: list[dict]) -> None:
        self.rows = rows
        self.columns_meta = columns_meta

    def iter_bytes(self) -> Iterator[bytes]:
        parts = [f'{{"ResultSet": {{"Columns": {json.dumps(self.columns_meta)}, "Result": ['
                 .encode()]
        size = len(parts[0])
        for n, row in enumerate(self.rows):
            parts.append((", " if n else "").encode() + json.dumps(row).encode())
            size += len(parts[-1])
            if size >= 1 << 16:
                yield b"".join(parts)
                parts, size = [], 0
        parts.append(b'], "title": "Files"}}')
        yield b"".join(parts)
