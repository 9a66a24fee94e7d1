"""Entry point of `make bench`: run the benchmarks and write benchmarks/RESULTS.md.

    python -m benchmarks.run                    # everything, full sizes -> benchmarks/RESULTS.md
    python -m benchmarks.run --quick            # small sizes, a few minutes -> benchmarks/work/RESULTS-quick.md
    python -m benchmarks.run --only register --only requests --reps 3

Scenarios: register (1), requests (2), download (3), memory (4), rerun (5), latency (7: many small
files at a per-response delay, --latency-delays / --latency-download-rate). Each tolerates either
side failing: the error goes into its table row instead of stopping the run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

from . import emulator, ours, peer, results
from .common import (BENCH_DIR, OURS, PEER, TRASH, WORK, empty_trash, fresh_dir,
                     prepare_home, tool_version)
from .context import Context, Sizes
from .scenarios import ALL


def _versions(ctx: Context, peer_desc: str) -> dict:
    def first_line(stack, cmd):
        return tool_version(stack, ctx.home, cmd)
    ours_ver = first_line(OURS, ["python", "-c", "import git_annex_remote_xnat as m; print(m.__version__)"])
    return {
        "git-annex-remote-xnat (ours)": ours_ver,
        "datalad (ours)": first_line(OURS, ["datalad", "--version"]),
        "git-annex (ours)": first_line(OURS, ["git", "annex", "version", "--raw"]),
        "peer venv": peer_desc,
        "datalad (peer)": first_line(PEER, ["datalad", "--version"]) if not ctx.peer_reason
        else "—",
        "git-annex (peer)": first_line(PEER, ["git", "annex", "version", "--raw"]) if
        not ctx.peer_reason else "—",
        "git": first_line(OURS, ["git", "--version"]),
        "curl": first_line(OURS, ["curl", "--version"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a few minutes); writes benchmarks/work/RESULTS-quick.md")
    parser.add_argument("--only", action="append", choices=sorted(ALL), metavar="SCENARIO",
                        help=f"run only this scenario (repeatable): {', '.join(ALL)}")
    parser.add_argument("--reps", type=int, default=3,
                        help="repetitions per figure (the median is reported; default 3)")
    parser.add_argument("--output", type=Path, default=None,
                        help="Markdown file to write (default benchmarks/RESULTS.md, or "
                             "benchmarks/work/RESULTS-quick.md with --quick)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="limit per timed command in seconds (default 1800)")
    parser.add_argument("--peer-sample", type=int, default=None,
                        help="files in datalad-xnat's measured registration run")
    parser.add_argument("--peer-full-max", type=int, default=None,
                        help="run datalad-xnat's registration for real up to this many files "
                             "(default: the sample size only)")
    parser.add_argument("--peer-download-sample", type=int, default=None,
                        help="files in datalad-xnat's measured download run")
    parser.add_argument("--memory-time-limit", type=float, default=None,
                        help="seconds an update may run at the largest memory size")
    parser.add_argument("--sizes", type=str, default=None,
                        help="override registration sizes, e.g. 10000,100000")
    parser.add_argument("--latency-delays", type=str, default="0,0.02,0.05",
                        help="latency: the emulator's --delay values, seconds per response "
                             "(default 0,0.02,0.05)")
    parser.add_argument("--latency-download-rate", type=int, default=0,
                        help="latency: the emulator's --download-rate, bytes/s per file body "
                             "(default 0: no cap)")
    parser.add_argument("--latency-files", type=int, default=None,
                        help="latency: files of 64 KiB (default 2000, 200 with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, t0 = results.now(), time.perf_counter()
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.peer_sample:
        sizes.peer_sample = sizes.peer_full_max = args.peer_sample
    if args.peer_full_max:
        sizes.peer_full_max = args.peer_full_max
    if args.peer_download_sample:
        sizes.peer_download_sample = args.peer_download_sample
    if args.sizes:
        sizes.register = [int(x) for x in args.sizes.split(",")]
    if args.latency_files:
        sizes.latency_files = args.latency_files
    output = args.output or (WORK / "RESULTS-quick.md" if args.quick else BENCH_DIR / "RESULTS.md")
    selected = list(args.only or ALL)
    WORK.mkdir(parents=True, exist_ok=True)
    if TRASH.exists():  # an interrupted run left its scratch: into this run's trash with it
        fresh_dir(TRASH)
    home = prepare_home(WORK / "home")

    problem = emulator.available()
    if problem:
        print(f"the XNAT emulator is not usable, nothing can be measured: {problem}",
              file=sys.stderr)
        return 2
    if any(getattr(ALL[key], "USES_PEER", True) for key in selected):
        try:
            peer_desc = peer.ensure_peer_venv()
            peer_reason = None
        except Exception as exc:  # noqa: BLE001 - any failure means "peer not run"
            peer_desc, peer_reason = f"unavailable ({exc})", f"peer venv unavailable: {exc}"
    else:  # not created or checked when no selected scenario runs datalad-xnat
        peer_desc = peer_reason = "not used by the selected scenarios"
    ctx = Context(sizes=sizes, reps=max(1, args.reps), home=home,
                  ours_reason=ours.readiness(home), peer_reason=peer_reason, quick=args.quick,
                  timeout=args.timeout)
    if args.memory_time_limit:
        ctx.memory_time_limit = args.memory_time_limit
    ctx.latency_delays = [float(x) for x in args.latency_delays.split(",") if x.strip()]
    ctx.latency_download_rate = max(0, args.latency_download_rate)
    ctx.log(f"peer: {peer_desc}")
    ctx.log(f"ours: {'ready' if not ctx.ours_reason else ctx.ours_reason}")
    meta = {"started": started, "machine": results.machine(), "versions": _versions(ctx, peer_desc),
            "command": "make bench" + (" BENCH_ARGS=" + shlex.quote(" ".join(argv or sys.argv[1:]))
                                       if (argv or sys.argv[1:]) else "")
            + "  (python -m benchmarks.run " + " ".join(argv or sys.argv[1:]) + ")",
            "sizes": vars(sizes), "reps": ctx.reps}
    sections = []
    for key in ALL:
        if key not in selected:
            continue
        ctx.log(f"=== scenario {key}")
        try:
            sections.append(ALL[key].run(ctx, set(selected)))
        except Exception as exc:  # noqa: BLE001 - one scenario's crash must not lose the others
            traceback.print_exc()
            sec = results.Section(key, f"{key} (crashed)", started=results.now())
            sec.notes.append(f"the scenario crashed: {type(exc).__name__}: {exc}")
            sections.append(sec)
        meta["seconds"] = time.perf_counter() - t0
        results.save(output, meta, sections)  # after every scenario: a partial run leaves data
        ctx.log(f"wrote {output}")
    ctx.log(f"removing the run's scratch in {TRASH} (untimed)")
    empty_trash()
    return 0


if __name__ == "__main__":
    sys.exit(main())
