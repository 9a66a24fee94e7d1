"""What every scenario needs: sizes, repetitions, the isolated HOME, readiness of each side,
a cached file table per emulator size, and a logged way to run a timed command."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import listing
from .common import PASSWORD, USER, WORK, fresh_dir
from .emulator import EmulatorProcess
from .measure import Measurement, fmt_seconds, measure


@dataclass
class Sizes:
    register: list  # files per preset, scenario 1/2
    register_file_size: int  # bytes per file for registration (content is never fetched by us)
    peer_sample: int  # files in the peer's measured registration run (extrapolated beyond)
    peer_full_max: int  # run the peer for real up to this many files
    download_files: int
    download_file_size: int
    peer_download_sample: int  # files in the peer's measured download run
    memory: list  # files for the RSS series
    memory_full_max: int  # above this, scenario 4 measures enumeration + planning only
    rerun: int  # files for the nothing-changed update
    latency_files: int = 2_000  # many small files at a per-response delay (scenario latency)
    latency_file_size: int = 64 * 1024
    jobs: int = 8

    @classmethod
    def full(cls) -> "Sizes":
        return cls(register=[10_000, 100_000], register_file_size=1024,
                   peer_sample=1_000, peer_full_max=10_000,
                   download_files=5_000, download_file_size=256 * 1024, peer_download_sample=5_000,
                   memory=[10_000, 100_000, 1_000_000], memory_full_max=100_000, rerun=100_000)

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(register=[500, 2_000], register_file_size=1024,
                   peer_sample=200, peer_full_max=200,
                   download_files=200, download_file_size=256 * 1024, peer_download_sample=100,
                   memory=[1_000, 4_000, 16_000], memory_full_max=16_000, rerun=2_000,
                   latency_files=200)


@dataclass
class Context:
    sizes: Sizes
    reps: int
    home: Path
    ours_reason: str | None  # None when our commands are usable
    peer_reason: str | None  # None when the peer venv is usable
    quick: bool = False
    timeout: float = 1800.0  # per timed command
    memory_time_limit: float = 1200.0  # scenario 4 above memory_full_max
    latency_delays: list = field(default_factory=lambda: [0.0, 0.02, 0.05])  # s per response
    latency_download_rate: int = 0  # bytes/s per file body, 0 = no cap
    shared: dict = field(default_factory=dict)  # figures one scenario lends another
    log_lines: list = field(default_factory=list)

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    def workdir(self, *parts: str) -> Path:
        return fresh_dir(WORK.joinpath(*parts))

    def records(self, emu: EmulatorProcess, n: int, file_size: int) -> list[listing.Rec]:
        """The emulator's file table, listed once per size and run (untimed).

        Cached in memory only: a table saved by an earlier run may name resources the current
        emulator numbers differently.
        """
        cache = self.shared.setdefault("tables", {})
        if (n, file_size) not in cache:
            t0 = time.perf_counter()
            recs = listing.list_files(emu.url, USER, PASSWORD)
            if len(recs) != n:
                from .common import BenchError
                raise BenchError(f"the emulator lists {len(recs):,} files, expected {n:,}")
            listing.save(recs, WORK / "tables" / f"files-{n}x{file_size}.json")  # for reference
            self.log(f"listed {len(recs):,} files in {time.perf_counter() - t0:.1f} s (untimed)")
            cache[(n, file_size)] = recs
        return cache[(n, file_size)]

    def timed(self, label: str, cmd: list, env: dict, cwd: Path | None = None,
              stdin_path: Path | None = None, timeout: float | None = None) -> Measurement:
        logdir = WORK / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
        log = logdir / f"{time.strftime('%H%M%S')}-{safe}.log"
        shown = " ".join(map(str, cmd)).replace("\n", "; ")
        self.log(f"{label}: {shown[:160]}")
        m = measure(cmd, env=env, cwd=cwd, stdin_path=stdin_path,
                    timeout=timeout or self.timeout, log=log)
        status = "ok" if m.ok else (f"TIMEOUT" if m.timed_out else f"exit {m.returncode}")
        self.log(f"  -> {status} in {fmt_seconds(m.wall)}; peak RSS {m.tree_maxrss / 1024:.0f} MiB"
                 f" (log {log.name})")
        return m


def failure(m: Measurement) -> str:
    """A one-line reason for a failed measurement, for the table."""
    if m.timed_out:
        return f"failed: timed out after {fmt_seconds(m.wall)}"
    from .common import last_line
    return f"failed: exit {m.returncode}: {last_line(m.stderr_tail or m.stdout_tail, 200)}"


def rss_extra(m: Measurement) -> dict:
    return {"tree_maxrss_kib": m.tree_maxrss, "rss_source": m.rss_source,
            "total_rss_peak_kib": m.total_rss_peak,
            "by_kind": m.by_kind}


def dump(obj) -> str:
    return json.dumps(obj, default=str)
