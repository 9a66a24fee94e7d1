"""Peak memory of listing one session's `scans/ALL/files` of N rows with our client.

    python -m benchmarks.listing_memory --rows 10000 100000 1000000 [--before DIR] [--save]

The emulator serves a project whose one session holds one scan of N generated files (the
emulator streams such a listing as it builds it); a child process then runs
`XnatClient.iter_files` over the project, counts the records and reports its own peak RSS
(`ru_maxrss`), so neither the emulator's memory nor this parent's is counted. `--code DIR` runs the
child on another checkout of the package (e.g. `git archive` of an older commit), for a before and
after comparison. Prints one JSON line per run; `--save` also writes them as section 6 of
RESULTS.md (through `benchmarks.results`, the other sections kept as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

PROJECT = "BENCH"
SESSION_SCAN = "9"


def big_session_emulator(rows: int, file_size: int = 64, **kwargs):
    """A started emulator (preset `files`, one session of one small scan) whose first session
    also holds scan 9 with `rows` generated DICOM files; closed site unless kwargs say not."""
    from xnat_emulator import Emulator
    from xnat_emulator.model import DicomSeries
    from xnat_emulator.presets.common import BASE_MTIME, study_uid

    kwargs.setdefault("require_login", True)
    emu = Emulator(preset="files", files=1, file_size=file_size, **kwargs)
    site = emu.site
    session = next(iter(site.experiments.values()))
    scan = site.add_scan(session, SESSION_SCAN, type="big", series_description="big series",
                         frames=rows)
    series = DicomSeries(site.filler, f"big/{session.id}", study_uid(site, session.id),
                         int(SESSION_SCAN), rows, file_size, BASE_MTIME)
    scan.add_resource(site.resource("DICOM", "scans", fmt="DICOM", content="RAW",
                                    cat_id=SESSION_SCAN, cat_desc="big", source=series))
    return emu.start()


def child(url: str) -> None:
    """List the project (credential alice from the environment's defaults) and report."""
    from git_annex_remote_xnat.client import XnatClient
    from git_annex_remote_xnat.credentials import Credential

    start = time.perf_counter()
    count = 0
    with XnatClient(url, Credential("emu", "alice", "alice-pass", "bench")) as client:
        for _record in client.iter_files(PROJECT):
            count += 1
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"records": count, "peak_rss_kib": peak_kib, "seconds": round(seconds, 2)}))


def measure(url: str, code: str | None = None, env: dict[str, str] | None = None) -> dict:
    """Run the child on `url` (with the package from `code` when given); its JSON report."""
    child_env = dict(os.environ, **(env or {}))
    if code:
        child_env["PYTHONPATH"] = os.pathsep.join([code, child_env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.listing_memory", "--child", url],
                          capture_output=True, text=True, env=child_env,
                          cwd=code or os.getcwd())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--before", default=None,
                        help="also run the client from this older checkout, at the largest size")
    parser.add_argument("--before-label", default="an older checkout",
                        help="what --before is, for RESULTS.md")
    parser.add_argument("--save", action="store_true", help="write section 6 of RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
    runs = [(rows, None) for rows in args.rows]
    if args.before:
        runs.append((max(args.rows), args.before))
    reports = []
    for rows, code in runs:
        emu = big_session_emulator(rows)
        try:
            report = {"rows": rows, "code": code, **measure(emu.url, code)}
        finally:
            emu.stop()
        reports.append(report)
        print(json.dumps(report), flush=True)
    if args.save:
        save(reports, started, time.perf_counter() - clock, args.before_label, argv)
    return 0


def save(reports: list[dict], started: str, seconds: float, before_label: str,
         argv: list[str] | None) -> None:
    """The reports as the `listing` section of RESULTS.md and results.json."""
    from .results import Figure, Section
    from .results import save as save_results

    path = Path(__file__).with_name("RESULTS.md")
    meta = {}
    raw = path.with_name("results.json")
    if raw.exists():
        meta = json.loads(raw.read_text()).get("meta", {})
    sec = Section("listing", "6. Peak memory of one huge listing", started=started,
                  seconds=seconds)
    for report in reports:
        tool = ("ours: XnatClient.iter_files" if report["code"] is None else
                f"before: {before_label}")
        sec.add(Figure(f"{report['rows']:,} rows", tool, "peak RSS of the process", "KiB",
                       runs=[report["peak_rss_kib"]],
                       note=f"1 run; {report['seconds']:.1f} s, the emulator's generation "
                            "included"))
    sec.notes = [
        "One session of the emulator's `files` preset holds a scan of N generated 64-byte DICOM "
        "files; its `scans/ALL/files` listing is N+1 rows (about 380 bytes each), streamed by "
        "the emulator. A child process lists the project with `XnatClient.iter_files`, drops "
        "the records, and reports its `ru_maxrss`; the emulator runs in the parent.",
        "Rows are parsed as they arrive (ijson's yajl2_c backend) and each session's worker "
        "reads 2,000 records ahead, so the peak does not grow with N.",
    ]
    sec.commands = ["python -m benchmarks.listing_memory " + shlex.join(argv or sys.argv[1:])]
    save_results(path, meta, [sec])


if __name__ == "__main__":
    sys.exit(main())
