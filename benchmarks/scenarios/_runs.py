"""One measured run of each tool, shared by the scenarios.

Each helper prepares a fresh dataset (untimed), resets the emulator's counters, runs the timed
command, reads the counters back and checks the outcome (files committed, content present). It
returns a RunResult and never raises for a failing tool: the error goes into `error`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .. import curlbase, floor, ours, peer
from ..common import OURS, PEER, BenchError, run_checked
from ..context import Context, failure, rss_extra
from ..emulator import EmulatorProcess
from ..listing import Rec
from ..measure import Measurement
from ..results import Figure


@dataclass
class RunResult:
    wall: float | None = None
    measurement: Measurement | None = None
    counters: dict | None = None
    error: str = ""
    ds: Path | None = None
    info: dict = field(default_factory=dict)


def add_run(fig: Figure, res: RunResult) -> bool:
    """Put one timed run on its figure: the time, the peak memory, the CPU time and the request
    counters, or the error (False)."""
    if res.error:
        fig.error = res.error
        return False
    fig.runs.append(res.wall)
    if res.measurement is not None:
        fig.extra.setdefault("rss", []).append(rss_extra(res.measurement))
        fig.extra.setdefault("cpu", []).append(round(res.measurement.cpu, 2))
    if res.counters is not None:
        fig.extra["counters"] = res.counters
    return True


def _count_files(ds: Path, env: dict) -> int:
    """Files tracked in ds and, recursively, its subdatasets (not configuration, not gitlinks,
    not the instance's tables in .xnat/)."""
    out = run_checked(["git", "-C", str(ds), "ls-files", "-s", "--", ".", ":!.datalad",
                       ":!.gitattributes", ":!**/.gitattributes", ":!**/.datalad",
                       ":!.gitmodules", ":!.xnat"], env).stdout
    count = 0
    for line in out.splitlines():
        mode, _, rest = line.partition(" ")
        if mode == "160000":  # a subdataset
            count += _count_files(ds / rest.split("\t", 1)[1], env)
        else:
            count += 1
    return count


def _count_missing_content(ds: Path, env: dict) -> int:
    out = run_checked(["git", "-C", str(ds), "annex", "find", "--not", "--in=here"], env,
                      timeout=1800).stdout
    return len(out.splitlines())


def _dataset_error(ds: Path, env: dict, n: int, tracked: bool = True,
                   content: bool = True) -> str:
    """Why a run's dataset is not what it should be: not `n` files tracked (`tracked`), or
    some of them without content here (`content`); "" when it is."""
    if tracked:
        got = _count_files(ds, env)
        if got != n:
            return f"failed: {got:,} of {n:,} files tracked after the update"
    if content:
        missing = _count_missing_content(ds, env)
        if missing:
            return f"failed: {missing:,} of {n:,} files without content"
    return ""


def _finish(res: RunResult, m: Measurement, emu: EmulatorProcess) -> RunResult:
    res.measurement = m
    res.counters = emu.counters()
    if m.ok:
        res.wall = m.wall
    else:
        res.error = failure(m)
    return res


def ours_update(ctx: Context, emu: EmulatorProcess, n: int, label: str, reckless_fast: bool,
                ds: Path | None = None, check_content: bool = False,
                timeout: float | None = None, jobs: int | None = None,
                pathfmt: str | None = None, config: dict | None = None) -> RunResult:
    """`datalad xnat-update [--reckless fast]` on a fresh dataset (or on ds, for a re-run);
    `config`: `git config` settings made in the dataset before it (untimed)."""
    res = RunResult()
    env = OURS.env(ctx.home)
    try:
        if ds is None:
            ds = ctx.workdir(label, "ds")
            ours.create_dataset(ds, emu.url, ctx.home, pathfmt)
        for key, value in (config or {}).items():
            run_checked(["git", "-C", str(ds), "config", key, value], env)
        res.ds = ds
        emu.reset()
        m = ctx.timed(label, ours.update_cmd(ds, reckless_fast, jobs), env,
                      timeout=timeout)
        _finish(res, m, emu)
        if not res.error:
            res.error = _dataset_error(ds, env, n, content=check_content)
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def _timed_get(ctx: Context, emu: EmulatorProcess, n: int, ds: Path, label: str, jobs: int,
               env: dict, res: RunResult) -> None:
    """The timed `datalad get -J<jobs> .` in `ds`, then the check that all `n` files came."""
    res.ds = ds
    emu.reset()
    m = ctx.timed(label, ours.get_cmd(ds, jobs), env)
    _finish(res, m, emu)
    if not res.error:
        res.error = _dataset_error(ds, env, n, tracked=False)


def ours_get(ctx: Context, emu: EmulatorProcess, n: int, label: str, jobs: int) -> RunResult:
    """`datalad get -J<jobs> .` after an untimed `xnat-update --reckless fast`."""
    res = RunResult()
    env = OURS.env(ctx.home)
    try:
        ds = ctx.workdir(label, "ds")
        ours.create_dataset(ds, emu.url, ctx.home)
        run_checked(ours.update_cmd(ds, True), env, timeout=ctx.timeout)
        _timed_get(ctx, emu, n, ds, label, jobs, env, res)
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def ours_get_clone(ctx: Context, emu: EmulatorProcess, n: int, origin: Path, label: str,
                   jobs: int, config: dict | None = None) -> RunResult:
    """`datalad get -J<jobs> .` in a fresh clone of `origin` (a dataset registered with
    `--reckless fast`), as a colleague would fetch a published dataset: the clone, the
    special remote's enabling (git-annex autoenables it on the first annex command) and
    `config` (`git config` in the clone) are untimed. The credential comes from the
    environment (DATALAD_CREDENTIAL_<NAME>_*), the name the remote was initialized with."""
    res = RunResult()
    env = OURS.env(ctx.home)
    try:
        clone = ctx.workdir(label, "clone")
        run_checked(["datalad", "clone", str(origin), str(clone)], env, timeout=ctx.timeout)
        for key, value in (config or {}).items():
            run_checked(["git", "-C", str(clone), "config", key, value], env)
        # the first git-annex command in the clone enables the remote (autoenable): untimed
        run_checked(["git", "-C", str(clone), "annex", "info", "--fast", "-q"], env)
        _timed_get(ctx, emu, n, clone, label, jobs, env, res)
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def annex_directory_floor(ctx: Context, ds: Path, label: str, jobs: int) -> RunResult:
    """`git annex get -J<jobs>` of the same keys from a local `directory` special remote: no
    network and no remote of ours, so what it costs is git-annex's own work per key. `ds` must
    hold every file's content (a finished `ours_get` dataset) the first time; the set-up (copy
    to the directory remote) and the drop before each timed get are untimed."""
    res = RunResult(ds=ds)
    env = OURS.env(ctx.home)
    store = ds.parent / "directory-remote"
    try:
        git = ["git", "-C", str(ds), "annex"]
        configured = subprocess.run(["git", "-C", str(ds), "config", "--get",
                                     "remote.floordir.annex-uuid"], env=env,
                                    capture_output=True).returncode == 0
        if not configured:
            _verify_xnat_remote(ds, env)
            store.mkdir(exist_ok=True)
            run_checked(git + ["initremote", "floordir", "type=directory",
                               f"directory={store}", "encryption=none"], env)
            run_checked(git + ["copy", "-J4", "-q", "--to", "floordir", "."], env,
                        timeout=ctx.timeout)
        run_checked(git + ["drop", "-q", "--force", "."], env, timeout=ctx.timeout)
        m = ctx.timed(label, git + ["get", f"-J{jobs}", "-q", "--from", "floordir", "."], env)
        res.measurement = m
        if m.ok:
            res.wall = m.wall
        else:
            res.error = failure(m)
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def _verify_xnat_remote(ds: Path, env: dict) -> None:
    """In a clone, git-annex (10.20261026 and newer) refuses copies to any remote while the
    autoenabled `xnat` remote is unverified: verify it, as its user would (README)."""
    shown = subprocess.run(["git", "-C", str(ds), "annex", "verifyremote", "xnat"], env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    for line in shown.stdout.splitlines():
        if "--safe" in line and "run:" in line:
            run_checked(line.split("run:", 1)[1].split(), env, cwd=ds)
            return


def peer_update(ctx: Context, emu: EmulatorProcess, n: int, label: str,
                reckless_fast: bool) -> RunResult:
    res = RunResult()
    env = PEER.env(ctx.home)
    try:
        ds = ctx.workdir(label, "ds")
        peer.create_dataset(ds, emu.url, ctx.home)
        res.ds = ds
        emu.reset()
        m = ctx.timed(label, peer.update_cmd(ds, reckless_fast), env)
        _finish(res, m, emu)
        if not res.error:
            res.error = _dataset_error(ds, env, n, content=not reckless_fast)
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def peer_enumerate(ctx: Context, emu: EmulatorProcess, n: int, label: str) -> RunResult:
    """datalad-xnat's own listing code (its update loop without addurls): requests and time."""
    res = RunResult()
    emu.reset()
    m = ctx.timed(label, peer.enumerate_cmd(emu.url), PEER.env(ctx.home))
    _finish(res, m, emu)
    if not res.error:
        try:
            listed = int(m.stdout_tail.split()[0])
            res.info["listed"] = listed
            if listed != n:
                res.error = f"failed: listed {listed:,} of {n:,} files"
        except (ValueError, IndexError):
            res.error = "failed: no count printed"
    return res


def floor_run(ctx: Context, emu: EmulatorProcess, records: list[Rec], label: str) -> RunResult:
    res = RunResult()
    try:
        work = ctx.workdir(label)
        ds, cmd, mode = floor.prepare(work, emu.url, records, ctx.home)
        res.ds, res.info["mode"] = ds, mode
        emu.reset()
        m = ctx.timed(label, cmd, OURS.env(ctx.home), cwd=ds)
        _finish(res, m, emu)
        if not res.error:
            problem = floor.check(ds, len(records), ctx.home)
            if problem:
                res.error = f"failed: {problem}"
    except BenchError as exc:
        res.error = f"failed: {exc}"
    return res


def curl_run(ctx: Context, emu: EmulatorProcess, records: list[Rec], label: str,
             jobs: int, annex_layout: bool = False, archives: str | None = None) -> RunResult:
    """curl over every file's URL, or with `archives` ("session" / "resource") over one zip
    per session or resource, written to disk as zips (checked untimed, not unzipped)."""
    res = RunResult()
    work = ctx.workdir(label)
    if archives:
        cmd, dest, by_zip = curlbase.prepare_archives(work, emu.url, records, jobs, per=archives)
        res.info["archives"] = len(by_zip)
    else:
        cmd, dest = curlbase.prepare(work, emu.url, records, jobs, annex_layout=annex_layout)
    emu.reset()
    m = ctx.timed(label, cmd, OURS.env(ctx.home))
    _finish(res, m, emu)
    if not res.error:
        if archives:
            problem = curlbase.check_archives(dest, by_zip)
        else:
            problem = curlbase.check(dest, curlbase.unique_by_key(records) if annex_layout
                                     else records)
        if problem:
            res.error = f"failed: {problem}"
    return res
