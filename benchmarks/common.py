"""Paths, environments and small helpers shared by every benchmark module.

Two software stacks take part and must never see each other:

* "ours": the project's `.venv` (DataLad + our extension + git-annex wheel), `.venv/bin` first on PATH;
* "peer": datalad-xnat 0.2.1 in `benchmarks/.peer-venv` with the same pinned DataLad and git-annex,
  its `bin` first on PATH and `.venv/bin` removed (both packages register `datalad xnat-init` and
  `xnat-update`, so they cannot share an environment).

Every command runs with an isolated HOME (git identity, file keyring) below benchmarks/work, and
with the XNAT credential in the environment (`DATALAD_CREDENTIAL_<NAME>_USER/_PASSWORD`), which
both stacks read: ours through its credential lookup, datalad-xnat through DataLad's config, where
that variable becomes `datalad.credential.<name>.user`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
WORK = BENCH_DIR / "work"  # git-ignored scratch: datasets, tables, logs
# this checkout's .venv; a git worktree without one runs with the venv that runs the harness
# (`/work/main/.venv/bin/python -m benchmarks.run` from the worktree)
_OWN_BIN = REPO / ".venv" / "bin"
OUR_BIN = _OWN_BIN if (_OWN_BIN / "python").exists() else Path(sys.prefix) / "bin"
PEER_VENV = BENCH_DIR / ".peer-venv"
PEER_BIN = PEER_VENV / "bin"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"

PROJECT = "BENCH"  # the project the emulator's `files` preset serves
CREDENTIAL = "bench"  # credential name used by every tool
USER = "alice"
PASSWORD = "alice-pass"

# A figure that could not be produced carries this instead of a number; the table shows it.
NOT_RUN = "not run"


class BenchError(RuntimeError):
    """A step of a benchmark failed; the message goes into the results table."""


@dataclass
class Stack:
    """One side of the comparison: which bin directory leads PATH."""

    name: str
    bin_dir: Path
    extra_env: dict = field(default_factory=dict)

    def env(self, home: Path, user: str = USER, password: str = PASSWORD) -> dict:
        return make_env(self.bin_dir, home, user, password, self.extra_env)


def _clean_path(exclude: list[Path]) -> list[str]:
    excluded = {str(p.resolve()) for p in exclude if p.exists()} | {str(p) for p in exclude}
    out = []
    for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not entry:
            continue
        try:
            resolved = str(Path(entry).resolve())
        except OSError:
            resolved = entry
        if entry in excluded or resolved in excluded:
            continue
        out.append(entry)
    return out


def make_env(bin_dir: Path, home: Path, user: str = USER, password: str = PASSWORD,
             extra: dict | None = None) -> dict:
    """A process environment: bin_dir first on PATH, neither venv otherwise, isolated HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATALAD_", "GIT_", "VIRTUAL_ENV", "PYTHON"))}
    path = [str(bin_dir)] + _clean_path([OUR_BIN, PEER_BIN, Path(sys.prefix) / "bin"])
    env["PATH"] = os.pathsep.join(path)
    env["HOME"] = str(home)
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_CACHE_HOME", ".cache")):
        env[var] = str(home / sub)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    env["DATALAD_UI_INTERACTIVE"] = "0"
    env["DATALAD_LOG_LEVEL"] = "warning"
    up = CREDENTIAL.upper()
    env[f"DATALAD_CREDENTIAL_{up}_USER"] = user
    env[f"DATALAD_CREDENTIAL_{up}_PASSWORD"] = password
    if extra:
        env.update(extra)
    return env


def prepare_home(home: Path) -> Path:
    """A fresh HOME with a git identity; reused across runs of one benchmark session."""
    for sub in (".config", ".local/share", ".cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    gitconfig = home / ".gitconfig"
    if not gitconfig.exists():
        gitconfig.write_text(
            "[user]\n\tname = XNAT Bench\n\temail = bench@example.org\n"
            "[init]\n\tdefaultBranch = main\n"
        )
    return home


# PYTHONPATH: the code measured is this checkout's, even when the venv's editable install
# points at another worktree of the project (PYTHON* of the harness's own environment is dropped)
OURS = Stack("ours", OUR_BIN, {"PYTHONPATH": str(REPO)})
PEER = Stack("peer", PEER_BIN)


TRASH = WORK / "trash"  # scratch of earlier runs in this benchmark run, removed at its end


def fresh_dir(path: Path) -> Path:
    """Move `path` out of the way into TRASH and return it, parent created.

    Why not delete it now: on a journal-less ext4 (this machine's) the inode allocator skips
    inodes freed in the last minutes by reading their inode tables, so every file created soon
    after deleting a dataset costs several times more (measured: a 2,000-file xnat-update took
    9.0 s right after deleting the previous dataset, 6.2 s 75 s later). Deleting between runs
    would charge the next timed command for it; `empty_trash` runs once, untimed, at the end.
    """
    if path.exists():
        TRASH.mkdir(parents=True, exist_ok=True)
        place = TRASH / f"{len(list(TRASH.iterdir()))}-{path.name}"
        if path == TRASH:  # an interrupted run's trash: aside, then inside the new one
            aside = path.with_name(f"{path.name}.old")
            path.rename(aside)
            TRASH.mkdir()
            aside.rename(TRASH / "0-earlier-run")
        else:
            path.rename(place)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def remove_tree(path: Path) -> None:
    """Delete a scratch tree (git-annex makes its objects read-only)."""
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def empty_trash() -> None:
    remove_tree(TRASH)


def run_checked(cmd: list[str], env: dict, cwd: Path | None = None, timeout: float = 600,
                input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run an untimed preparation step; BenchError with the tail of stderr on failure."""
    try:
        proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, input=input_text)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{' '.join(map(str, cmd))}` timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise BenchError(f"`{cmd[0]}` could not be started: {exc}") from exc
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}: "
                         f"{last_line(proc.stderr or proc.stdout)}")
    return proc


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a command's output, shortened: what goes into a table cell."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tool_version(stack: Stack, home: Path, cmd: list[str]) -> str:
    try:
        out = run_checked(cmd, stack.env(home), timeout=120).stdout.strip()
    except BenchError as exc:
        return f"unavailable ({exc})"
    return out.splitlines()[0] if out else "?"
