"""The fetch stage of the default mode: the content of every wanted file, and the content of
files without an XNAT digest (hashed to key them before the plan is done).

Content is placed into each dataset's annex directly (placement.py, in threads of this process
or in helper processes, helpers.py) where git-annex would place it the same way, else fetched
with `git annex get --batch` through the special remote. Downloads into the top dataset start
while the listing still runs (WantedStream), those into subdatasets that exist already once it
is done, and both run beside the registration commit; what they placed is recorded on
git-annex's branch after the commit, or removed again when the run stops before it.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from git_annex_remote_xnat.keys import file_md5, key_size
from git_annex_remote_xnat.messages import one_line
from git_annex_remote_xnat.urls import rest_path
from git_annex_remote_xnat.zipstream import archive_setting

from .datasets import DatasetView
from .gitannex import AnnexBatch
from .helpers import MIN_FILES_FOR_PROCESSES, ProcessPlacer, helper_processes
from .placement import (
    AnnexPlacer, BackgroundFetch, Source, WantedStream, direct_fetch_refusal,
)
from .plan import ChangeSet, Plan
from .recovery import Journal, pause_point
from .spool import Entry, spool_directory

lgr = logging.getLogger("datalad.xnat.update")
DEFAULT_JOBS = 4


@dataclass
class Outcome:
    """One wanted file after its download: fetched (`error` None) or failed."""

    relpath: str   # the dataset
    path: str      # in the dataset
    size: int
    error: str | None


def hash_contents(client, base_url: str, items: list, jobs: int | None) -> Iterator[tuple]:
    """Download each item (plan._Unkeyed) once and hash it: (item, md5, size, error)."""
    from git_annex_remote_xnat.client import XnatError

    def fetch_and_hash(item):
        with tempfile.TemporaryDirectory(prefix="xnat-hash-", dir=spool_directory()) as scratch:
            dest = Path(scratch) / "content"
            try:
                client.download(rest_path(item.url, base_url), dest, size=item.record.size)
            except XnatError as exc:
                return item, None, 0, one_line(exc)
            return item, file_md5(str(dest)), dest.stat().st_size, None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs or DEFAULT_JOBS, 8))) as pool:
        yield from pool.map(fetch_and_hash, items)


class Fetcher:
    """Every download of one update's content, in the order described in the module docstring."""

    def __init__(self, client, base_url: str, remote: str, top: DatasetView, jobs: int | None,
                 fetch_processes: str | None, journal: Journal | None = None) -> None:
        self.client = client
        self.base_url = base_url
        self.remote = remote
        self.top = top
        self.jobs = jobs or DEFAULT_JOBS
        self.fetch_processes = fetch_processes   # datalad.xnat.fetch-processes of the top
        self.stream = WantedStream()
        self.early: BackgroundFetch | None = None
        self._top_entries: ChangeSet | None = None
        self._wanted_any = False
        self.journal = journal   # the markers of content placed but not recorded yet
        self._placers: list[AnnexPlacer | ProcessPlacer] = []

    # ------------------------------------------------------------------- during the listing

    def start(self) -> None:
        """Start the downloads that may run before the commit: the top dataset's wanted files
        as the plan finds them (want()), then those of the subdatasets that exist (listed())."""
        stream, top = self.stream, self.top

        def plan() -> Iterator[tuple[str, AnnexPlacer | ProcessPlacer, Iterable[Entry]]]:
            if direct_fetch_refusal(top.path, top.settings) is None:
                # enough files to choose between threads and helper processes (a setting
                # makes that choice: then the first file is enough)
                count = stream.wait_for(
                    MIN_FILES_FOR_PROCESSES if self.fetch_processes is None else 1)
                if count:
                    yield "", self._placer(top, count), stream.items(self._top_spooled)
            for relpath, change_set in stream.later():
                view = change_set.view
                if self.given_up is not None:
                    return  # fetch() answers the rest without trying
                if direct_fetch_refusal(view.path, view.settings) is None:
                    yield relpath, self._placer(view, change_set.entries.wanted), \
                        change_set.entries.wanted_entries()

        self.early = BackgroundFetch(plan(), on_stop=stream.cancel)

    def want(self, entry: Entry) -> None:
        """A wanted file of the top dataset, as the plan finds it."""
        if not self._wanted_any:
            self._wanted_any = True
            pause_point("listing")
        self.stream.put(entry)

    def _top_spooled(self) -> Iterable[Entry]:
        assert self._top_entries is not None
        return self._top_entries.entries.wanted_entries()

    def listed(self, plan: Plan) -> None:
        """The listing is done: hand the early downloads what they read next (the spools are
        complete; flushed here, since the download thread only reads them)."""
        later = []
        for relpath, change_set in plan.change_sets.items():
            change_set.entries.flush()
            if not relpath:
                self._top_entries = change_set
            elif change_set.view.exists and change_set.entries.wanted:
                later.append((relpath, change_set))
        self.stream.close(later)

    def discard(self) -> None:
        """The run stops before its commit: remove what the early downloads placed."""
        if self.early is not None:
            self.early.discard()
            self._end_markers()

    def _end_markers(self) -> None:
        """Everything placed is recorded (or removed again): no repair needed."""
        if self.journal is not None:
            for placer in self._placers:
                self.journal.end(placer.marker)

    # --------------------------------------------------------------------- after the commit

    def fetch(self, plan: Plan) -> Iterator[Outcome]:
        """Every wanted file's outcome: the early downloads', then the rest's, per dataset."""
        pause_point("fetch")
        early = self.early
        try:
            for relpath, fetched in early.outcomes():
                yield Outcome(relpath, fetched.wanted.path, fetched.size, fetched.error)
        finally:
            early.stop()
            early.record()
        for relpath, change_set in plan.change_sets.items():
            view = change_set.view
            if not change_set.entries.wanted or not view.exists or relpath in early.covered:
                continue
            given_up = self.given_up
            if given_up is not None:
                for entry in change_set.entries.wanted_entries():
                    yield Outcome(relpath, entry.path, 0, given_up)
            elif (refusal := direct_fetch_refusal(view.path, view.settings)) is None:
                placer = self._placer(view, change_set.entries.wanted)
                for fetched in placer.fetch_all(change_set.entries.wanted_entries()):
                    yield Outcome(relpath, fetched.wanted.path, fetched.size, fetched.error)
            else:
                lgr.debug("fetching with git annex get in %s: %s", view.path, refusal)
                yield from self._fetch_with_annex(change_set)
        self._end_markers()

    @property
    def given_up(self) -> str | None:
        """Why the server is not tried any more in this run (it stopped answering), seen by
        this process's client or by a helper process's; None while it answers."""
        if self.client.given_up is not None:
            return str(self.client.given_up)
        return next((placer.given_up for placer in self._placers
                     if isinstance(placer, ProcessPlacer) and placer.given_up), None)

    def _placer(self, view: DatasetView, count: int) -> AnnexPlacer | ProcessPlacer:
        """Downloads of `count` (or more) files into one dataset: in helper processes when
        there are many (helpers.py), else in threads of this process."""
        processes = helper_processes(self.jobs, count, self.fetch_processes)
        uuid = view.settings.annex_uuid
        archives = archive_setting(view.settings.fetch_archives)
        round_trip = self.client.round_trip
        lgr.debug("fetching %d files into %s in %d process(es); fetch-archives=%s, a request "
                  "takes %s", count, view.path, processes, archives,
                  "unknown" if round_trip is None else f"{round_trip * 1000:.1f} ms")
        placer: AnnexPlacer | ProcessPlacer
        if processes > 1:
            placer = ProcessPlacer(view.path, self.base_url, self.client.credential, processes,
                                   threads=-(-self.jobs // processes), uuid=uuid,
                                   journal=self.journal, archives=archives,
                                   round_trip=round_trip)
        else:
            placer = AnnexPlacer(view.path, Source(self.client, self.base_url, archives),
                                 self.jobs, uuid, self.journal)
        self._placers.append(placer)
        return placer

    def _fetch_with_annex(self, change_set: ChangeSet) -> Iterator[Outcome]:
        view = change_set.view
        batch = AnnexBatch(view.path, "get", f"-J{self.jobs}", "--from", self.remote)
        for record in batch.run(e.path for e in change_set.entries.wanted_entries()):
            if record["success"]:
                yield Outcome(view.relpath, record.get("file", ""),
                              key_size(record.get("key") or "") or 0, None)
            else:
                yield Outcome(view.relpath, record.get("file", ""), 0,
                              " ".join(record.get("error-messages", [])) or "git annex get failed")
        if batch.returncode != 0 and batch.stderr.strip():
            lgr.debug("git annex get: %s", batch.stderr.strip())
