"""The download baseline: one curl process fetching the same URLs, 8 transfers at a time.

    curl --parallel --parallel-max 8 --fail -sS --no-progress-meter -K urls.cfg

urls.cfg holds `url = ...` / `output = ...` pairs and, first, `user = "alice:…"`, so the secret is
not on the command line. curl authenticates every request with HTTP Basic, the same credential our
tools use; it neither checks digests nor writes anything but the files.

With `annex_layout`, the outputs are git-annex's object paths instead
(`.git/annex/objects/<hash>/<hash>/<key>/<key>`, a folder per key, each key once): what any tool
that puts content into a dataset has to create on disk, minus hashing and bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

from .common import PASSWORD, USER
from .listing import Rec, http_url, md5e_key


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unique_by_key(records: list[Rec]) -> list[Rec]:
    seen: dict[str, Rec] = {}
    for rec in records:
        seen.setdefault(md5e_key(rec), rec)
    return list(seen.values())


def prepare(workdir: Path, url: str, records: list[Rec], jobs: int = 8,
            annex_layout: bool = False) -> tuple[list[str], Path]:
    dest = workdir / "files"
    if annex_layout:
        from git_annex_remote_xnat.keys import object_relpath  # noqa: PLC0415 - only for this layout
        records = unique_by_key(records)
    cfg = workdir / "urls.cfg"
    workdir.mkdir(parents=True, exist_ok=True)
    with open(cfg, "w") as fh:
        fh.write(f"user = {_quote(f'{USER}:{PASSWORD}')}\n")
        fh.write("create-dirs\n")
        for rec in records:
            fh.write(f"url = {_quote(http_url(url, rec))}\n")
            out = (dest / object_relpath(md5e_key(rec)) if annex_layout else
                   dest / rec.session_id / rec.scan_id / rec.resource / rec.path)
            fh.write(f"output = {_quote(str(out))}\n")
    cfg.chmod(0o600)
    cmd = ["curl", "--parallel", "--parallel-max", str(jobs), "--fail", "-sS", "--no-progress-meter",
           "-K", str(cfg)]
    return cmd, dest


def check(dest: Path, records: list[Rec]) -> str | None:
    files = [p for p in dest.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    want = sum(r.size for r in records)
    if len(files) != len(records) or size != want:
        return f"curl left {len(files)} files / {size} bytes, expected {len(records)} / {want}"
    return None
