"""Timing and peak memory of one command and its process tree.

`measure(cmd, ...)` runs a command and returns a Measurement:

* wall: wall-clock seconds from start to exit;
* tree_maxrss: the peak RSS of the largest single process in the tree (the kernel keeps a
  maximum over waited-for descendants, not a sum). Linux carries a process's high-water mark
  across fork and exec, so a command started straight from this harness would report at least
  the harness's own size (a 200 MB Python parent made `true` report 214 MB). So the command
  runs under GNU time (`/usr/bin/time -f %M`), whose own children start from its few MB; where
  GNU time is missing, `os.wait4` of the command is used and the figure is at least the
  harness's RSS (Measurement.rss_source says which);
* by_kind: a poller reads /proc every `poll` seconds (0.1), finds every descendant (by parent pid) and
  keeps each process's own high-water mark (`VmHWM`, itself a kernel-maintained peak, so sparse
  polling still sees a process's true peak as long as it is sampled once near its end). Processes are
  grouped by kind: "python" (the command itself, DataLad), "git-annex", "git", "remote" (special
  remote programs), "other". For each kind: the largest single-process peak, and the peak of the
  sum of that kind's concurrent RSS as sampled;
* total_rss_peak: the peak of the sampled sum over the whole tree.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Measurement:
    cmd: list[str]
    wall: float
    returncode: int
    tree_maxrss: int = 0  # KiB
    by_kind: dict = field(default_factory=dict)  # kind -> {"max_proc": KiB, "sum_peak": KiB, "n": procs}
    total_rss_peak: int = 0  # KiB
    stdout_tail: str = ""
    stderr_tail: str = ""
    timed_out: bool = False
    rss_source: str = "wait4"  # or "GNU time"
    # CPU seconds (user + system) of the command and every descendant reaped by the time it
    # ended (wait4 counts a child's reaped children into its own usage)
    cpu: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _kind(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "other"
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv:
        return "other"
    exe = os.path.basename(argv[0])
    joined = " ".join(argv[:3])
    if "git-annex-remote" in joined:
        return "remote"
    if exe.startswith("git-annex") or exe == "git-annex":
        return "git-annex"
    if exe.startswith("python") and len(argv) > 1 and "git-annex" in argv[1] \
            and "git-annex-remote" not in argv[1]:
        return "git-annex"  # the wheel's Python shim that execs the binary
    if exe == "git" or exe.startswith("git-"):
        if len(argv) > 1 and argv[1] == "annex":
            return "git-annex"
        return "git"
    if exe.startswith("python") or exe == "datalad":
        return "python"
    return "other"


def _short_cmd(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return " ".join(os.path.basename(a) if i < 2 else a for i, a in enumerate(argv[:4]))[:120]


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) < 2:
            continue
        children.setdefault(int(rest[1]), []).append(int(entry.name))
    return children


def _descendants(root: int) -> list[int]:
    tree = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out


class _Poller(threading.Thread):
    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        # Processes alive at the last sample, keyed by (pid, command line): between fork and exec
        # a child shows its parent's command line and memory (VmHWM included), so a program's own
        # peak starts at its exec. Only live processes are kept: a command that starts one
        # program per file (datalad-xnat: 100,000 `git annex metadata`) must not make the
        # poller's own memory and time grow with the run.
        self.live: dict[tuple, tuple[str, str]] = {}  # -> (kind, short command)
        self.max_proc: dict[str, tuple[int, str]] = {}  # kind -> (largest VmHWM, its command)
        self.count: dict[str, int] = {}  # kind -> processes seen
        self.sum_peak: dict[str, int] = {}
        self.total_peak = 0

    def sample(self) -> None:
        sums: dict[str, int] = {}
        total = 0
        seen: dict[tuple, tuple[str, str]] = {}
        for pid in _descendants(self.root):
            rss = _status_kib(pid, "VmRSS:")
            hwm = _status_kib(pid, "VmHWM:")
            if rss is None:
                continue
            try:
                proc = (pid, Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
            known = self.live.get(proc)
            if known is None:
                known = (_kind(pid), _short_cmd(pid))
                self.count[known[0]] = self.count.get(known[0], 0) + 1
            seen[proc] = known
            kind, name = known
            if hwm is not None and hwm >= self.max_proc.get(kind, (0, ""))[0]:
                self.max_proc[kind] = (hwm, name)
            sums[kind] = sums.get(kind, 0) + rss
            total += rss
        self.live = seen
        for kind, value in sums.items():
            self.sum_peak[kind] = max(self.sum_peak.get(kind, 0), value)
        self.total_peak = max(self.total_peak, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def by_kind(self) -> dict:
        kinds = set(self.count) | set(self.sum_peak)
        out: dict[str, dict] = {}
        for kind in kinds:
            hwm, name = self.max_proc.get(kind, (0, ""))
            entry = {"max_proc": hwm, "sum_peak": self.sum_peak.get(kind, 0),
                     "n": self.count.get(kind, 0)}
            if kind in self.max_proc:
                entry["max_cmd"] = name
            out[kind] = entry
        return out


def _find_gnu_time() -> str | None:
    path = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if not path:
        return None
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "GNU" in version.stdout + version.stderr else None


GNU_TIME = _find_gnu_time()


def _gnu_time_kib(path: str) -> int | None:
    """The %M line GNU time wrote (after a "Command exited with ..." line on failure)."""
    try:
        lines = Path(path).read_text().split()
        return int(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    finally:
        Path(path).unlink(missing_ok=True)


def _stop_under(root: int, grace: float = 10.0) -> None:
    """SIGKILL every descendant of `root` (not root) until root exits or `grace` passes."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for pid in _descendants(root)[1:]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        if os.waitid(os.P_PID, root, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return  # exited, left for wait4 to reap
        time.sleep(0.1)


def measure(cmd: list, env: dict | None = None, cwd: Path | None = None,
            timeout: float | None = None, stdin_path: Path | None = None,
            poll: float | None = 0.1, log: Path | None = None) -> Measurement:
    """Run cmd, time it, and record its process tree's memory. Never raises for a failing cmd."""
    cmd = [str(c) for c in cmd]
    rss_file = None
    spawn = cmd
    if GNU_TIME:
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        spawn = [GNU_TIME, "-f", "%M", "-o", rss_file, "--"] + cmd
    out_fh = open(log, "w") if log else subprocess.DEVNULL
    stdin_fh = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    err_path = (log.with_suffix(log.suffix + ".err") if log else None)
    err_fh = open(err_path, "w") if err_path else subprocess.PIPE
    # written data of the previous (untimed or timed) step goes to disk now, not during this one
    os.sync()
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(spawn, env=env, cwd=cwd, stdin=stdin_fh, stdout=out_fh,
                                stderr=err_fh, start_new_session=True)
    except OSError as exc:
        return Measurement(cmd, 0.0, 127, stderr_tail=f"could not start: {exc}")
    poller = _Poller(proc.pid, poll) if poll else None
    if poller:
        poller.start()
    timed_out = False
    stderr_data = ""
    if err_fh is subprocess.PIPE:
        # drain stderr in a thread so a chatty command cannot block on a full pipe
        chunks: list[str] = []
        reader = threading.Thread(
            target=lambda: chunks.append(proc.stderr.read().decode(errors="replace")), daemon=True)
        reader.start()
    deadline = None if timeout is None else start + timeout
    status, rusage = 0, None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.perf_counter() > deadline:
            timed_out = True
            if rss_file:
                _stop_under(proc.pid)  # GNU time lives on to report the peak it saw
            try:
                os.killpg(proc.pid, 9)  # the process group we created for this command only
            except OSError:
                pass
            _, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if poller:
        poller.stop.set()
        poller.join()
    if err_fh is subprocess.PIPE:
        reader.join(timeout=5)
        stderr_data = "".join(chunks)
    else:
        err_fh.close()
        stderr_data = err_path.read_text(errors="replace")[-4000:]
    if log:
        out_fh.close()
        stdout_data = log.read_text(errors="replace")[-4000:]
    else:
        stdout_data = ""
    if stdin_path:
        stdin_fh.close()
    tree_maxrss, rss_source = (rusage.ru_maxrss if rusage else 0), "wait4"
    if rss_file:
        from_time = _gnu_time_kib(rss_file)
        if from_time is not None:
            tree_maxrss, rss_source = from_time, "GNU time"
    return Measurement(
        cmd=cmd, wall=wall, returncode=proc.returncode, rss_source=rss_source,
        cpu=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        tree_maxrss=tree_maxrss,
        by_kind=poller.by_kind() if poller else {},
        total_rss_peak=poller.total_peak if poller else 0,
        stdout_tail=stdout_data[-2000:], stderr_tail=stderr_data[-2000:], timed_out=timed_out,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_seconds(value: float | None) -> str:
    if value is None or value != value:  # NaN
        return "—"
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 10:
        return f"{value:.1f} s"
    return f"{value:.2f} s"


def fmt_kib(kib: int | float | None) -> str:
    if not kib:
        return "—"
    return f"{kib / 1024:,.0f} MiB"
