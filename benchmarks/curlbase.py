"""The download baseline: one curl process fetching the same URLs, 8 transfers at a time.

    curl --parallel --parallel-max 8 --fail -sS --no-progress-meter -K urls.cfg

urls.cfg holds `url = ...` / `output = ...` pairs and, first, `user = "alice:…"`, so the secret is
not on the command line. curl authenticates every request with HTTP Basic, the same credential our
tools use; it neither checks digests nor writes anything but the files.

With `annex_layout`, the outputs are git-annex's object paths instead
(`.git/annex/objects/<hash>/<hash>/<key>/<key>`, a folder per key, each key once): what any tool
that puts content into a dataset has to create on disk, minus hashing and bookkeeping.

`prepare_archives` is the same with one URL per archive instead (`?format=zip` of a session's
scans, `/data/experiments/{E}/scans/ALL/files`, or of one resource's files), each zip written to
disk as it comes (not unzipped); `check_archives` reads their member lists afterwards.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

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


def archive_groups(records: list[Rec], per: str = "session") -> dict[str, list[Rec]]:
    """The files of each archive, by the archive's path (without `?format=zip`): one zip per
    session (`/data/experiments/{E}/scans/ALL/files`, every scan's files) or per resource
    (`/data/experiments/{E}/scans/{S}/resources/{R}/files`, the URI a file is listed under)."""
    groups: dict[str, list[Rec]] = {}
    for rec in records:
        if per == "session":
            path = f"/data/experiments/{quote(rec.session_id, safe='')}/scans/ALL/files"
        elif per == "resource":
            uri = rec.uri if rec.uri.startswith("/") else "/" + rec.uri
            path = quote(uri.split("/files/", 1)[0], safe="/%:@&=+$,;~-._") + "/files"
        else:
            raise ValueError(f"per must be 'session' or 'resource', not {per!r}")
        groups.setdefault(path, []).append(rec)
    return groups


def prepare_archives(workdir: Path, url: str, records: list[Rec], jobs: int = 8,
                     per: str = "session") -> tuple[list[str], Path, dict[str, list[Rec]]]:
    """One curl, `jobs` transfers at a time, writing one zip per archive (not unzipped) to
    workdir/zips/NNNN.zip; returns the command, that folder and the files of each zip."""
    dest = workdir / "zips"
    dest.mkdir(parents=True, exist_ok=True)
    groups = archive_groups(records, per)
    cfg = workdir / "urls.cfg"
    by_zip: dict[str, list[Rec]] = {}
    with open(cfg, "w") as fh:
        fh.write(f"user = {_quote(f'{USER}:{PASSWORD}')}\n")
        for i, (path, recs) in enumerate(sorted(groups.items())):
            name = f"{i:04d}.zip"
            by_zip[name] = recs
            fh.write(f"url = {_quote(url + path + '?format=zip')}\n")
            fh.write(f"output = {_quote(str(dest / name))}\n")
    cfg.chmod(0o600)
    cmd = ["curl", "--parallel", "--parallel-max", str(jobs), "--fail", "-sS", "--no-progress-meter",
           "-K", str(cfg)]
    return cmd, dest, by_zip


def check_archives(dest: Path, by_zip: dict[str, list[Rec]]) -> str | None:
    """Each zip lists its files with their sizes (read from its central directory, untimed)."""
    import zipfile  # noqa: PLC0415 - only for this check
    for name, recs in by_zip.items():
        try:
            with zipfile.ZipFile(dest / name) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{name}: not a readable zip ({exc})"
        want = sorted((r.path.rsplit("/", 1)[-1], r.size) for r in recs)
        got = sorted((i.filename.rsplit("/", 1)[-1], i.file_size) for i in infos)
        if got != want:
            return (f"{name}: {len(got)} members / {sum(s for _, s in got)} bytes, expected "
                    f"{len(want)} / {sum(s for _, s in want)}")
    return None
