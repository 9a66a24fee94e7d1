"""Scenario 1: registration without download.

Per preset size N (10,000 and 100,000 files):
* floor: `git annex fromkey --force --batch` + `git annex registerurl --batch` fed precomputed
  `MD5E` keys and URLs, plus `git commit` (reps runs);
* ours: `datalad xnat-update --reckless fast` on a fresh, initialised dataset (reps runs);
* peer: datalad-xnat 0.2.1 `xnat-update --reckless fast`. It costs about 0.1 s per file (1,118 s
  for 10,000 files), so it runs for real once at `peer_sample` files and, above `peer_full_max`,
  its time is extrapolated linearly from that run's per-file cost (stated in the row). Its listing
  alone is still run at every N (scenario 2 needs its request count).
Targets: peer/ours ≥ 20, ours/floor ≤ 1.5.
"""

from __future__ import annotations

import time

from ..context import Context, rss_extra
from ..emulator import EmulatorProcess
from ..results import Figure, Section, now, ratio
from . import _runs, rerun

OURS_TOOL = "ours: xnat-update --reckless fast"
PEER_TOOL = "datalad-xnat 0.2.1: xnat-update --reckless fast"
FLOOR_TOOL = "floor: fromkey + registerurl --batch + commit"


def _case(n: int) -> str:
    return f"{n:,} files"


def _peer_sample(ctx: Context, sec: Section) -> Figure:
    n = ctx.sizes.peer_sample
    fig = sec.add(Figure(_case(n), PEER_TOOL, "time", "s"))
    if ctx.peer_reason:
        fig.error = f"not run: {ctx.peer_reason}"
        return fig
    with EmulatorProcess(n, ctx.sizes.register_file_size) as emu:
        _peer_run(ctx, emu, n, fig)
    return fig


def _peer_run(ctx: Context, emu: EmulatorProcess, n: int, fig: Figure) -> None:
    """datalad-xnat's one registration run of n files into `fig`, its requests into ctx.shared."""
    res = _runs.peer_update(ctx, emu, n, f"register-peer-{n}", reckless_fast=True)
    if res.error:
        fig.error = res.error
        return
    fig.runs = [res.wall]
    fig.note = f"1 run; {res.wall / n * 1000:.0f} ms per file"
    fig.extra = {"counters": res.counters, **rss_extra(res.measurement)}
    ctx.shared.setdefault("requests", {}).setdefault(n, {})["peer-update"] = res.counters


def run(ctx: Context, selected: set) -> Section:
    sec = Section("register", "1. Registration without download", started=now())
    t0 = time.perf_counter()
    reps = ctx.reps
    size = ctx.sizes.register_file_size
    peer_sample = _peer_sample(ctx, sec)
    per_file = peer_sample.value / ctx.sizes.peer_sample if peer_sample.value else None
    per_file_at = ctx.sizes.peer_sample  # the size of the run the per-file cost comes from

    for n in ctx.sizes.register:
        case = _case(n)
        with EmulatorProcess(n, size) as emu:
            records = ctx.records(emu, n, size)
            # floor
            f_floor = sec.add(Figure(case, FLOOR_TOOL, "time", "s"))
            for i in range(reps):
                res = _runs.floor_run(ctx, emu, records, f"register-floor-{n}-{i}")
                if res.error:
                    f_floor.error = res.error
                    break
                f_floor.runs.append(res.wall)
                f_floor.note = res.info.get("mode", "")
            # ours
            f_ours = sec.add(Figure(case, OURS_TOOL, "time", "s"))
            last = None
            if ctx.ours_reason:
                f_ours.error = f"not run: {ctx.ours_reason}"
            for i in range(reps if not ctx.ours_reason else 0):
                res = _runs.ours_update(ctx, emu, n, f"register-ours-{n}-{i}", reckless_fast=True)
                if not _runs.add_run(f_ours, res):
                    break
                ctx.shared.setdefault("requests", {}).setdefault(n, {})["ours"] = res.counters
                ctx.shared.setdefault("rss", {})[n] = f_ours
                last = res
            if "rerun" in selected and n == ctx.sizes.rerun:
                # scenario 5 re-runs the update on this dataset with the same emulator
                ctx.shared["rerun"] = rerun.measure_reruns(ctx, emu, n, last)
            # peer
            f_peer = sec.add(Figure(case, PEER_TOOL, "time", "s"))
            if ctx.peer_reason:
                f_peer.error = f"not run: {ctx.peer_reason}"
            elif n <= ctx.sizes.peer_full_max:
                _peer_run(ctx, emu, n, f_peer)
                if f_peer.value:
                    per_file, per_file_at = f_peer.value / n, n
            elif per_file is None:
                f_peer.error = f"not run: the {per_file_at:,}-file peer run failed"
            else:
                f_peer.runs = [per_file * n]
                f_peer.tool += " (extrapolated)"
                f_peer.note = (f"not run at this size: {per_file * 1000:.0f} ms/file measured at "
                               f"{per_file_at:,} files × {n:,}")
            if not ctx.peer_reason and ("requests" in selected):
                res = _runs.peer_enumerate(ctx, emu, n, f"register-peer-listing-{n}")
                entry = ctx.shared.setdefault("requests", {}).setdefault(n, {})
                entry["peer-listing"] = res.counters if not res.error else {"error": res.error}
                entry["peer-listing-wall"] = res.wall
        sec.ratios.append(ratio(case, "datalad-xnat / ours", f_peer, f_ours, "≥ 20×",
                                lambda v: v >= 20))
        sec.ratios.append(ratio(case, "ours / floor", f_ours, f_floor, "≤ 1.5×",
                                lambda v: v <= 1.5))
    sec.notes += [
        f"Emulator preset `files`, {size:,}-byte files, `require_login=True`; credential from "
        "`DATALAD_CREDENTIAL_BENCH_USER/_PASSWORD` for every tool.",
        "Floor keys are `MD5E-s<size>--<md5><ext>` from the server's digests; its table is "
        "precomputed from one untimed listing.",
        f"datalad-xnat runs once per size, and only up to {ctx.sizes.peer_full_max:,} files; "
        "larger sizes are extrapolated linearly from its measured per-file cost (its cost per file "
        "does not fall with size: DataLad's `addurls`, once per subject, adds each file with "
        "`addurl --fast --batch`, checked with one GET through DataLad's special remote, then "
        "sets its metadata with one `git annex metadata` process per file).",
    ]
    sec.commands += [
        "# floor (timed: the three commands)",
        "git annex initremote xnat type=external externaltype=xnat url=$URL credential=bench encryption=none",
        "git annex fromkey --force --batch < keys-files.txt   # 'MD5E-s…--<md5>.dcm <path>' lines",
        "git annex registerurl --batch < keys-urls.txt       # 'MD5E-… xnat://…' lines",
        "git commit -q -m floor",
        "# ours (timed: the update)",
        "datalad create ds && datalad -C ds xnat-init $URL -p BENCH --credential bench",
        "datalad -C ds xnat-update --reckless fast",
        "# datalad-xnat 0.2.1, PATH=benchmarks/.peer-venv/bin:… (timed: the update)",
        "datalad create ds && git -C ds config annex.security.allowed-ip-addresses all",
        "datalad -C ds xnat-init $URL -p BENCH --credential bench",
        "datalad -C ds xnat-update --reckless fast",
    ]
    sec.seconds = time.perf_counter() - t0
    return sec
