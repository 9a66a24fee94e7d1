"""Scenario 7: many small files at a per-response delay (issue 16, "Measure").

2,000 files of 64 KiB in 5 sessions (200 in 1 session with --quick), on an emulator started with
`--delay D` (seconds added before every response: login, listings, files, archives alike) for
each D of `--latency-delays` (default 0, 0.02, 0.05), and `--download-rate B` when
`--latency-download-rate` is given (a cap per file body, off by default). Per delay, in one run:

* curl, one request per file, `--parallel-max 8` (the URLs and credential as in scenario 3);
* curl, one zip per session (`/data/experiments/{E}/scans/ALL/files?format=zip`), 8 at a time,
  written to disk as zips (not unzipped; each zip's member list is checked untimed);
* curl, one zip per resource (`.../scans/{S}/resources/{R}/files?format=zip`), 8 at a time: what
  a client fetching one archive per resource asks for (information);
* ours: `datalad xnat-update -J8` in default mode (register + fetch) into a fresh dataset after an
  untimed `xnat-init`;
* ours: `datalad get -J8 .` in a fresh clone of a dataset registered with `--reckless fast` (the
  origin is made once per delay; clone and the remote's autoenabling are untimed);
* both of ours again with `git config datalad.xnat.fetch-archives never` in the dataset / clone:
  the per-file path once archives are fetched by default (code without the setting ignores
  it, and the rows measure the same thing twice).

Each figure is the median of --reps; repetitions take turns as in scenario 3. The emulator's
request counters are reported for every tool. Targets at 50 ms per response: ours update and
ours get each ≥ 5× faster than curl per file and within 1.5× of curl per session zip; at 0 ms,
ours no slower than ours with fetch-archives=never.
"""

from __future__ import annotations

import time

from ..context import Context
from ..emulator import EmulatorProcess
from ..results import Figure, Ratio, Section, now, ratio
from . import _runs
from .. import ours
from ..common import OURS, BenchError, run_checked

USES_PEER = False

NEVER = {"datalad.xnat.fetch-archives": "never"}
TARGET_DELAY = 0.05  # the delay the ≥ 5× / ≤ 1.5× targets are set for


def _ms(delay: float) -> str:
    return f"{delay * 1000:g} ms"


def _requests_note(counters: dict | None) -> str:
    """The emulator's routes, most requests first; a single file's route as "one file"."""
    if not counters or "by_route" not in counters:
        return ""
    routes = sorted(counters["by_route"].items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{'GET one file' if r.endswith('/files/{path}') else r}: {c:,}"
                     for r, c in routes)


def run(ctx: Context, selected: set) -> Section:
    sec = Section("latency", "7. Many small files at a per-response delay", started=now())
    t0 = time.perf_counter()
    n, size, jobs = ctx.sizes.latency_files, ctx.sizes.latency_file_size, ctx.sizes.jobs
    rate = ctx.latency_download_rate
    sessions = None
    floor: Figure | None = None
    for delay in ctx.latency_delays:
        case = f"{n:,} × {size // 1024} KiB, {_ms(delay)}/response" + (
            f", {rate:,} B/s per file body" if rate else "")
        tag = f"{n}-{delay * 1000:g}ms"
        figs = {
            "curl": Figure(case, f"curl --parallel-max {jobs}, one request per file", "time", "s"),
            "curl-zip": Figure(case, f"curl --parallel-max {jobs}, one zip per session", "time",
                               "s", note="zips written to disk, not unzipped"),
            "curl-zip-res": Figure(case, f"curl --parallel-max {jobs}, one zip per resource",
                                   "time", "s", note="zips written to disk, not unzipped"),
            "update": Figure(case, f"ours: xnat-update -J{jobs} (register + fetch)", "time", "s"),
            "update-never": Figure(case, f"ours: xnat-update -J{jobs}, fetch-archives=never",
                                   "time", "s"),
            "get": Figure(case, f"ours: datalad get -J{jobs} . in a clone", "time", "s"),
            "get-never": Figure(case, f"ours: datalad get -J{jobs} . in a clone, "
                                      "fetch-archives=never", "time", "s"),
        }
        # git-annex's own cost of getting these keys (no network, no remote of ours): once,
        # with the first delay, as it does not depend on the server
        first = floor is None
        if first:
            floor = Figure(case, f"floor: git annex get -J{jobs} . from a directory special "
                           "remote", "time", "s", note="the same keys; no network; measured "
                           "with the first delay only")
            figs["floor"] = floor
        for fig in figs.values():
            sec.add(fig)
        if ctx.ours_reason:
            for key in ("update", "update-never", "get", "get-never"):
                figs[key].error = f"not run: {ctx.ours_reason}"
        with EmulatorProcess(n, size, delay=delay, download_rate=rate) as emu:
            records = ctx.records(emu, n, size)
            sessions = len({r.session_id for r in records})
            origin = None
            if not figs["get"].error:
                try:  # the dataset every clone is made from: registered once per delay, untimed
                    origin = ctx.workdir(f"latency-origin-{tag}", "ds")
                    ours.create_dataset(origin, emu.url, ctx.home)
                    run_checked(ours.update_cmd(origin, True), OURS.env(ctx.home),
                                timeout=ctx.timeout)
                except BenchError as exc:
                    figs["get"].error = figs["get-never"].error = f"failed: {exc}"
            steps = [
                ("curl", lambda i: _runs.curl_run(ctx, emu, records, f"latency-curl-{tag}-{i}",
                                                  jobs)),
                ("curl-zip", lambda i: _runs.curl_run(ctx, emu, records,
                                                      f"latency-curl-zip-{tag}-{i}", jobs,
                                                      archives="session")),
                ("curl-zip-res", lambda i: _runs.curl_run(ctx, emu, records,
                                                          f"latency-curl-zip-res-{tag}-{i}", jobs,
                                                          archives="resource")),
                ("update", lambda i: _runs.ours_update(ctx, emu, n, f"latency-update-{tag}-{i}",
                                                       reckless_fast=False, check_content=True,
                                                       jobs=jobs)),
                ("update-never", lambda i: _runs.ours_update(
                    ctx, emu, n, f"latency-update-never-{tag}-{i}", reckless_fast=False,
                    check_content=True, jobs=jobs, config=NEVER)),
                ("get", lambda i: _runs.ours_get_clone(ctx, emu, n, origin,
                                                       f"latency-get-{tag}-{i}", jobs)),
                ("get-never", lambda i: _runs.ours_get_clone(ctx, emu, n, origin,
                                                             f"latency-get-never-{tag}-{i}", jobs,
                                                             config=NEVER)),
            ]
            counters: dict = {}
            for i in range(ctx.reps):
                for key, step in steps:
                    if figs[key].error:
                        continue
                    res = step(i)
                    if _runs.add_run(figs[key], res):
                        counters.setdefault(key, res.counters)
                        if key == "get" and first and not floor.error:
                            _runs.add_run(floor, _runs.annex_directory_floor(
                                ctx, res.ds, f"latency-floor-{tag}-{i}", jobs))
                    # its scratch aside now (deleted once, untimed, after the run)
                    ctx.workdir(res.ds.parent.name if res.ds is not None
                                else f"latency-{key}-{tag}-{i}")  # curl's label
            if origin is not None:
                ctx.workdir(origin.parent.name)
        # CPU time of each tool's processes: what is left of its time once the delay is paid
        for fig in figs.values():
            if fig.extra.get("cpu") and not fig.error:
                sec.add(Figure(case, fig.tool, "CPU time (user + system)", "s",
                               runs=list(fig.extra["cpu"]),
                               note="all its processes; the same runs as its time"))
        # the requests each tool made (its first repetition; they do not vary between runs)
        for key, fig in figs.items():
            c = counters.get(key)
            if c and "total" in c:
                sec.add(Figure(case, fig.tool, "requests", "requests", runs=[c["total"]],
                               note=_requests_note(c)[:400],
                               extra={"by_route": c.get("by_route", {})}))
        sec.ratios += _ratios(case, delay, figs, jobs, floor)
    sec.notes += [
        f"{n:,} files of {size:,} bytes ({n * size / 2**20:.0f} MiB) in {sessions} session(s) of "
        "the emulator's `files` preset (450 files per session, 150 per scan resource); the "
        "delay is the emulator's `--delay`, slept before every response (logins, listings, "
        "files, archives), in one thread per connection, so parallel requests wait in parallel.",
        "curl per archive writes each zip to disk and stops there (no unzip): the least any "
        "client fetching archives must do; unzipping and verifying would come on top. The "
        "emulator deflates its zips (XNAT's default compression), in Python, while it sends "
        "them; the generated content does not compress, so the zips are slightly larger than "
        "the files.",
        "curl per file gets its URLs from a table the harness listed beforehand (untimed); ours "
        "lists the project itself within the timed command (for xnat-update: a login and about "
        "one listing per session, each paying the delay; for get: none, but one login per "
        "special remote process git-annex starts).",
        "`--latency-download-rate` caps single-file bodies only: the emulator streams archives "
        "without the cap (xnat_emulator/server.py, _send_blob vs the chunked path).",
        "The fetch-archives=never rows set `git config datalad.xnat.fetch-archives never` in the "
        "dataset (after xnat-init) or the clone (after cloning): the per-file path. Code that "
        "does not know the setting ignores it, so there both rows of a tool measure the same "
        "thing.",
    ]
    sec.commands += [
        "xnat-emulator --preset files --files N --file-size 65536 --require-login --delay D "
        "[--download-rate B]",
        f"curl --parallel --parallel-max {jobs} --fail -sS -K urls.cfg   # url=…/files/<name>, output=…",
        f"curl --parallel --parallel-max {jobs} --fail -sS -K urls.cfg   # url=/data/experiments/E/scans/ALL/files?format=zip, output=NNNN.zip",
        f"curl --parallel --parallel-max {jobs} --fail -sS -K urls.cfg   # url=…/scans/S/resources/R/files?format=zip",
        "datalad create ds && datalad -C ds xnat-init URL -p BENCH --credential bench   # untimed",
        "[git -C ds config datalad.xnat.fetch-archives never]                           # untimed",
        f"datalad -C ds xnat-update -J{jobs}",
        "datalad -C origin xnat-update --reckless fast; datalad clone origin clone      # untimed",
        "[git -C clone config datalad.xnat.fetch-archives never]; git -C clone annex info --fast",
        f"datalad -C clone get -J{jobs} .",
    ]
    sec.seconds = time.perf_counter() - t0
    return sec


def _ratios(case: str, delay: float, figs: dict, jobs: int, floor: Figure | None
            ) -> list[Ratio]:
    out = []
    at_target = abs(delay - TARGET_DELAY) < 1e-9
    for key, short in (("update", "ours xnat-update"), ("get", f"ours get -J{jobs}")):
        fig = figs[key]
        speedup = ratio(case, f"curl per file / {short}", figs["curl"], fig,
                        "≥ 5×" if at_target else "none (information)", lambda v: v >= 5)
        vs_zip = ratio(case, f"{short} / curl per session zip", fig, figs["curl-zip"],
                       "≤ 1.5×" if at_target else "none (information)", lambda v: v <= 1.5)
        vs_res = ratio(case, f"{short} / curl per resource zip", fig, figs["curl-zip-res"],
                       "none (information)", lambda v: True)
        vs_res.met = None
        if not at_target:
            speedup.met = vs_zip.met = None
        out += [speedup, vs_zip, vs_res]
        if key == "get" and floor is not None:
            vs_floor = ratio(case, f"{short} / git annex get from a directory remote", fig,
                             floor, "none (information)", lambda v: True)
            vs_floor.met = None
            out.append(vs_floor)
        never = ratio(case, f"{short} / the same with fetch-archives=never", fig,
                      figs[f"{key}-never"],
                      "≤ 1× (no slower; 10 % noise allowed)" if delay == 0
                      else "none (information)", lambda v: v <= 1.1)
        if delay != 0:
            never.met = None
        out.append(never)
    return out
