"""Fetch registered files' content straight into a dataset's annex, for xnat-update's default mode.

Why not `git annex get -J N`: git-annex's own work per key (locking, the transfer log, moving and
freezing the object, the location log) costs several times what fetching a small file from XNAT
does, even from a local `directory` special remote (benchmarks/RESULTS.md, section 3). xnat-update already knows each file's key, URL and digest, so it can do exactly what
git-annex does for a locked file, in bulk:

1. download with the shared XnatClient (several in flight), verified against the key's size and
   MD5, into `.git/annex/tmp/` (on the same file system, so the final move is a rename): the
   wanted files of one resource that arrive one after another come as one zip of the resource
   where zipstream.use_archive says that is cheaper (many small files: one request instead of
   one each), each member verified as a single download is; what the archive did not deliver
   whole is fetched alone;
2. move it to `.git/annex/objects/<hashdirmixed>/<key>/<key>` and remove the write bits from the
   file and its directory, as git-annex's freezeContent does;
3. record "present here" for every placed key in git-annex's location logs with one fast-import
   commit on the git-annex branch (gitannex.record_present), also after a failure or interrupt.

A dataset where that would not be what git-annex does itself (a `.git` file instead of a
directory, a crippled file system, a shared repository, custom freeze/thaw hooks, uncommitted
git-annex journal entries) or whose owner chose `datalad.xnat.fetch-method=annex` gets `git annex
get` instead (fetch.py). Either way `git annex fsck` finds the same state.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from git_annex_remote_xnat.keys import key_size, object_relpath, parse_key
from git_annex_remote_xnat.messages import error_text, one_line
from git_annex_remote_xnat.urls import resource_of, rest_path
from git_annex_remote_xnat.zipstream import Wanted, use_archive

from ..config import DatasetSettings
from .gitannex import RegistrationError, journal_is_empty, record_present
from .recovery import Journal
from .spool import Entry

lgr = logging.getLogger("datalad.xnat.update")

# git config settings under which git-annex would place or protect content differently
# (annex.tune.* changes the object directory layout)
_SETTINGS_NEEDING_ANNEX = ("annex.crippledfilesystem", "core.sharedrepository",
                           "annex.freezecontent-command", "annex.thawcontent-command")
_SETTING_PREFIXES_NEEDING_ANNEX = ("annex.tune.",)


@dataclass
class Fetched:
    """What happened to one wanted key: placed (`error` None) or failed."""

    wanted: Entry
    size: int
    error: str | None = None


def direct_fetch_refusal(repo: Path, settings: DatasetSettings) -> str | None:
    """Why content cannot be placed directly in `repo` (None: it can)."""
    if not (repo / ".git").is_dir():
        return ".git is not a directory"
    if settings.fetch_method == "annex":
        return "datalad.xnat.fetch-method=annex"
    if settings.register_method == "batch":
        return "datalad.xnat.register-method=batch"
    for name, value in settings.git_config.items():
        if name in _SETTINGS_NEEDING_ANNEX or name.startswith(_SETTING_PREFIXES_NEEDING_ANNEX):
            if str(value).strip().lower() not in ("", "false", "0", "no", "umask"):
                return f"{name} is set"
    if not journal_is_empty(repo):
        return "git-annex's journal holds uncommitted changes"
    if not settings.annex_uuid:
        return "git-annex is not initialised here"
    return None


class Source:
    """Where placed content comes from: one logged-in client and the server's xnat: URLs."""

    def __init__(self, client, base_url: str, archives: str = "auto",
                 round_trip: float | None = None) -> None:
        """`archives`: datalad.xnat.fetch-archives (auto, always, never); `round_trip`: what a
        request cost another client of the same run (a helper's parent), until this one has
        measured its own."""
        self.client = client
        self.base_url = base_url
        self.archives = archives
        self._round_trip = round_trip

    @property
    def round_trip(self) -> float | None:
        """Seconds a request costs beyond its bytes (XnatClient.round_trip)."""
        measured = None if self.client is None else self.client.round_trip
        return self._round_trip if measured is None else measured

    def download(self, url: str, dest: Path, size: int, md5: str) -> None:
        """One file, verified; raises with a one-line message."""
        self.client.download(rest_path(url, self.base_url), dest, size=size, md5=md5)

    def resource(self, url: str) -> tuple[str, str, str]:
        """(files listing path, resource label, path in the resource) of a file's URL."""
        return resource_of(url, self.base_url)

    def archive(self, listing: str, label: str, wanted: dict[str, Wanted], listed_bytes: int,
                listed_files: int) -> Iterator[tuple[str, str | None]]:
        """Several files of one resource from one zip (XnatClient.download_archive)."""
        return self.client.download_archive(listing, label, wanted, listed_bytes, listed_files)


def resource_runs(entries: Iterable[Entry], base_url: str) -> Iterator[list[Entry]]:
    """The entries in their order, in runs of consecutive entries of one resource (a listing
    gives a resource's files one after another: each run is a candidate for one archive)."""
    run: list[Entry] = []
    listing = None
    for entry in entries:
        this = resource_of(entry.url, base_url)[0]
        if run and this != listing:
            yield run
            run = []
        listing = this
        run.append(entry)
    if run:
        yield run


def object_path(repo: Path, key: str) -> Path:
    """Where git-annex keeps the content of `key` in a non-bare repository."""
    return repo / object_relpath(key)


def fetch_scratch(repo: Path, inside: Path | None = None) -> Path:
    """A new private folder in .git/annex/tmp, or in `inside` (a folder made here before):
    the same file system as the objects, so that placing is a rename."""
    root = inside or repo / ".git" / "annex" / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="xnat-fetch-", dir=root))


class AnnexPlacer:
    """Downloads wanted keys with a client and puts them into one dataset's annex."""

    def __init__(self, repo: Path, source: Source | None, jobs: int, uuid: str,
                 journal: Journal | None = None, scratch_root: Path | None = None) -> None:
        """`source` fetches xnat: URLs verified (None: a placer that only records and
        discards what others placed). With a `journal`, a marker says content may be here
        unrecorded (see mark()). Partial downloads go to a folder of their own in
        `scratch_root` (a helper's: its parent removes the root, also when the helper was
        killed)."""
        self.repo = repo
        self.scratch_root = scratch_root
        self.journal = journal
        self.marker: Path | None = None
        self.source = source
        self.jobs = max(1, jobs)
        self.uuid = uuid  # the repository's own annex.uuid: record() says the content is here
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self.placed: list[str] = []

    def fetch_all(self, wanted: Iterable[Entry], *, record: bool = True,
                  stop: threading.Event | None = None) -> Iterator[Fetched]:
        """Fetch every wanted key not yet present, `jobs` at a time; yields one result per
        download (keys already present, or wanted twice, are skipped silently). Once `stop` is
        set, no further download starts. With `record`, the location log is written at the
        end, also when the caller stops early or an error escapes; without it, the caller
        calls record() (or discard())."""
        assert self.source is not None
        self.mark()
        scratch = self._scratch()
        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                running: set[Future] = set()
                for run in resource_runs(wanted, self.source.base_url):
                    if stop is not None and stop.is_set():
                        break
                    claimed = [item for item in run if self._claim(item)]
                    for task, items in self._tasks(run, claimed):
                        running.add(pool.submit(task, items, scratch))
                        if len(running) >= self.jobs * 4:
                            done, running = wait(running, return_when=FIRST_COMPLETED)
                            for future in done:
                                yield from future.result()
                for future in running:
                    yield from future.result()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if record:
                self.record()

    def fetch_each(self, runs: Iterable[list[Entry]],
                   report: Callable[[Entry, Fetched | None], None]) -> None:
        """Like fetch_all, for a caller whose input may wait and comes in runs of one resource
        (resource_runs): `report` is called from the download threads as each download ends
        (Fetched), and at once for a key that is present already or wanted twice (None).
        Returns when all are done; records nothing."""
        scratch = self._scratch()

        def reported(done: Future) -> None:
            for fetched in done.result():
                report(fetched.wanted, fetched)
        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                for run in runs:
                    claimed = []
                    for item in run:
                        if self._claim(item):
                            claimed.append(item)
                        else:
                            report(item, None)
                    for task, items in self._tasks(run, claimed):
                        pool.submit(task, items, scratch).add_done_callback(reported)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _tasks(self, run: list[Entry], claimed: list[Entry]
               ) -> list[tuple[Callable[[list[Entry], Path], list[Fetched]], list[Entry]]]:
        """How to fetch the claimed keys of one run: one archive of their resource, or one
        download each (zipstream.use_archive decides from counts and sizes; the run, with the
        keys present already, stands for the resource's listing)."""
        assert self.source is not None
        sized = [item for item in claimed if parse_key(item.key)[1] is not None]
        listed_bytes = sum(key_size(i.key) or 0 for i in run)
        if use_archive(self.source.archives, len(sized), sum(key_size(i.key) or 0 for i in sized),
                       len(run), listed_bytes, self.source.round_trip):
            others = [item for item in claimed if parse_key(item.key)[1] is None]
            # the archive holds the whole resource: it is read up to the run's bytes
            whole = partial(self._fetch_archive, listed_bytes=listed_bytes, listed_files=len(run))
            return [(whole, sized)] + [(self._fetch_singly, [i]) for i in others]
        return [(self._fetch_singly, [item]) for item in claimed]

    def mark(self) -> None:
        """Before the first placement: leave a marker until the caller is done (it removes
        it), so that a run killed between placing and recording has the next run record what
        is here (recovery.py)."""
        if self.journal is not None and self.marker is None:
            self.marker = self.journal.begin("content", self.repo, uuid=self.uuid)

    def _scratch(self) -> Path:
        return fetch_scratch(self.repo, self.scratch_root)

    def _claim(self, item: Entry) -> bool:
        """Whether `item` is to be downloaded: not present yet and not under way already."""
        if object_path(self.repo, item.key).exists():
            return False
        with self._lock:
            if item.key in self._in_flight:
                return False
            self._in_flight.add(item.key)
        return True

    def _fetch_singly(self, items: list[Entry], scratch: Path) -> list[Fetched]:
        return [self._fetch_one(item, scratch) for item in items]

    def _fetch_one(self, item: Entry, scratch: Path) -> Fetched:
        assert self.source is not None
        size, md5 = parse_key(item.key)
        if size is None or md5 is None:
            self._release(item.key)
            return Fetched(item, 0, f"{item.key} is not an MD5E key; use `git annex get`")
        tmp = scratch / f"{threading.get_ident()}-{item.key}"
        try:
            self.source.download(item.url, tmp, size, md5)
            self._place(item.key, tmp)
        except Exception as exc:  # noqa: BLE001 - every failure is reported for its file
            tmp.unlink(missing_ok=True)
            return Fetched(item, size, error_text(exc))
        finally:
            self._release(item.key)
        return Fetched(item, size)

    def _fetch_archive(self, items: list[Entry], scratch: Path, *, listed_bytes: int,
                       listed_files: int) -> list[Fetched]:
        """The MD5E keys of one resource from one zip of it, each member verified and placed
        as it arrives; whatever the archive did not deliver whole is fetched alone (with the
        retries of a single download), so a broken archive costs time, never a bad file."""
        assert self.source is not None
        listing, label, _ = self.source.resource(items[0].url)
        wanted: dict[str, Wanted] = {}
        pending: dict[str, Entry] = {}
        for item in items:
            size, md5 = parse_key(item.key)
            assert size is not None and md5 is not None
            path = self.source.resource(item.url)[2]
            wanted[path] = Wanted(scratch / f"{threading.get_ident()}-{item.key}", size, md5)
            pending[path] = item
        results = []
        try:
            for path, error in self.source.archive(listing, label, wanted, listed_bytes,
                                                   listed_files):
                if error is not None:
                    lgr.debug("%s: %s in the archive of %s; fetched alone", path, error, listing)
                    continue
                item = pending.pop(path)
                try:
                    self._place(item.key, wanted[path].dest)
                except Exception as exc:  # noqa: BLE001 - reported for its file
                    wanted[path].dest.unlink(missing_ok=True)
                    results.append(Fetched(item, wanted[path].size, error_text(exc)))
                else:
                    results.append(Fetched(item, wanted[path].size))
                finally:
                    self._release(item.key)
        except Exception as exc:  # noqa: BLE001 - the archive failed: the rest comes alone
            lgr.debug("the archive of %s failed (%s); %d files fetched alone", listing,
                      one_line(exc), len(pending))
        results.extend(self._fetch_one(item, scratch) for item in pending.values())
        return results

    def _release(self, key: str) -> None:
        with self._lock:
            self._in_flight.discard(key)

    def _place(self, key: str, tmp: Path) -> None:
        final = object_path(self.repo, key)
        folder = final.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        read_only = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        os.chmod(final, final.stat().st_mode & read_only)
        os.chmod(folder, folder.stat().st_mode & read_only)
        with self._lock:
            self.placed.append(key)

    def discard(self) -> None:
        """Remove the content placed since the last record() (for a run whose registration
        failed: the dataset is left as it was)."""
        with self._lock:
            keys, self.placed = self.placed, []
        for key in keys:
            final = object_path(self.repo, key)
            os.chmod(final.parent, final.parent.stat().st_mode | stat.S_IWUSR)
            final.unlink(missing_ok=True)
            try:
                final.parent.rmdir()
            except OSError:
                pass

    def record(self) -> None:
        """Write "present here" for the keys placed so far (idempotent per key)."""
        with self._lock:
            keys, self.placed = self.placed, []
        if not keys:
            return
        try:
            record_present(self.repo, keys, self.uuid)
        except RegistrationError as exc:
            raise RegistrationError(f"{exc}; the content is in place, the next xnat-update "
                                    f"records it") from exc


class WantedStream:
    """Wanted files handed from xnat-update's enumeration to the downloads as they are found,
    so that downloading starts while the listing still runs.

    Only the first `limit` are held here (memory stays flat for any project size); the rest
    are read back from the caller's spool, which holds every wanted file in the same order,
    once the enumeration is done (`close`)."""

    def __init__(self, limit: int = 20_000) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._limit = limit
        self._sent = 0
        self._overflowed = False
        self._enough_for = 0
        self._enough = threading.Event()
        self._closed = threading.Event()
        self._cancelled = threading.Event()
        self._later: list = []

    def put(self, item: Entry) -> None:
        """Hand over one wanted file (the enumerating thread only)."""
        if self._sent >= self._limit:
            self._overflowed = True
            return
        self._queue.put(item)
        self._sent += 1
        if self._enough_for and self._sent >= self._enough_for:
            self._enough.set()

    def close(self, later: list | None = None) -> None:
        """The enumeration is done; the spool is complete and flushed. `later` is handed to
        whoever waits in later() (the datasets to fetch into after this one)."""
        self._later = later or []
        self._queue.put(None)
        self._closed.set()
        self._enough.set()

    def cancel(self) -> None:
        """Stop handing out: whoever waits here returns (the run failed or was interrupted)."""
        self._cancelled.set()
        self._enough.set()

    def wait_for(self, count: int) -> int:
        """Wait until `count` files were handed over or the enumeration is done; returns
        `count`, or the total when it is smaller (to choose how to download them)."""
        self._enough_for = count
        if self._sent >= count:
            self._enough.set()
        self._enough.wait()
        if self._cancelled.is_set():
            return 0
        if self._closed.is_set() and not self._overflowed:
            return min(count, self._sent)
        return count

    def items(self, spooled: Callable[[], Iterable[Entry]]) -> Iterator[Entry]:
        """Every wanted file: those handed over, then (past the limit) the rest of
        `spooled()`, which starts with the same files in the same order."""
        taken = 0
        while not self._cancelled.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                break
            taken += 1
            yield item
        else:
            return
        if self._overflowed:
            for number, item in enumerate(spooled()):
                if self._cancelled.is_set():
                    return
                if number >= taken:
                    yield item

    def later(self) -> list:
        """What close() was given, once it was called ([] when cancelled first)."""
        while not self._closed.wait(timeout=0.1):
            if self._cancelled.is_set():
                return []
        return self._later


class BackgroundFetch:
    """AnnexPlacer.fetch_all for one dataset after another, in a thread of its own, so that
    downloads run while the caller does other work (xnat-update: while it commits the
    registration, which is mostly git's work). Nothing is recorded on git-annex's branch until
    the caller says so (record), since the caller may be writing that branch meanwhile."""

    def __init__(self, plan: Iterable[tuple[str, AnnexPlacer, Iterable[Entry]]],
                 max_pending: int = 10_000, on_stop: Callable[[], None] | None = None) -> None:
        """`plan` yields (tag, placer, wanted) and is consumed by the thread, so that the
        checks it makes per dataset run there too. `on_stop` is called by stop(): it must make
        a `wanted` that waits for input (WantedStream) end."""
        self._on_stop = on_stop
        self.placers: list[AnnexPlacer] = []
        self.covered: set[str] = set()     # tags whose wanted keys were all handled
        self._stop = threading.Event()
        # bounded: downloads pause when the caller has not collected this many results
        self._outcomes: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, args=(plan,), daemon=True,
                                        name="xnat-fetch")
        self._thread.start()

    def _run(self, plan: Iterable[tuple[str, AnnexPlacer, Iterable[Entry]]]) -> None:
        try:
            for tag, placer, wanted in plan:
                if self._stop.is_set():
                    break
                self.placers.append(placer)
                for outcome in placer.fetch_all(wanted, record=False, stop=self._stop):
                    self._outcomes.put((tag, outcome))
                if not self._stop.is_set():
                    self.covered.add(tag)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by outcomes()
            self._outcomes.put(exc)
        finally:
            self._outcomes.put(None)

    def outcomes(self) -> Iterator[tuple[str, Fetched]]:
        """(tag, result) for every download as it finishes, until all are done; an error of
        the fetch itself is raised."""
        while (item := self._outcomes.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Start no further download and wait for those under way."""
        self._stop.set()
        if self._on_stop is not None:
            self._on_stop()
        while self._thread.is_alive():
            try:
                self._outcomes.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def record(self) -> None:
        """Write "present here" for everything placed (call after outcomes() is exhausted)."""
        for placer in self.placers:
            placer.record()

    def discard(self) -> None:
        """Stop, and remove the content placed (the caller's own work failed)."""
        self.stop()
        for placer in self.placers:
            placer.discard()
