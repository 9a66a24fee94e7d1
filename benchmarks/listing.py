"""The emulator's file table, read once over XNAT's REST API (untimed preparation).

The floor (precomputed keys and URLs) and the curl baseline (the same URLs) need the list of
files with size and MD5. This reads it the way any XNAT client would: the project's experiments,
then `/data/experiments/{E}/scans/ALL/files` per session, a few sessions at a time. The harness's
own reading is never part of a timed figure.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote

import requests

from git_annex_remote_xnat import keys
from git_annex_remote_xnat.records import FileRecord

from .common import PROJECT, BenchError

_SCAN_FILE_URI = re.compile(
    r"/data/(?:archive/)?experiments/(?P<session>[^/]+)/scans/(?P<scan>[^/]+)"
    r"/resources/(?P<resid>[^/]+)/files/(?P<path>.+)$")


@dataclass(frozen=True)
class Rec(FileRecord):
    """One file as the harness lists it: the project's file record, plus where it is served."""

    uri: str = ""  # the listing's URI, as served
    digest_published: bool = True  # False: md5 computed by the harness from the content


def _rows(session: requests.Session, url: str) -> list[dict]:
    resp = session.get(url, params={"format": "json"}, timeout=300)
    if resp.status_code != 200:
        raise BenchError(f"GET {url} -> {resp.status_code}")
    return resp.json().get("ResultSet", {}).get("Result", [])


def list_files(base_url: str, user: str, password: str, project: str = PROJECT,
               jobs: int = 4) -> list[Rec]:
    http = requests.Session()
    http.auth = (user, password)
    http.headers["User-Agent"] = "xnat-bench-harness"
    resp = http.post(f"{base_url}/data/JSESSION", timeout=60)
    if resp.status_code != 200:
        raise BenchError(f"login to {base_url} failed: {resp.status_code}")
    http.auth = None  # the cookie carries the session from here on
    experiments = _rows(http, f"{base_url}/data/projects/{quote(project)}/experiments")
    subject_of = {e.get("ID") or e.get("id"): e.get("subject_ID", "") for e in experiments}

    def files_of(eid: str) -> list[Rec]:
        out = []
        for row in _rows(http, f"{base_url}/data/experiments/{quote(eid, safe='')}/scans/ALL/files"):
            uri = row["URI"]
            match = _SCAN_FILE_URI.search(uri)
            if not match:
                continue
            out.append(Rec(project=project, subject_id=subject_of.get(eid, ""),
                           subject_label="", session_id=unquote(match["session"]),
                           session_label="", scan_id=unquote(match["scan"]), scan_type="",
                           level="scan", resource=row.get("collection", ""),
                           path=unquote(match["path"]), size=int(row.get("Size") or 0),
                           md5=row.get("digest", ""), uri=uri))
        return out

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        records = [rec for chunk in pool.map(files_of, list(subject_of)) for rec in chunk]
    # A few files publish no digest. The floor's table is precomputed, so hash those here
    # (untimed) rather than give them a weaker key.
    for i, rec in enumerate(records):
        if len(rec.md5) != 32:
            body = http.get(http_url(base_url, rec), timeout=300)
            if body.status_code != 200:
                raise BenchError(f"GET {rec.uri} -> {body.status_code}")
            records[i] = replace(rec, md5=hashlib.md5(body.content).hexdigest(),
                                 size=len(body.content), digest_published=False)
    try:
        http.delete(f"{base_url}/data/JSESSION", timeout=30)
    except requests.RequestException:
        pass
    return records


def http_url(base_url: str, rec: Rec) -> str:
    """The plain http(s) URL of a file, as datalad-xnat and curl use it."""
    uri = rec.uri if rec.uri.startswith("/") else "/" + rec.uri
    return base_url + quote(uri, safe="/%:@&=+$,;~-._")


def save(records: list[Rec], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in records]))


def load(path: Path) -> list[Rec]:
    return [Rec(**row) for row in json.loads(path.read_text())]


def md5e_key(rec: Rec) -> str:
    """The key git-annex's MD5E backend gives this file."""
    return keys.md5e_key(rec.size, rec.md5, rec.name)
