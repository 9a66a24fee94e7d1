"""Emulator process control: start an XNAT emulator serving N files as a separate process.

Preferred: `python -m benchmarks.emuserver` (the emulator's Python API in a child process, with
a stdin/stdout control channel for the request counters). Fallback when that API is missing or
differs: the emulator's own CLI `python -m xnat_emulator --preset files --files N --port P
--require-login`, which prints its URL; request counts are then unavailable.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path

from .common import OUR_BIN, REPO, WORK, BenchError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            if chunk == b"\n":
                return buf.decode(errors="replace")
            buf += chunk
        elif proc.poll() is not None:
            break
    raise BenchError(f"emulator gave no answer within {timeout:.0f} s "
                     f"(exit status {proc.poll()}); see {WORK / 'logs'}")


class EmulatorProcess:
    """`with EmulatorProcess(files=N, file_size=B) as emu:` -> emu.url, emu.counters(), emu.reset().

    `delay` (seconds per response) and `download_rate` (bytes/s of file bodies, 0 = no cap) are
    the emulator's faults of those names (`--delay`, `--download-rate`)."""

    def __init__(self, files: int, file_size: int = 1024, start_timeout: float = 600,
                 delay: float = 0.0, download_rate: int = 0):
        self.files, self.file_size, self.start_timeout = files, file_size, start_timeout
        self.delay, self.download_rate = delay, download_rate
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.users: dict = {}
        self.mode = ""
        self.log = WORK / "logs" / f"emulator-{files}x{file_size}.log"
        self.fault_args = ((["--delay", str(delay)] if delay else [])
                           + (["--download-rate", str(download_rate)] if download_rate else []))

    def _env(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{OUR_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self) -> "EmulatorProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for mode in ("api", "cli"):
            try:
                self._start(mode)
                self.mode = mode
                return self
            except BenchError as exc:
                errors.append(f"{mode}: {exc}")
                self.stop()
        raise BenchError("emulator did not start: " + "; ".join(errors))

    def _start(self, mode: str) -> None:
        python = str(OUR_BIN / "python")
        port = _free_port()
        if mode == "api":
            cmd = [python, "-m", "benchmarks.emuserver", "--files", str(self.files),
                   "--file-size", str(self.file_size), "--port", str(port)] + self.fault_args
        else:
            cmd = [python, "-m", "xnat_emulator", "--preset", "files", "--files", str(self.files),
                   "--file-size", str(self.file_size), "--port", str(port),
                   "--require-login"] + self.fault_args
        err = open(self.log, "a")
        err.write(f"\n### {' '.join(cmd)}\n")
        err.flush()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        err.close()
        line = _readline(self.proc, self.start_timeout)
        if mode == "api":
            try:
                info = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"unexpected emulator output {line!r}") from exc
            self.url, self.users = info["url"], info.get("users", {})
        else:
            match = re.search(r"https?://\S+", line)
            if not match:
                raise BenchError(f"emulator printed no URL: {line!r}")
            self.url = match.group(0).rstrip("/")
            # keep reading stdout in the background would be nicer; the CLI prints little
        self.url = self.url.rstrip("/")

    def _ask(self, command: str, timeout: float = 60) -> dict | None:
        if self.mode != "api" or not self.proc or self.proc.poll() is not None:
            return None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(_readline(self.proc, timeout))

    def counters(self) -> dict | None:
        """{"total": n, "by_route": {...}} or None when the emulator cannot report them."""
        return self._ask("counters")

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                if self.mode == "api":
                    self.proc.stdin.write(b"stop\n")
                    self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by pid
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def available() -> str | None:
    """None when the emulator package is importable, else the reason it is not."""
    try:
        proc = subprocess.run([str(OUR_BIN / "python"), "-c", "from xnat_emulator import Emulator"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit {proc.returncode}"
    return None


def wait_ready(url: str, timeout: float = 30) -> None:
    """Block until the server accepts TCP connections."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"emulator at {url} does not accept connections")


__all__ = ["EmulatorProcess", "available", "wait_ready", "Path"]
