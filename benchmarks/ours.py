"""Our side: `datalad xnat-init` / `xnat-update` / `datalad get` from the project's .venv.

The calls follow the documented CLI (README, docs/ARCHITECTURE.md):

    datalad create ds
    datalad -C ds xnat-init URL -p BENCH --credential bench      # credential from DATALAD_CREDENTIAL_BENCH_*
    datalad -C ds xnat-update --reckless fast                    # register only
    datalad -C ds xnat-update                                    # register and download
    datalad -C ds get -J8 .
"""

from __future__ import annotations

from pathlib import Path

from .common import CREDENTIAL, OURS, PROJECT, BenchError, run_checked


def readiness(home: Path) -> str | None:
    """None when our commands are installed, else why not (becomes "not run: <reason>")."""
    env = OURS.env(home)
    for cmd, what in ((["datalad", "xnat-update", "--help"], "datalad xnat-update"),
                      (["datalad", "xnat-init", "--help"], "datalad xnat-init"),
                      (["git-annex-remote-xnat", "--help"], "git-annex-remote-xnat")):
        try:
            run_checked(cmd, env, timeout=120)
        except BenchError as exc:
            if what == "git-annex-remote-xnat" and "exited" in str(exc):
                continue  # it exists; a remote may well refuse --help outside git-annex
            return f"`{what}` is not available yet ({str(exc).split(': ', 1)[-1][:120]})"
    return None


def create_dataset(ds: Path, url: str, home: Path, pathfmt: str | None = None) -> None:
    env = OURS.env(home)
    run_checked(["datalad", "create", str(ds)], env)
    run_checked(["datalad", "-C", str(ds), "xnat-init", url, "-p", PROJECT,
                 "--credential", CREDENTIAL] + (["--pathfmt", pathfmt] if pathfmt else []),
                env, timeout=300)


def update_cmd(ds: Path, reckless_fast: bool, jobs: int | None = None) -> list[str]:
    cmd = ["datalad", "-C", str(ds), "xnat-update"]
    if reckless_fast:
        cmd += ["--reckless", "fast"]
    if jobs:
        cmd += ["-J", str(jobs)]
    return cmd


def get_cmd(ds: Path, jobs: int = 8) -> list[str]:
    return ["datalad", "-C", str(ds), "get", f"-J{jobs}", "."]
