"""Scenario 5: a second `xnat-update` when nothing changed on the server (100,000 files).

The first `xnat-update --reckless fast` on a fresh dataset is untimed (scenario 1's last run when
it ran at this size); then `reps` further updates of the same dataset against the same, unchanged
emulator are timed, with their request counts. Target: seconds, not minutes.
"""

from __future__ import annotations

import time

from ..context import Context
from ..emulator import EmulatorProcess
from ..results import Figure, Ratio, Section, now
from . import _runs

TOOL = "ours: xnat-update --reckless fast, nothing changed"


def measure_reruns(ctx: Context, emu: EmulatorProcess, n: int, first) -> Figure:
    fig = Figure(f"{n:,} files", TOOL, "time", "s")
    if ctx.ours_reason:
        fig.error = f"not run: {ctx.ours_reason}"
        return fig
    if first is None:
        first = _runs.ours_update(ctx, emu, n, f"rerun-first-{n}", reckless_fast=True)
    if first.error or first.ds is None:
        fig.error = first.error or "failed: no dataset from the first update"
        return fig
    for i in range(ctx.reps):
        res = _runs.ours_update(ctx, emu, n, f"rerun-{n}-{i}", reckless_fast=True, ds=first.ds)
        if not _runs.add_run(fig, res):
            break
    if fig.runs and fig.extra.get("counters"):
        fig.note = f"{fig.extra['counters'].get('total', '?')} requests per update"
    return fig


def run(ctx: Context, selected: set) -> Section:
    sec = Section("rerun", "5. Second update, nothing changed on the server", started=now())
    t0 = time.perf_counter()
    n = ctx.sizes.rerun
    fig = ctx.shared.get("rerun")
    if fig is None:
        with EmulatorProcess(n, ctx.sizes.register_file_size) as emu:
            fig = measure_reruns(ctx, emu, n, None)
    sec.add(fig)
    first = ctx.shared.get("rss", {}).get(n)
    if first is not None and first.value:
        sec.add(Figure(fig.case, "ours: first xnat-update --reckless fast (scenario 1)", "time",
                       "s", runs=list(first.runs), note="for comparison"))
    value = fig.value
    sec.ratios.append(Ratio(fig.case, "second update (time)", value, "seconds, not minutes (< 60 s)",
                            None if value is None else value < 60, unit="s"))
    sec.commands += ["datalad -C ds xnat-update --reckless fast   # untimed, fills the dataset",
                     "datalad -C ds xnat-update --reckless fast   # timed, server unchanged"]
    sec.seconds = time.perf_counter() - t0
    return sec
