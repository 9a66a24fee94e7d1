"""The download baseline: one curl process fetching the same URLs, 8 transfers at a time.

    curl --parallel --parallel-max 8 --fail -sS --no-progress-meter -K urls.cfg

urls.cfg holds `url = ...` / `output = ...` pairs and, first, `user = "alice:…"`, so the secret is
not on the command line. curl authenticates every request with HTTP Basic, the same credential our
tools use; it neither checks digests nor writes anything but the files.
"""

from __future__ import annotations

from pathlib import Path

from .common import PASSWORD, USER
from .listing import Rec, http_url


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prepare(workdir: Path, url: str, records: list[Rec], jobs: int = 8) -> tuple[list[str], Path]:
    dest = workdir / "files"
    cfg = workdir / "urls.cfg"
    workdir.mkdir(parents=True, exist_ok=True)
    with open(cfg, "w") as fh:
        fh.write(f"user = {_quote(f'{USER}:{PASSWORD}')}\n")
        fh.write("create-dirs\n")
        for rec in records:
            fh.write(f"url = {_quote(http_url(url, rec))}\n")
            out = dest / rec.session_id / rec.scan_id / rec.resource / rec.path
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
