"""The peer, datalad-xnat 0.2.1, in its own virtual environment.

`ensure_peer_venv()` creates benchmarks/.peer-venv when it is missing (git-ignored):

    python -m venv benchmarks/.peer-venv
    benchmarks/.peer-venv/bin/pip install -c requirements/constraints.txt datalad-xnat==0.2.1 git-annex

so it gets the same pinned DataLad (1.7.1) and git-annex wheel as our .venv.

How datalad-xnat 0.2.1 is driven (read from its source, datalad_xnat/{init,update,platform}.py):

* `datalad xnat-init URL -p PROJECT --credential NAME` checks the login (`POST /data/JSESSION` with
  Basic auth), writes `datalad.xnat.default.*` into .datalad/config and, unless the credential is
  `anonymous`, runs its `cfg_xnat_dataset` procedure: a provider file
  `.datalad/providers/xnat-default.cfg` (url_re = URL/.*, http_basic_auth, credential NAME) and
  `git annex initremote datalad type=external externaltype=datalad` (DataLad's generic remote).
* Credentials: `datalad.downloaders.credentials.UserPassword(NAME)` reads the config
  `datalad.credential.NAME.user/.password` (which DataLad fills from the environment variables
  `DATALAD_CREDENTIAL_NAME_USER/_PASSWORD`), then `DATALAD_NAME_user`, then the keyring.
* `datalad xnat-update [--reckless fast]`: `GET /data/projects/P/subjects`, then per subject
  `GET /data/experiments?project=P&subject_ID=S` and per session
  `GET /data/experiments/E/scans/ALL/files`; it writes a CSV (subject, session, scan, filename, url)
  per subject and calls `datalad addurls` on it with plain http(s) URLs (`--fast` with
  `--reckless fast`, which in git-annex 10.20261026 makes VURL keys). The URLs are claimed by the
  `datalad` special remote, which authenticates through the provider file.
* git-annex refuses http to loopback addresses for its own web remote by default; the peer dataset
  gets `annex.security.allowed-ip-addresses=all` so nothing in the comparison fails on that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .common import CONSTRAINTS, CREDENTIAL, PEER, PEER_BIN, PEER_VENV, PROJECT, BenchError, \
    run_checked

PEER_REQUIREMENT = "datalad-xnat==0.2.1"


def ensure_peer_venv(log=print) -> str:
    """Create the peer venv when missing; return a one-line description of what is installed."""
    python = PEER_BIN / "python"
    if not (PEER_BIN / "datalad").exists():
        log(f"creating {PEER_VENV} with {PEER_REQUIREMENT} (pinned by {CONSTRAINTS.name})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-c", str(CONSTRAINTS), PEER_REQUIREMENT, "git-annex"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError("installing the peer failed: "
                             + (proc.stderr.strip().splitlines() or ["?"])[-1])
    proc = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    pins = {line.split("==")[0].lower(): line.split("==")[-1]
            for line in proc.stdout.splitlines() if "==" in line}
    missing = [p for p in ("datalad-xnat", "datalad", "git-annex") if p not in pins]
    if missing:
        raise BenchError(f"peer venv {PEER_VENV} lacks {', '.join(missing)}; delete it to rebuild")
    return (f"datalad-xnat {pins['datalad-xnat']}, datalad {pins['datalad']}, "
            f"git-annex (wheel) {pins['git-annex']}")


def create_dataset(ds: Path, url: str, home: Path) -> None:
    """`datalad create` + `datalad xnat-init` with the peer's stack (untimed)."""
    env = PEER.env(home)
    run_checked(["datalad", "create", str(ds)], env)
    run_checked(["git", "-C", str(ds), "config", "annex.security.allowed-ip-addresses", "all"], env)
    run_checked(["datalad", "-C", str(ds), "xnat-init", url, "-p", PROJECT,
                 "--credential", CREDENTIAL], env, timeout=300)


def update_cmd(ds: Path, reckless_fast: bool) -> list[str]:
    cmd = ["datalad", "-C", str(ds), "xnat-update"]
    return cmd + (["--reckless", "fast"] if reckless_fast else [])


# Enumeration exactly as datalad-xnat's update does it (update.py: subjects, then parse_xnat per
# subject), without the addurls step: to count its listing requests and time its listing at sizes
# where a full update would take hours. Runs with the peer's Python.
ENUMERATE_SCRIPT = r"""
import sys, io, time
from datalad_xnat.platform import _XNAT
from datalad_xnat.parser import parse_xnat
url, project, credential = sys.argv[1:4]
t0 = time.perf_counter()
platform = _XNAT(url, credential=credential)
n = 0
for sub in platform.get_subject_ids(project):
    n += sum(1 for _ in parse_xnat(io.StringIO(), platform, project=project, subject=sub))
print(n, time.perf_counter() - t0)
"""


def enumerate_cmd(url: str) -> list[str]:
    return [str(PEER_BIN / "python"), "-c", ENUMERATE_SCRIPT, url, PROJECT, CREDENTIAL]
