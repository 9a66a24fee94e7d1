"""Scenario 3: download of 5,000 files of 256 KiB.

* curl: one `curl --parallel --parallel-max 8` over the same URLs with the same credential (reps),
  once into a folder tree and once into git-annex's object layout (a folder per key);
* ours: `datalad xnat-update` (default mode: register, then fetch) on a fresh dataset (reps);
* ours: `datalad get -J8 .` after an untimed `xnat-update --reckless fast` (reps);
* datalad-xnat 0.2.1: its default `xnat-update` (addurls with download), once at
  `peer_download_sample` files, extrapolated linearly when that is fewer than all.
Repetitions take turns (one of each tool, then the next), so drift reaches every tool alike.
Targets: ours within 2× of curl; datalad-xnat / ours ≥ 3.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..context import Context
from ..emulator import EmulatorProcess
from ..results import Figure, Section, now, ratio
from . import _runs


def run(ctx: Context, selected: set) -> Section:
    sec = Section("download", "3. Download", started=now())
    t0 = time.perf_counter()
    n, size, jobs = ctx.sizes.download_files, ctx.sizes.download_file_size, ctx.sizes.jobs
    case = f"{n:,} files × {size // 1024} KiB"
    with EmulatorProcess(n, size) as emu:
        records = ctx.records(emu, n, size)
        f_curl = sec.add(Figure(case, f"curl --parallel-max {jobs}", "time", "s"))
        f_curl_annex = sec.add(Figure(
            case, f"curl --parallel-max {jobs} into git-annex's object layout", "time", "s",
            note="outputs at .git/annex/objects/<hash>/<hash>/<key>/<key> (--create-dirs): the "
                 "files and folders any tool must create to give a dataset the content"))
        f_upd = sec.add(Figure(case, f"ours: xnat-update -J{jobs} (default mode: register + fetch)",
                               "time", "s"))
        f_get = sec.add(Figure(case, f"ours: datalad get -J{jobs} . (after --reckless fast)",
                               "time", "s"))
        f_floor = sec.add(Figure(case, f"git-annex floor: git annex get -J{jobs} from a local "
                                       "directory remote", "time", "s",
                                 note="no network, no remote of ours: git-annex's own cost per key"))
        if ctx.ours_reason:
            f_upd.error = f_get.error = f_floor.error = f"not run: {ctx.ours_reason}"

        def curl(fig: Figure, label: str, annex_layout: bool) -> None:
            before = _server_cpu(emu)
            if _runs.add_run(fig, _runs.curl_run(ctx, emu, records, label, jobs,
                                                 annex_layout=annex_layout)):
                _add_server_cpu(fig, before, emu)

        def ours_update(i: int) -> None:
            before = _server_cpu(emu)
            if _runs.add_run(f_upd, _runs.ours_update(ctx, emu, n, f"download-ours-update-{i}",
                                                      reckless_fast=False, check_content=True,
                                                      jobs=jobs)):
                _add_server_cpu(f_upd, before, emu)
            ctx.workdir(f"download-ours-update-{i}")

        def ours_get(i: int) -> None:
            res = _runs.ours_get(ctx, emu, n, f"download-ours-get-{i}", jobs)
            if _runs.add_run(f_get, res) and not f_floor.error:
                _runs.add_run(f_floor, _runs.annex_directory_floor(ctx, res.ds,
                                                                   f"download-floor-{i}", jobs))
            ctx.workdir(f"download-ours-get-{i}")

        # one repetition of every tool after another, so that the machine's drift (page cache
        # filling up with each 1.25 GiB written) reaches them all alike
        for i in range(ctx.reps):
            if not f_curl.error:
                curl(f_curl, f"download-curl-{i}", annex_layout=False)
            if not f_curl_annex.error:
                curl(f_curl_annex, f"download-curl-annex-{i}", annex_layout=True)
            if not f_upd.error:
                ours_update(i)
            if not f_get.error:
                ours_get(i)

        f_peer = sec.add(Figure(case, "datalad-xnat 0.2.1: xnat-update (default)", "time", "s"))
        sample = min(ctx.sizes.peer_download_sample, n)
        if ctx.peer_reason:
            f_peer.error = f"not run: {ctx.peer_reason}"
    if not ctx.peer_reason:
        with EmulatorProcess(sample, size) as emu_s:
            res = _runs.peer_update(ctx, emu_s, sample, f"download-peer-{sample}",
                                    reckless_fast=False)
        if res.error:
            f_peer.error = res.error
        elif sample == n:
            f_peer.runs, f_peer.note = [res.wall], "1 run"
        else:
            f_peer.tool += " (extrapolated)"
            f_peer.runs = [res.wall / sample * n]
            f_peer.note = (f"measured once at {sample:,} files: {res.wall:.1f} s "
                           f"({res.wall / sample * 1000:.0f} ms/file), × {n:,}")
            sec.add(Figure(f"{sample:,} files × {size // 1024} KiB",
                           "datalad-xnat 0.2.1: xnat-update (default)", "time", "s",
                           runs=[res.wall], note="1 run (the measurement behind the row above)"))
        if res.counters:
            f_peer.extra["counters"] = res.counters
        ctx.workdir(f"download-peer-{sample}")

    # CPU time shows what bounds a tool on this machine: its processes share the cores with
    # each other and with the server
    cpu_figs: dict[int, Figure] = {}   # by id() of the time figure
    for fig in (f_curl, f_curl_annex, f_upd, f_get, f_floor):
        if fig.extra.get("cpu") and not fig.error:
            cpu_figs[id(fig)] = sec.add(Figure(case, fig.tool, "CPU time (user + system)", "s",
                                           runs=list(fig.extra["cpu"]),
                                           note="all its processes; the same runs as its time"))
            if fig.extra.get("server_cpu"):
                sec.add(Figure(case, f"the emulator (server) while {fig.tool} ran",
                               "CPU time (user + system)", "s",
                               runs=list(fig.extra["server_cpu"])))
    if id(f_upd) in cpu_figs and id(f_curl) in cpu_figs:
        cpu_ratio = ratio(case, "ours xnat-update / curl, CPU time", cpu_figs[id(f_upd)],
                          cpu_figs[id(f_curl)], "none (information)", lambda v: True,
                          note=f"on {os.cpu_count()} cores shared with the server, CPU time "
                               "bounds the wall time")
        cpu_ratio.met = None
        sec.ratios.append(cpu_ratio)
    for fig, short in ((f_upd, "ours xnat-update"), (f_get, f"ours get -J{jobs}")):
        sec.ratios.append(ratio(case, f"{short} / curl", fig, f_curl, "≤ 2×", lambda v: v <= 2))
        sec.ratios.append(ratio(case, f"datalad-xnat / {short}", f_peer, fig, "≥ 3×",
                                lambda v: v >= 3))
    layout = ratio(case, "ours xnat-update / curl into git-annex's layout", f_upd, f_curl_annex,
                   "none (information)", lambda v: True,
                   note="the same files and folders on disk; what is left is ours: MD5 "
                        "verification, registration, the location log")
    layout.met = None
    sec.ratios.append(layout)
    bound = ratio(case, "git-annex floor / curl", f_floor, f_curl, "none (information)",
                  lambda v: True, note="the least any `git annex get` costs, relative to curl")
    bound.met = None
    sec.ratios.append(bound)
    sec.ratios.append(ratio(case, f"ours get -J{jobs} / git-annex floor", f_get, f_floor,
                            "≈ 1× (no cost of ours beyond git-annex's)", lambda v: v <= 1.5))
    sec.notes += [
        f"{n:,} files of {size:,} bytes ({n * size / 2**30:.2f} GiB); every tool writes the files "
        "to local disk; ours and datalad-xnat also verify them (git-annex checksums).",
        "curl authenticates each request with HTTP Basic from a config file (`-K`), so no secret "
        "is on its command line.",
        "`xnat-update` in default mode downloads with its own client and places each verified "
        "file into the annex as git-annex would (xnat_init/update/placement.py); `datalad get` goes "
        "through git-annex, whose own work per key (the floor row: a local directory remote, "
        "no network) bounds any special remote.",
    ]
    sec.commands += [
        f"curl --parallel --parallel-max {jobs} --fail -sS -K urls.cfg   # user=…, url=…, output=… lines",
        f"curl --parallel --parallel-max {jobs} --fail -sS -K urls.cfg   # output=.git/annex/objects/…/<key>/<key>, create-dirs",
        f"datalad -C ds xnat-update -J{jobs}                  # ours, default mode",
        "datalad -C ds xnat-update --reckless fast       # untimed, then:",
        f"datalad -C ds get -J{jobs} .",
        "datalad -C ds xnat-update                       # datalad-xnat 0.2.1 default mode",
    ]
    sec.seconds = time.perf_counter() - t0
    return sec


def _server_cpu(emu: EmulatorProcess) -> float | None:
    """CPU seconds the emulator's process has used so far (None where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{emu.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _add_server_cpu(fig: Figure, before: float | None, emu: EmulatorProcess) -> None:
    after = _server_cpu(emu)
    if before is not None and after is not None:
        fig.extra.setdefault("server_cpu", []).append(round(after - before, 2))
