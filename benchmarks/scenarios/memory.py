"""Scenario 4: peak RSS of `xnat-update --reckless fast` at 10,000, 100,000 and 1,000,000 files.

Peak RSS is taken two ways (see benchmarks.measure): the kernel's maximum over the process tree
(GNU time's %M or `wait4` rusage, the largest single process) and per-process high-water marks from /proc, grouped
into the Python process (DataLad and our code) and git-annex children. Sizes up to
`memory_full_max` reuse scenario 1's runs when it ran; above that the update runs with a time limit
(`memory_time_limit`): if it does not finish, the figure is the peak reached by then, which covers
enumeration and planning and part of the registration, and the row says so.
Target: flat, the largest size within 2× of the smallest.
"""

from __future__ import annotations

import time

from ..context import Context, rss_extra
from ..emulator import EmulatorProcess
from ..results import Figure, Section, now, ratio
from ..common import OURS
from . import _runs

TOOL = "ours: xnat-update --reckless fast"


def _kind_figures(sec: Section, case: str, rss_runs: list, note: str = "") -> None:
    for kind, label in (("python", "Python (datalad + ours)"), ("git", "git children"),
                        ("git-annex", "git-annex children"),
                        ("remote", "special remote processes")):
        values = [r.get("by_kind", {}).get(kind, {}).get("max_proc", 0) for r in rss_runs]
        values = [v for v in values if v]
        if values:
            sec.add(Figure(case, f"{TOOL} — {label}", "peak RSS, largest process", "KiB",
                           runs=values, note=note))
    totals = [r.get("total_rss_peak_kib", 0) for r in rss_runs if r.get("total_rss_peak_kib")]
    if totals:
        sec.add(Figure(case, f"{TOOL} — whole tree", "peak of summed RSS (sampled)", "KiB",
                       runs=totals, note=note))


def _git_status_floor(ctx: Context, sec: Section, case: str, ds) -> Figure | None:
    """Peak RSS of `git status` in the dataset the update made: what git itself needs to hold
    that dataset's index and trees, a floor for any process that updates its work tree."""
    if ds is None:
        return None
    m = ctx.timed(f"memory-git-status-{case.split()[0].replace(',', '')}",
                  ["git", "-C", str(ds), "status", "--porcelain", "--untracked-files=no"],
                  OURS.env(ctx.home))
    fig = sec.add(Figure(case, "git's own floor: git status in the updated dataset",
                         "peak RSS (largest process)", "KiB", note="1 run, untimed"))
    if m.ok:
        fig.runs = [m.tree_maxrss]
    else:
        fig.error = f"failed: exit {m.returncode}"
    return fig


SPLIT_PATHFMT = "{subject}//{session}/{scan}/"


def _with_subdatasets(ctx: Context, sec: Section) -> Figure | None:
    """The largest size again with a subdataset per subject (`//`): what a dataset of a million
    files should be split into, because git's own index of a million entries is the bound."""
    n = ctx.sizes.memory[-1]
    fig = sec.add(Figure(f"{n:,} files", f"{TOOL}, pathfmt {SPLIT_PATHFMT}",
                         "peak RSS (largest process)", "KiB"))
    if ctx.ours_reason:
        fig.error = f"not run: {ctx.ours_reason}"
        return fig
    with EmulatorProcess(n, ctx.sizes.register_file_size) as emu:
        res = _runs.ours_update(ctx, emu, n, f"memory-ours-split-{n}", reckless_fast=True,
                                timeout=ctx.memory_time_limit, pathfmt=SPLIT_PATHFMT)
    m = res.measurement
    if m is not None and m.timed_out and m.tree_maxrss:
        fig.note = (f"1 run, stopped after {m.wall:.0f} s (limit): enumeration, planning and "
                    "the subdatasets registered by then")
    elif res.error:
        fig.error = res.error
        return fig
    else:
        fig.note = f"1 run, {m.wall:.0f} s (full registration, a subdataset per subject)"
    fig.runs = [m.tree_maxrss]
    _kind_figures(sec, f"{n:,} files, {SPLIT_PATHFMT}", [rss_extra(m)], fig.note)
    ctx.workdir(f"memory-ours-split-{n}")
    return fig


def run(ctx: Context, selected: set) -> Section:
    sec = Section("memory", "4. Peak memory of an update", started=now())
    t0 = time.perf_counter()
    tree_figs = []
    git_floor: dict = {}  # case -> (our figure, git status figure)
    for n in ctx.sizes.memory:
        case = f"{n:,} files"
        fig = sec.add(Figure(case, TOOL, "peak RSS (largest process)", "KiB"))
        tree_figs.append(fig)
        if ctx.ours_reason:
            fig.error = f"not run: {ctx.ours_reason}"
            continue
        reused = ctx.shared.get("rss", {}).get(n)
        rss_runs = []
        if reused is not None and reused.extra.get("rss"):
            rss_runs = reused.extra["rss"]
            fig.note = "the runs of scenario 1"
        else:
            limit = None if n <= ctx.sizes.memory_full_max else ctx.memory_time_limit
            reps = ctx.reps if n <= ctx.sizes.memory_full_max else 1
            with EmulatorProcess(n, ctx.sizes.register_file_size) as emu:
                for i in range(reps):
                    res = _runs.ours_update(ctx, emu, n, f"memory-ours-{n}-{i}", reckless_fast=True,
                                            timeout=limit)
                    m = res.measurement
                    if m is not None and m.timed_out and m.tree_maxrss:
                        rss_runs.append(rss_extra(m))
                        fig.note = (f"1 run, stopped after {m.wall:.0f} s (limit): enumeration, "
                                    "planning and part of the registration")
                        break
                    if res.error:
                        fig.error = res.error
                        break
                    rss_runs.append(rss_extra(m))
                    fig.note = f"{len(rss_runs)} run(s), {m.wall:.0f} s each (full registration)"
                    if i == reps - 1:
                        git_floor[case] = (fig, _git_status_floor(ctx, sec, case, res.ds))
                    ctx.workdir(f"memory-ours-{n}-{i}")
        if rss_runs and not fig.error:
            fig.runs = [r["tree_maxrss_kib"] for r in rss_runs]
            _kind_figures(sec, case, rss_runs, fig.note)
    split_fig = _with_subdatasets(ctx, sec) if ctx.sizes.memory else None
    sec.notes += [
        "'largest process': the kernel's peak RSS over the update's whole process tree "
        "(the largest single process, not a sum), read by GNU time (`/usr/bin/time -f %M`) "
        "around the command, so the harness's own size does not leak in through fork. Per-kind "
        "rows come from /proc high-water marks (VmHWM) sampled every 0.1 s: processes that live "
        "shorter than that can be missed there, but never in the 'largest process' figure.",
    ]
    if len(tree_figs) >= 2:
        sec.ratios.append(ratio(f"{ctx.sizes.memory[-1]:,} vs {ctx.sizes.memory[0]:,} files",
                                "peak RSS, largest / smallest", tree_figs[-1], tree_figs[0],
                                "≤ 2×", lambda v: v <= 2))
    if split_fig is not None and split_fig.runs and tree_figs:
        sec.ratios.append(ratio(
            f"{ctx.sizes.memory[-1]:,} files in subdatasets vs {ctx.sizes.memory[0]:,} files",
            "peak RSS, largest / smallest", split_fig, tree_figs[0], "≤ 2×", lambda v: v <= 2,
            note=f"with pathfmt {SPLIT_PATHFMT}: no git index holds all files"))
    for case, (ours_fig, git_fig) in git_floor.items():
        if git_fig is not None:
            floor = ratio(case, "ours largest process / git status in the same dataset", ours_fig,
                          git_fig, "none (information)", lambda v: True,
                          note="how far above git's own need for this dataset's index we are")
            floor.met = None
            sec.ratios.append(floor)
    sec.seconds = time.perf_counter() - t0
    return sec
