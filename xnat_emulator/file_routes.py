"""File routes: GET/HEAD of one file (Range, `accept-not-found`, download faults) and
archive downloads (`format=zip|tar|tar.gz` of a file, a resource or a level's files).

A file's body is not read here: the `Response` carries the blob and `server` streams it,
applying the fault this route picked (truncate, corrupt) and the download rate; the endless
and wrong-length faults are answered here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .archives import TarStream, ZipStream
from .faults import Endless
from .model import Experiment, FileEntry, Resource, Scan, Subject
from .paths import Target
from .scope import Scope, find_file, iter_file_rows
from .wire import HTTPError, Request, Response, content_type_for, error_response, http_date, \
    req_flag

if TYPE_CHECKING:
    from .app import App

ARCHIVE_FORMATS = ("zip", "tar", "tar.gz", "tgz", "application/zip")


def file(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    try:
        r, e, owner = find_file(scope, t)
    except HTTPError as exc:
        if exc.status == 404 and req_flag(req.query.get("accept-not-found")):
            return Response(204, b"", "text/plain")
        raise
    if req.fmt == "zip":
        return archive(req, scope, t, [(owner, r, "")], only=e)
    headers = [("Last-Modified", http_date(e.mtime)), ("Cache-Control", "must-revalidate")]
    resp = Response(200, b"", content_type_for(e.name), headers,
                    stream=e.blob, length=e.size)
    rng = req.headers.get("Range") if app.honor_range else None
    if rng:
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else e.size - 1
            else:
                start = max(0, e.size - int(m.group(2)))
                end = e.size - 1
            end = min(end, e.size - 1)
            if start > end or start >= e.size:
                return Response(416, b"", "text/plain",
                                [("Content-Range", f"bytes */{e.size}")])
            resp.status = 206
            resp.offset = start
            resp.length = end - start + 1
            resp.headers.append(("Content-Range", f"bytes {start}-{end}/{e.size}"))
        resp.headers.append(("Accept-Ranges", "bytes"))
    if req.method == "GET":
        resp.fault = app.faults.download_fault()
        if resp.fault == "fail":
            return error_response(500)
        endless = app.faults.endless_downloads
        if endless:
            return Response(200, b"", resp.ctype, headers, stream=Endless(
                e.blob.read(0, e.size), e.blob.read(0, 4096) or b"\0", endless))
        extra = int(app.faults.wrong_content_length or 0)
        if extra and resp.status == 200:
            # the blob ends before the announced length; the connection closes after it
            resp.length = e.size + extra
            resp.headers.append(("Connection", "close"))
    return resp


def _archive_name(scope: Scope, owner, r: Resource, e: FileEntry) -> str:
    """A file's name inside an archive, laid out as XNAT lays out its zips."""
    pid = scope.project.id if scope.project else None

    def lab(x):
        return x.label_in(pid) if pid else x.label
    if isinstance(owner, Scan):
        typ = re.sub(r"\W", "_", owner.type)
        sdir = f"{owner.id}-{typ}" if owner.type else owner.id
        return f"{lab(owner.session)}/scans/{sdir}/resources/{r.label}/files/{e.path}"
    if isinstance(owner, Experiment):
        if owner.is_assessor:
            return (f"{lab(owner.session)}/assessors/{owner.label}/out/resources/{r.label}"
                    f"/files/{e.path}")
        return f"{lab(owner)}/resources/{r.label}/files/{e.path}"
    if isinstance(owner, Subject):
        return f"{lab(owner)}/resources/{r.label}/files/{e.path}"
    return f"{owner.id}/resources/{r.label}/files/{e.path}"


def archive(req: Request, scope: Scope, t: Target, pairs, only: FileEntry | None = None,
            kind: str = "zip") -> Response:
    """The selected files (or `only` that one) as a streamed zip or tar, named after the level."""
    if only is not None:
        items = [(pairs[0][0], pairs[0][1], only)]
    else:
        items = [(o, r, e) for o, r, _b, e in iter_file_rows(req, pairs, t)]
    if not items:
        raise HTTPError(404, "No matching files.")
    if scope.assessor is not None:
        name = scope.assessor.label
    elif scope.experiments:
        e0 = scope.experiments[0]
        name = e0.label_in(scope.project.id) if scope.project else e0.label
    elif scope.subject is not None:
        name = scope.subject.label
    else:
        name = scope.project.id
    try:
        level = int(req.query.get("compression", "6"))
    except ValueError:
        level = 6
    names = [(_archive_name(scope, o, r, e), e) for o, r, e in items]
    if kind in ("tar", "tar.gz", "tgz"):
        gz = kind != "tar"
        ext = "tar.gz" if gz else "tar"
        headers = [("Content-Disposition", f'attachment; filename="{name}.{ext}"')]
        return Response(200, b"", "application/x-gzip" if gz else "application/x-tar",
                        headers, stream=TarStream(names, gz), length=None)
    headers = [("Content-Disposition", f'attachment; filename="{name}.zip"')]
    return Response(200, b"", "application/zip", headers,
                    stream=ZipStream(names, level), length=None)
