"""Peak memory of listing one session's `scans/ALL/files` of N rows with our client.

    python -m benchmarks.listing_memory --rows 1000000 [--code DIR]

The emulator serves a project whose one session holds one scan of N generated files (the
emulator streams such a listing as it builds it); a child process then runs
`XnatClient.iter_files` over the project, counts the records and reports its own peak RSS
(`ru_maxrss`), so neither the emulator's memory nor this parent's is counted. `--code DIR` runs the
child on another checkout of the package (e.g. `git archive` of an older commit), for a before and
after comparison. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

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
    parser.add_argument("--code", default=None, help="run the client from this checkout")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    for rows in args.rows:
        emu = big_session_emulator(rows)
        try:
            report = measure(emu.url, args.code)
        finally:
            emu.stop()
        print(json.dumps({"rows": rows, "code": args.code or "this checkout", **report}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
