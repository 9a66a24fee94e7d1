"""The floor: git-annex's own batch registration, fed a precomputed table of keys and URLs.

Prepared (untimed): a DataLad dataset, the special remote

    git annex initremote xnat type=external externaltype=xnat url=URL credential=bench encryption=none

and two tables made from the emulator's listing: `KEY FILE` lines and `KEY URL` lines, with the
`MD5E-s<size>--<md5><ext>` keys and the `xnat:` URLs of git_annex_remote_xnat.urls.file_url.
Timed, in one shell:

    git annex fromkey --force --batch < keys-files.txt
    git annex registerurl --batch < keys-urls.txt
    git commit -q -m floor

Every registerurl line costs a CLAIMURL round trip to git-annex-remote-xnat. When the special
remote cannot be initialised (not installed yet), the floor falls back to the plain http URLs and
git-annex's web remote, and says so.
"""

from __future__ import annotations

from pathlib import Path

from .common import CREDENTIAL, OURS, BenchError, run_checked
from .listing import Rec, http_url, md5e_key

FLOOR_SCRIPT = """set -e
git annex fromkey --force --batch < ../keys-files.txt > /dev/null
git annex registerurl --batch < ../keys-urls.txt > /dev/null
git commit -q -m "floor: register {n} files"
"""


def _xnat_urls(url: str, records: list[Rec]) -> list[str]:
    from git_annex_remote_xnat.urls import file_url
    return [file_url(url, rec) for rec in records]


def prepare(workdir: Path, url: str, records: list[Rec], home: Path) -> tuple[Path, list[str], str]:
    """Dataset + tables; returns (dataset, timed command, description of the URL kind)."""
    env = OURS.env(home)
    ds = workdir / "ds"
    run_checked(["datalad", "create", str(ds)], env)
    mode = ""
    try:
        run_checked(["git", "-C", str(ds), "annex", "initremote", "xnat", "type=external",
                     "externaltype=xnat", f"url={url}", f"credential={CREDENTIAL}",
                     "encryption=none"], env, timeout=300)
        urls = _xnat_urls(url, records)
        mode = "xnat: URLs (CLAIMURL by git-annex-remote-xnat)"
    except (BenchError, ImportError) as exc:
        run_checked(["git", "-C", str(ds), "config", "annex.security.allowed-ip-addresses", "all"],
                    env)
        urls = [http_url(url, rec) for rec in records]
        mode = f"http URLs, web remote (special remote not usable yet: {str(exc)[:160]})"
    with open(workdir / "keys-files.txt", "w") as kf, open(workdir / "keys-urls.txt", "w") as ku:
        for rec, file_url_ in zip(records, urls):
            key = md5e_key(rec)
            kf.write(f"{key} {rec.session_id}/{rec.scan_id}/{rec.resource}/{rec.path}\n")
            ku.write(f"{key} {file_url_}\n")
    cmd = ["bash", "-c", FLOOR_SCRIPT.format(n=len(records))]
    return ds, cmd, mode


def check(ds: Path, n: int, home: Path) -> str | None:
    """None when n files are committed, else what is wrong."""
    out = run_checked(["git", "-C", str(ds), "ls-files", "--", ":!.datalad", ":!.gitattributes"],
                      OURS.env(home)).stdout
    got = len(out.splitlines())
    return None if got == n else f"{got} of {n} files committed"
