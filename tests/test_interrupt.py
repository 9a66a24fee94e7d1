"""An interrupted xnat-update is simply run again: the kill matrix.

The default-mode update of a few hundred files is stopped at each phase (the listing, early
downloads, the git-annex branch write, the tree import, `git read-tree`, late downloads, the
final location-log write, inside the download helper processes) in each way it can be stopped
(SIGKILL to its process group, to its main process, to the child process working in that
phase; SIGTERM and SIGINT to the group, as a scheduler and Ctrl-C do), then run again. After
the rerun the dataset must be exactly what an uninterrupted update makes.

The update reaches a phase and waits there (recovery.pause_point, switched on by an
environment variable only these tests set); the emulator sends file bodies slowly so that
downloads are under way when the signal comes. Real DataLad, git-annex and HTTP throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import run

FILES = 300
PROJECT = "BENCH"

# phase -> (pause point, what the child to kill runs (None: the phase has no child), config)
PHASES = {
    "listing": ("listing", None, {}),
    "early-downloads": ("write", None, {}),
    "annex-branch": ("annex-branch", "fast-import", {}),
    "tree": ("tree", "fast-import", {}),
    "read-tree": ("read-tree", "read-tree", {}),
    "late-downloads": ("fetch", None, {}),
    "location-log": ("record", "fast-import", {}),
    "helpers": ("fetch", "xnat_init.update.helpers", {"datalad.xnat.fetch-processes": "2"}),
}
WAYS = ("kill-group", "kill-main", "kill-child", "term", "int")
MATRIX = [(phase, way) for phase in PHASES for way in WAYS
          if way != "kill-child" or PHASES[phase][1] is not None]


@pytest.fixture(scope="module")
def site():
    from xnat_emulator import Emulator

    emu = Emulator(preset="files", files=FILES, file_size=2048, require_login=True).start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def template(site, tmp_path_factory):
    """A dataset set up with xnat-init, copied for each case (created once per worker)."""
    made: dict[str, Path] = {}

    def make(monkeypatch) -> Path:
        if "ds" not in made:
            path = tmp_path_factory.mktemp("template") / "ds"
            run(["datalad", "create", str(path)])
            run(["datalad", "xnat-init", site.url, "-p", PROJECT], cwd=path)
            made["ds"] = path
        return made["ds"]

    return make


@pytest.fixture
def credential(logins, request):
    """alice's login for the test's emulators, the module's `site` among them if it uses it."""
    if "site" in request.fixturenames:
        logins.server(request.getfixturevalue("site").url)
    logins.login("alice", "alice-pass")


# --------------------------------------------------------------------------------- processes

def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries `tag` (the update and everything it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if tag.encode() in environ.split(b"\0"):
            try:  # a zombie is not running (its parent reaps it)
                if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            except OSError:
                continue
            found.append(int(entry))
    return found


def _wait_until(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    return condition()


def _find_child(pid: int, pattern: str, timeout: float = 10.0) -> int | None:
    found = _wait_until(lambda: [p for p in _descendants(pid) if pattern in _cmdline(p)],
                        timeout)
    return found[0] if found else None


# ---------------------------------------------------------------------------------- checks

def _objects(ds: Path) -> set[str]:
    root = ds / ".git" / "annex" / "objects"
    return {p.name for p in root.glob("*/*/*/*") if p.is_file()} if root.exists() else set()


def _check_converged(ds: Path, tmpdir: Path) -> None:
    keys = set(run(["git", "annex", "find", "--include=*", "--format=${key}\\n"],
                   cwd=ds).stdout.split())
    assert len(keys) == FILES
    # the location log, as whereis reads it (`find --in=here` looks at the content instead)
    here = {record["key"] for record in map(json.loads, run(
        ["git", "annex", "whereis", "--json"], cwd=ds).stdout.splitlines())
        if any(place.get("here") for place in record.get("whereis", []))}
    present = _objects(ds)
    assert present - here == set(), "content here that the location log does not list"
    assert here - present == set(), "location log lists content that is not here"
    assert present == keys
    fsck = run(["git", "annex", "fsck", "--quiet"], cwd=ds, check=False)
    assert fsck.returncode == 0 and not fsck.stdout.strip() and not fsck.stderr.strip(), \
        fsck.stdout + fsck.stderr
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    log = run(["git", "log", "--format=%s"], cwd=ds).stdout.splitlines()
    assert sum("xnat-update" in line for line in log) == 1, log
    leftovers = [p.name for p in tmpdir.iterdir()]
    assert leftovers == [], leftovers
    state = ds / ".git" / "xnat-update"
    assert not state.exists() or not any(p.is_file() for p in state.rglob("*")), \
        list(state.rglob("*"))
    scratch = ds / ".git" / "annex" / "tmp"
    assert not scratch.exists() or not list(scratch.glob("xnat-*"))


# ------------------------------------------------------------------------------------ run

def _interrupt(proc: subprocess.Popen, main: int, phase: str, way: str) -> None:
    child_pattern = PHASES[phase][1]
    if way == "kill-group":
        os.killpg(proc.pid, signal.SIGKILL)
    elif way == "kill-main":
        os.kill(main, signal.SIGKILL)
    elif way == "term":
        os.killpg(proc.pid, signal.SIGTERM)
    elif way == "int":
        os.killpg(proc.pid, signal.SIGINT)
    elif phase == "read-tree":
        return  # the child starts once the update goes on: killed then (see below)
    else:
        child = _find_child(main, child_pattern)
        assert child is not None, f"no {child_pattern} child of the update"
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("phase,way", MATRIX, ids=[f"{p}-{w}" for p, w in MATRIX])
def test_interrupted_update_is_simply_run_again(phase, way, site, template, credential,
                                                tmp_path, monkeypatch):
    point, child_pattern, config = PHASES[phase]
    ds = tmp_path / "ds"
    shutil.copytree(template(monkeypatch), ds, symlinks=True)
    for name, value in config.items():
        run(["git", "config", name, value], cwd=ds)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    tag = f"XNAT_INTERRUPT_TEST={uuid.uuid4().hex}"
    flag = tmp_path / "paused"
    env = dict(os.environ, TMPDIR=str(tmpdir), XNAT_UPDATE_TEST_PAUSE=f"{point}:{flag}")
    env[tag.split("=")[0]] = tag.split("=")[1]
    site.faults.download_rate = 40_000  # about 50 ms a file: downloads are under way
    try:
        proc = subprocess.Popen([shutil.which("datalad") or "datalad", "xnat-update"], cwd=ds,
                                env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert _wait_until(lambda: flag.exists() and flag.read_text().strip()
                               or proc.poll() is not None, 120), "the update never paused"
            assert proc.poll() is None, proc.stderr.read()
            main = int(flag.read_text())
            _interrupt(proc, main, phase, way)
            flag.unlink()
            if way == "kill-child" and phase == "read-tree":
                child = _find_child(main, child_pattern, timeout=5)
                if child is not None:
                    os.kill(child, signal.SIGKILL)
            proc.wait(timeout=240)  # a hang is a failure, not a wait
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        leftover = _wait_until(lambda: not _tagged(tag), 20) or _tagged(tag)
        assert leftover is True, [_cmdline(p) for p in leftover]
    finally:
        site.faults.clear()

    rerun = subprocess.run(["datalad", "xnat-update"], cwd=ds, env=dict(env, **{
        "XNAT_UPDATE_TEST_PAUSE": ""}), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Traceback" not in rerun.stderr, rerun.stderr
    _check_converged(ds, tmpdir)


# ------------------------------------------------------------- a dead or interrupted writer

LARGE = 3000  # enough keys that git cat-file's answers fill the pipes between the threads


@pytest.mark.parametrize("way", ["int", "kill-child"])
def test_stopped_annex_branch_writer_ends_the_update(way, emulator_factory, credential,
                                                     tmp_path):
    """git-annex's branch is written by git fast-import, fed by a thread reading the existing
    logs: whether the update is interrupted there or the fast-import dies, the update ends
    with an error (it hung: the feeding thread waited forever on a full pipe), and the next
    run completes."""
    emu = emulator_factory(preset="files", files=LARGE, file_size=64, require_login=True)
    ds = tmp_path / "ds"
    run(["datalad", "create", str(ds)])
    run(["datalad", "xnat-init", emu.url, "-p", PROJECT], cwd=ds)
    run(["datalad", "xnat-update", "--reckless", "fast"], cwd=ds)
    # every key's logs are read (--force) and its metadata log rewritten (a new session date):
    # a forced run that finds every log as it should be writes nothing, so starts no
    # fast-import
    for session in [e.id for e in emu.site.experiments.values() if not e.is_assessor]:
        emu.set_session(session, date="2030-01-01")
    flag = tmp_path / "paused"
    env = dict(os.environ, XNAT_UPDATE_TEST_PAUSE=f"annex-branch:{flag}")
    proc = subprocess.Popen(["datalad", "xnat-update", "--reckless", "fast", "--force"],
                            cwd=ds, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_until(lambda: flag.exists() and flag.read_text().strip(), 120)
        main = int(flag.read_text())
        if way == "int":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            child = _find_child(main, "fast-import")
            assert child is not None
            os.kill(child, signal.SIGKILL)
        flag.unlink()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the update hung after its git fast-import stopped")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code != 0
    assert "Traceback" not in proc.stderr.read()
    run(["datalad", "xnat-update", "--reckless", "fast", "--force"], cwd=ds)
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""


# ------------------------------------------------------------------ a half-made subdataset

def _new_git_dir(ds: Path) -> bool:
    """Whether a subdataset's .git has appeared (in place, or where it is being made)."""
    return any(ds.glob("BENCH_*/.git")) or any(ds.glob(".git/xnat-update/tmp/*/.git"))


@pytest.mark.parametrize("way", ["git-appears", "kill-main", "kill-group", "term"])
def test_interrupted_subdataset_creation_is_redone(way, site, credential, tmp_path):
    """Killed while it creates a `//` subdataset (SIGKILL as soon as its .git appears, or
    after `datalad create`, before the special remote is set up): the rerun makes the subdataset complete, its files are in it and not
    in the superdataset, and nothing is gone (the half-made dataset was taken for a real one:
    its files landed in the superdataset, or every rerun failed in initremote)."""
    ds = tmp_path / "ds"
    run(["datalad", "create", str(ds)])
    run(["datalad", "xnat-init", site.url, "-p", PROJECT, "-F", "{subject}//{session}/{scan}/"],
        cwd=ds)
    flag = tmp_path / "paused"
    env = dict(os.environ, XNAT_UPDATE_TEST_PAUSE=f"subdataset:{flag}")
    proc = subprocess.Popen(["datalad", "xnat-update", "--reckless", "fast"], cwd=ds, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if way == "git-appears":
            assert _wait_until(lambda: _new_git_dir(ds), 120)
            os.killpg(proc.pid, signal.SIGKILL)
        assert _wait_until(lambda: flag.exists() and flag.read_text().strip()
                           or proc.poll() is not None, 120)
        if way != "git-appears":
            main = int(flag.read_text())
            {"kill-main": lambda: os.kill(main, signal.SIGKILL),
             "kill-group": lambda: os.killpg(proc.pid, signal.SIGKILL),
             "term": lambda: os.kill(main, signal.SIGTERM)}[way]()
            flag.unlink()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for attempt in range(2):  # the rerun, then one more that must find nothing to do
        rerun = subprocess.run(["datalad", "-f", "json", "xnat-update", "--reckless", "fast"],
                               cwd=ds, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        summary = [json.loads(line) for line in rerun.stdout.splitlines()
                   if line.startswith("{")][-1]
        assert summary["gone"] == 0 and summary["failed"] == 0, summary
        assert summary["added"] == (FILES if attempt == 0 else 0), summary
    subjects = [p for p in ds.iterdir() if p.name.startswith("BENCH_")]
    assert len(subjects) == 1
    sub = subjects[0]
    tracked_top = run(["git", "ls-files"], cwd=ds).stdout.split()
    assert not [p for p in tracked_top if p.startswith(sub.name + "/")], tracked_top[:5]
    assert len(run(["git", "ls-files"], cwd=sub).stdout.split()) >= FILES
    for repo in (ds, sub):
        assert run(["git", "status", "--porcelain"], cwd=repo).stdout == ""
