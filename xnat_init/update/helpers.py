"""Download helpers in processes of their own, for xnat-update's default mode.

Why: in one Python process only one thread runs Python code at a time (the GIL). MD5, copying
and file system calls release it, but the HTTP handling does not, so one process of many
download threads cannot keep several cores busy; a few processes of a few threads each can
(benchmarks/RESULTS.md, section 3, has the figures).

A helper is `python -m xnat_init.update.helpers`. It reads one JSON line from stdin: server,
credential, repository, thread count, archive setting, the round trip the parent measured and a
scratch folder (the parent's: it removes the folder once the helpers have ended, also when one
was killed). The secret travels through the pipe, never through the command line or the
environment. Then it reads one wanted file per line (`key TAB url`), an empty line after each
run of one resource's files (placement.resource_runs: the helper may fetch a run as one
archive), downloads and places each with placement.AnnexPlacer, and answers one line per file:
`key TAB size TAB present TAB error TAB unreachable` (unreachable "1": the helper's client gave
the server up, so the parent stops sending files to any helper). At end of input it finishes what
it received and exits. A key a killed helper placed without answering is placed all the same
(content is renamed into place only once verified).
The parent (ProcessPlacer) records what was placed on git-annex's branch, as AnnexPlacer does.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from git_annex_remote_xnat.keys import key_size

from .gitannex import RegistrationError
from .recovery import Journal
from .placement import (AnnexPlacer, Fetched, Source, fetch_scratch, object_path,
                        resource_runs)
from .spool import Entry

# fewer files than this are not worth starting processes for (each costs a Python start-up)
MIN_FILES_FOR_PROCESSES = 500
THREADS_PER_PROCESS = 4


def helper_processes(jobs: int, wanted: int, setting: str | None) -> int:
    """How many helper processes to fetch `wanted` files with (1: none, threads in-process).

    `setting` is datalad.xnat.fetch-processes; unset, it is one process per 4 jobs, at most
    one per CPU, and none for fewer than MIN_FILES_FOR_PROCESSES files."""
    if setting is not None:
        try:
            return max(1, int(setting))
        except ValueError:
            raise ValueError(f"datalad.xnat.fetch-processes={setting!r} is not a number; set "
                             "it to a count of processes (1: no helper processes)") from None
    if wanted < MIN_FILES_FOR_PROCESSES:
        return 1
    return max(1, min(os.cpu_count() or 1, jobs // THREADS_PER_PROCESS))


class _Helper:
    """One helper process and the keys it was given but has not answered yet."""

    def __init__(self, header: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xnat_init.update.helpers"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="surrogateescape")
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps(header) + "\n")
        self.proc.stdin.flush()
        self.outstanding: set[str] = set()

    def send(self, run: list[Entry]) -> None:
        """One run of one resource's files, and the empty line that ends it."""
        assert self.proc.stdin
        self.outstanding.update(item.key for item in run)
        self.proc.stdin.write("".join(f"{item.key}\t{item.url}\n" for item in run) + "\n")
        self.proc.stdin.flush()

    def close_input(self) -> None:
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


class ProcessPlacer:
    """AnnexPlacer's interface (fetch_all, record, discard, placed) with the downloads done by
    `processes` helper processes of `threads` threads each."""

    def __init__(self, repo: Path, base_url: str, credential, processes: int,
                 threads: int, uuid: str, journal: Journal | None = None,
                 archives: str = "auto", round_trip: float | None = None) -> None:
        self.repo = repo
        self.base_url = base_url
        self.processes = max(1, processes)
        self.threads = max(1, threads)
        self._header = {
            "url": base_url, "repo": str(repo), "threads": self.threads, "archives": archives,
            "round_trip": round_trip,
            "credential": None if credential is None else {
                "name": credential.name, "user": credential.user,
                "password": credential.password, "source": credential.source},
        }
        # record and discard are AnnexPlacer's, on the keys the helpers placed
        self._recorder = AnnexPlacer(repo, None, 1, uuid, journal)
        # a helper's client gave the server up (it stopped answering): the rest is not tried
        self.given_up: str | None = None

    @property
    def marker(self) -> Path | None:
        return self._recorder.marker

    @property
    def placed(self) -> list[str]:
        """Keys placed and not yet recorded (the recorder's list: record() replaces it)."""
        return self._recorder.placed

    def record(self) -> None:
        self._recorder.record()

    def discard(self) -> None:
        self._recorder.discard()

    def fetch_all(self, wanted: Iterable[Entry], *, record: bool = True,
                  stop: threading.Event | None = None) -> Iterator[Fetched]:
        """Like AnnexPlacer.fetch_all: one result per download, keys already present or
        wanted twice skipped, nothing new started once `stop` is set."""
        stop = stop or threading.Event()
        halt = threading.Event()  # this call's own: the consumer stopped early
        self._recorder.mark()
        scratch = fetch_scratch(self.repo)
        helpers = [_Helper(dict(self._header, scratch=str(scratch)))
                   for _ in range(self.processes)]
        lock = threading.Lock()
        waiting: dict[str, Entry] = {}
        # runs under way, at most this many: a run is answered only once all of it was sent
        slots = threading.Semaphore(2 * self.threads * len(helpers))
        run_left: dict[int, int] = {}   # run number -> keys not answered yet
        run_of: dict[str, int] = {}
        answers: queue.Queue = queue.Queue()

        def feed() -> None:
            try:
                for number, run in enumerate(resource_runs(wanted, self.base_url)):
                    if stop.is_set() or halt.is_set():
                        break
                    with lock:
                        run = [item for item in run if item.key not in waiting]
                        if self.given_up is not None:
                            for item in run:
                                waiting[item.key] = item
                                answers.put((item.key, 0, False, self.given_up, False))
                            continue
                    if all(object_path(self.repo, i.key).exists() for i in run):
                        continue  # all present: nothing to send
                    while not slots.acquire(timeout=0.2):
                        if stop.is_set() or halt.is_set() or \
                                all(h.proc.poll() is not None for h in helpers):
                            return
                    with lock:
                        helper = min(helpers, key=lambda h: len(h.outstanding))
                        run = [item for item in run if item.key not in waiting]
                        for item in run:
                            waiting[item.key] = item
                            run_of[item.key] = number
                        run_left[number] = len(run)
                        helper.send(run)
            except (BrokenPipeError, OSError) as exc:
                answers.put(RegistrationError(
                    f"a download helper process stopped unexpectedly ({exc.__class__.__name__});"
                    " run xnat-update again, or set datalad.xnat.fetch-processes=1"))
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer
                answers.put(exc)
            finally:
                for helper in helpers:
                    helper.close_input()

        def answered(key: str) -> None:
            """A key's answer came (under the lock): its run's slot is free after the last."""
            number = run_of.pop(key, None)
            if number is not None:
                run_left[number] -= 1
                if not run_left[number]:
                    del run_left[number]
                    slots.release()

        def read(helper: _Helper) -> None:
            assert helper.proc.stdout
            for line in helper.proc.stdout:
                key, size, present, error, unreachable = line.rstrip("\n").split("\t", 4)
                with lock:
                    helper.outstanding.discard(key)
                    answered(key)
                answers.put((key, int(size), present == "1", error or None, unreachable == "1"))
            helper.proc.wait()
            with lock:
                lost, helper.outstanding = helper.outstanding, set()
                for key in lost:
                    answered(key)
            for key in lost:
                if object_path(self.repo, key).exists():
                    # placed (verified, then renamed into place) before its answer was written
                    answers.put((key, key_size(key) or 0, False, None, False))
                    continue
                answers.put((key, 0, False, f"the download helper process ended with status "
                                            f"{helper.proc.returncode} before it was done", False))
            answers.put(None)

        threads = [threading.Thread(target=feed, daemon=True, name="xnat-fetch-feed")]
        threads += [threading.Thread(target=read, args=(h,), daemon=True,
                                     name="xnat-fetch-read") for h in helpers]
        for thread in threads:
            thread.start()
        running = len(helpers)
        try:
            while running:
                answer = answers.get()
                if answer is None:
                    running -= 1
                    continue
                if isinstance(answer, BaseException):
                    raise answer
                key, size, present, error, unreachable = answer
                if unreachable and self.given_up is None:
                    self.given_up = error
                with lock:
                    item = waiting.pop(key)
                if present:
                    continue
                if error is None:
                    with lock:
                        self.placed.append(key)
                yield Fetched(item, size, error)
        finally:
            halt.set()
            for helper in helpers:
                helper.close_input()
            for thread in threads:
                thread.join()
            # answers that came in after the consumer stopped: what was placed is still placed
            while not answers.empty():
                answer = answers.get()
                if isinstance(answer, tuple) and answer[3] is None and not answer[2]:
                    self.placed.append(answer[0])
            shutil.rmtree(scratch, ignore_errors=True)
            if record:
                self.record()


def _end_with_parent() -> None:
    """A helper must not outlive the update (killed with SIGKILL, it cannot stop its
    helpers): a thread watches for the parent to go and then ends this process at once. The
    downloads it was given are lost; what it placed, the next update records."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="xnat-helper-watch").start()


def main() -> int:
    """The helper process: see the module docstring."""
    from git_annex_remote_xnat.client import XnatClient
    from git_annex_remote_xnat.credentials import Credential

    # failures are answered per file; retries logged by urllib3 are not for the user's terminal
    logging.getLogger().addHandler(logging.NullHandler())
    _end_with_parent()
    header = json.loads(sys.stdin.readline())
    credential = Credential(**header["credential"]) if header["credential"] else None
    threads = int(header["threads"])
    client = XnatClient(header["url"], credential, retries=3, pool_size=max(4, 2 * threads))
    repo = Path(header["repo"])
    out_lock = threading.Lock()

    def answer(key: str, size: int, present: bool, error: str | None) -> None:
        unreachable = int(error is not None and client.given_up is not None)
        if unreachable:
            error = str(client.given_up)  # the one line the parent reports for all files
        with out_lock:
            sys.stdout.write(f"{key}\t{size}\t{int(present)}\t{error or ''}\t{unreachable}\n")
            sys.stdout.flush()

    def report(item: Entry, fetched: Fetched | None) -> None:
        if fetched is None:
            answer(item.key, 0, True, None)  # present already (placed by someone else)
        else:
            answer(item.key, fetched.size, False, fetched.error)

    def runs() -> Iterator[list[Entry]]:
        run: list[Entry] = []
        for line in sys.stdin:
            key, _, url = line.rstrip("\n").partition("\t")
            if key:
                run.append(Entry("", key, url))
            elif run:
                yield run
                run = []
        if run:
            yield run

    source = Source(client, header["url"], header.get("archives", "auto"),
                    header.get("round_trip"))
    try:
        AnnexPlacer(repo, source, threads, uuid="", scratch_root=Path(header["scratch"])
                    ).fetch_each(runs(), report)
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
