"""File routes: GET/HEAD of one file (Range, `accept-not-found`, download faults) and
archive downloads (`format=zip|tar|tar.gz` of a file, a resource or a level's files: their
`structure` layouts and the archive faults, `corrupt_archives` and `truncate_archives`).

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
from .paths import ARCHIVE_FORMATS, Target
from .scope import Scope, find_file, iter_file_rows
from .wire import HTTPError, Request, Response, content_type_for, error_response, http_date, \
    req_flag

if TYPE_CHECKING:
    from .app import App

def file(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    try:
        r, e, owner = find_file(scope, t)
    except HTTPError as exc:
        if exc.status == 404 and req_flag(req.query.get("accept-not-found")):
            return Response(204, b"", "text/plain")
        raise
    if req.fmt == "zip":
        return archive(app, req, scope, t, [(owner, r, "")], only=e)
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


STRUCTURES = ("default", "simplified", "improved", "legacy")
ARCHIVE_ROOT = "/data/xnat/archive"   # the invented archive root of `structure=legacy`


def _archive_name(scope: Scope, owner, r: Resource, e: FileEntry, structure: str = "default",
                  kind: str = "zip") -> str:
    """A file's name inside an archive, laid out as XNAT's FileList lays out its zips for the
    `structure` asked for (anything else is the default):

    * default: the file's URI cut to begin at the session, with the session's label for its ID,
      `<N>-<type, non-word characters as _>` for a scan ID (`<N>` when the type is empty) and
      the resource's label for its ID:
      `<session>/scans/<N>-<type>/resources/<R>/files/<path>`;
    * simplified: the same without the scan type (XNAT applies no scan renaming there), then
      every "/resources" and "/files" removed from the name: `<session>/scans/<N>/<R>/<path>`;
    * improved: no session directory: `scans/<N>_<type, /\\:*?"<>| as _>/<R>/<path>`
      (`scans/<N>/...` in a tar, and when the type is empty), `resources/<R>/<path>` for the
      resources of a session, subject or project, `assessors/<label>/<R>/<path>`; `<path>` is
      what follows the URI's last "/files/";
    * legacy: the file's path on the server (an invented tree below ARCHIVE_ROOT:
      `<root>/<project>/arc001/<session>/SCANS/<N>/<R>/<path>`, `.../<session>/RESOURCES/<R>/`,
      `.../<session>/ASSESSORS/<label>/<R>/`) cut, as XNAT cuts it, to begin at the session's
      directory; the files of a subject (`<root>/<project>/subjects/<label>/resources/<R>/`)
      or of a project (`<root>/<project>/resources/<R>/`) keep the whole absolute path.
    """
    pid = scope.project.id if scope.project else None

    def lab(x):
        return x.label_in(pid) if pid else x.label
    rlabel = r.label or str(r.xnat_id)
    if structure == "improved":
        uri_tail = "/files/" + e.path
        tail = uri_tail[uri_tail.rfind("/files/") + len("/files/"):]
        if isinstance(owner, Scan):
            sdir = owner.id
            if owner.type and kind == "zip":
                sdir += "_" + re.sub(r'[/\\:*?"<>|]', "_", owner.type)
            return f"scans/{sdir}/{rlabel}/{tail}"
        if isinstance(owner, Experiment) and owner.is_assessor:
            return f"assessors/{owner.label}/{rlabel}/{tail}"
        return f"resources/{rlabel}/{tail}"
    if structure == "legacy":
        if isinstance(owner, Scan):
            return f"{owner.session.label}/SCANS/{owner.id}/{rlabel}/{e.path}"
        if isinstance(owner, Experiment):
            if owner.is_assessor:
                return f"{owner.session.label}/ASSESSORS/{owner.label}/{rlabel}/{e.path}"
            return f"{owner.label}/RESOURCES/{rlabel}/{e.path}"
        if isinstance(owner, Subject):
            return (f"{ARCHIVE_ROOT}/{owner.project.id}/subjects/{owner.label}/resources/"
                    f"{rlabel}/{e.path}")
        return f"{ARCHIVE_ROOT}/{owner.id}/resources/{rlabel}/{e.path}"
    if isinstance(owner, Scan):
        typ = re.sub(r"\W", "_", owner.type)
        sdir = f"{owner.id}-{typ}" if owner.type and structure != "simplified" else owner.id
        name = f"{lab(owner.session)}/scans/{sdir}/resources/{rlabel}/files/{e.path}"
    elif isinstance(owner, Experiment):
        if owner.is_assessor:
            name = (f"{lab(owner.session)}/assessors/{owner.label}/out/resources/{rlabel}"
                    f"/files/{e.path}")
        else:
            name = f"{lab(owner)}/resources/{rlabel}/files/{e.path}"
    elif isinstance(owner, Subject):
        name = f"{lab(owner)}/resources/{rlabel}/files/{e.path}"
    else:
        name = f"{owner.id}/resources/{rlabel}/files/{e.path}"
    if structure == "simplified":
        name = name.replace("/resources", "").replace("/files", "")
    return name


def archive(app: "App", req: Request, scope: Scope, t: Target, pairs,
            only: FileEntry | None = None, kind: str = "zip") -> Response:
    """The selected files (or `only` that one) as a streamed zip or tar, named after the level
    and laid out as `structure` asks (`_archive_name`); the archive faults decided here."""
    if only is not None:
        items = [(pairs[0][0], pairs[0][1], only)]
    else:
        items = [(o, r, e) for o, r, _b, e in iter_file_rows(req, pairs, t)]
    if not items:
        raise HTTPError(404, "No matching files.")
    if app.faults.refuse_archives:
        raise HTTPError(int(app.faults.refuse_archives), "The archive could not be built.")
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
    structure = (req.query.get("structure") or "default").lower()
    if structure not in STRUCTURES:
        structure = "default"
    kind = ARCHIVE_FORMATS.get(kind, "zip")
    names = [(_archive_name(scope, o, r, e, structure, kind), e) for o, r, e in items]
    corrupt, truncate = app.faults.archive_fault() if req.method == "GET" else (False, None)
    if kind in ("tar", "tar.gz"):
        gz = kind != "tar"
        headers = [("Content-Disposition", f'attachment; filename="{name}.{kind}"')]
        resp = Response(200, b"", "application/x-gzip" if gz else "application/x-tar",
                        headers, stream=TarStream(names, gz, corrupt=corrupt), length=None)
    else:
        headers = [("Content-Disposition", f'attachment; filename="{name}.zip"')]
        resp = Response(200, b"", "application/zip", headers,
                        stream=ZipStream(names, level, corrupt=corrupt), length=None)
    if truncate == "half":   # the length is known only once built: build it once to count
        resp.cut_after = sum(len(c) for c in resp.stream.iter_bytes()) // 2
    elif truncate is not None:
        resp.cut_after = int(truncate)
    return resp
