"""datalad xnat-update: register (and by default fetch) what the XNAT project holds.

How an update runs, and why:

1. read the instance's configuration, log in once, take a lock (`.git/xnat-update.lck`) so two
   updates of one dataset cannot interleave;
2. stream the server's files (the client lists subjects and experiments once and then one
   `scans/ALL/files` per session, concurrently) and render each file's path;
3. compare with what each dataset's HEAD tracks, by 64-bit fingerprints of path and symlink
   (16 bytes per tracked file): unchanged files cost a hash, nothing else; new and changed files
   are spooled to temporary files, not kept as Python objects, so memory stays flat;
4. stop before touching anything if a path was refused (it would leave the dataset), two files
   render to one path, or a path is already used by a file that is not from XNAT;
5. files without an XNAT digest are downloaded once and hashed, so every file gets an MD5E key
   (never a URL- key, and no dependence on how a git-annex version builds VURL keys);
6. create the new `//` subdatasets (with the special remote and the configuration they need);
7. register, deepest dataset first, with one fast-import commit per dataset (register.py), so a
   dataset gets exactly one commit per update, whose message summarises it;
8. unless `--reckless fast`, fetch the registered files' content, N at a time: downloaded,
   verified and placed into the annex directly where git-annex would do the same (content.py),
   else with `git annex get -J N` through the special remote. Downloads into datasets that
   exist already start with step 7 and run beside it (the commit is mostly git's work); their
   content is recorded after the commit, or removed again if the commit fails.

An interrupted update leaves every dataset at its last complete commit; run it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

from datalad.distribution.dataset import (
    EnsureDataset,
    datasetmethod,
    require_dataset,
)
from datalad.interface.base import Interface, build_doc, eval_results
from datalad.interface.results import get_status_dict
from datalad.log import log_progress
from datalad.support.constraints import EnsureChoice, EnsureInt, EnsureNone, EnsureStr
from datalad.support.param import Parameter

from git_annex_remote_xnat.keys import md5e_key
from git_annex_remote_xnat.urls import file_url, server_id

from git_annex_remote_xnat.messages import one_line

from .common import filter_params, resolve_credential
from .config import (
    CONFIG_FILE,
    DEFAULT_NAME,
    XnatConfig,
    config_file_content,
    provider_file_content,
    provider_path,
    read_config,
)
from .content import (
    AnnexPlacer,
    BackgroundFetch,
    Wanted,
    WantedStream,
    direct_fetch_refusal,
)
from .fetchproc import MIN_FILES_FOR_PROCESSES, ProcessPlacer, helper_processes
from .init import ensure_special_remote, remote_uuid
from .layout import (
    CollisionTracker,
    LayoutError,
    PathFormat,
    RenderedPath,
    describe_collisions,
    path_hash,
)
from .register import (
    Change,
    KeySpool,
    RegistrationError,
    TrackedTree,
    annex_json_results,
    commit_tree_changes,
    current_branch,
    iter_tracked_symlinks,
    key_urls,
    register_keys,
    symlink_fingerprint,
)
from .spool import LineSpool

lgr = logging.getLogger("datalad.xnat.update")
ACTION = "xnat_update"
MAX_LISTED_PROBLEMS = 20


@build_doc
class XnatUpdate(Interface):
    """Register the files of the tracked XNAT project, and fetch them unless --reckless fast.

    Files with an XNAT digest become ``MD5E-s<size>--<md5><ext>`` keys with their ``xnat:`` URL,
    registered without downloading; files without a digest are downloaded once and hashed, so
    every key is verifiable. Files are placed by the pathfmt given to xnat-init. The update is
    incremental: unchanged files cost nothing, new files are added, files whose digest changed on
    the server follow --ifexists (default: overwrite), files gone from the server are reported
    and only removed with --remove-gone. Each dataset gets one commit per update.
    """

    _params_ = dict(
        dataset=Parameter(
            args=("-d", "--dataset"), metavar="DATASET",
            doc="dataset to update (default: the one at the current directory)",
            constraints=EnsureDataset() | EnsureNone()),
        force=Parameter(
            args=("-f", "--force"), action="store_true",
            doc="""re-register every file, also those that look unchanged (repairs URLs and
            location records)"""),
        reckless=Parameter(
            args=("--reckless",), metavar="fast",
            doc="'fast': register only, do not download content (get it later with datalad get)",
            constraints=EnsureChoice(None, "fast")),
        ifexists=Parameter(
            args=("--ifexists",), metavar="overwrite|skip",
            doc="""what to do with a file whose content changed on the server: 'overwrite'
            (default) registers the new version, 'skip' keeps the old one""",
            constraints=EnsureChoice(None, "overwrite", "skip")),
        jobs=Parameter(
            args=("-J", "--jobs"), metavar="NJOBS",
            doc="parallel listings and downloads (default 8 listings, 4 downloads)",
            constraints=EnsureInt() | EnsureNone()),
        name=Parameter(
            args=("--name",), metavar="NAME",
            doc="the XNAT instance to update (as given to xnat-init --name)",
            constraints=EnsureStr() | EnsureNone()),
        remove_gone=Parameter(
            args=("--remove-gone", "--drop-gone"), action="store_true",
            doc="""remove files that are gone from the server (without this they are only
            reported)"""),
        **filter_params(for_update=True),
    )

    _examples_ = [
        dict(text="Register everything without downloading",
             code_cmd="datalad xnat-update --reckless fast"),
        dict(text="Fetch one subject with 8 parallel downloads",
             code_cmd="datalad xnat-update -s SUBJ01 -J 8"),
    ]

    @staticmethod
    @datasetmethod(name="xnat_update")
    @eval_results
    def __call__(*, dataset=None, force=False, reckless=None, ifexists=None, jobs=None,
                 name=None, remove_gone=False, project=None, subject=None, experiment=None,
                 collection=None, credential=None):
        ds = require_dataset(dataset, check_installed=True, purpose="update from XNAT")
        name = name or DEFAULT_NAME
        config = read_config(ds.pathobj, name)
        if config is None:
            yield get_status_dict(action=ACTION, ds=ds, status="impossible", logger=lgr,
                                  message=f"XNAT instance '{name}' is not initialised in this "
                                          "dataset; run `datalad xnat-init URL -p PROJECT` first")
            return
        options = UpdateOptions(
            project=project or config.project, subject=subject or config.subject,
            experiment=experiment or config.experiment,
            collections=list(collection or config.collections),
            credential=credential or config.credential, force=force,
            fast=reckless == "fast", ifexists=ifexists or "overwrite",
            jobs=jobs, remove_gone=remove_gone)
        yield from Updater(ds, config, options).run()


@dataclass
class UpdateOptions:
    project: str
    subject: str | None
    experiment: str | None
    collections: list[str]
    credential: str
    force: bool
    fast: bool
    ifexists: str
    jobs: int | None
    remove_gone: bool


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0
    gone: int = 0
    removed: int = 0
    failed: int = 0
    bytes_added: int = 0
    bytes_changed: int = 0
    fetched: int = 0
    bytes_fetched: int = 0
    forced: int = 0

    def summary(self) -> str:
        parts = [f"{self.added} added ({_human(self.bytes_added)})",
                 f"{self.changed} changed ({_human(self.bytes_changed)})",
                 f"{self.unchanged} unchanged"]
        if self.skipped:
            parts.append(f"{self.skipped} changed on the server but skipped")
        parts.append(f"{self.gone} gone from the server" +
                     (f" ({self.removed} removed)" if self.removed else ""))
        if self.fetched:
            parts.append(f"{self.fetched} fetched ({_human(self.bytes_fetched)})")
        parts.append(f"{self.failed} failed")
        return ", ".join(parts)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


@dataclass
class DatasetState:
    """One (sub)dataset touched by the update: what it tracks, what is spooled for it."""

    relpath: str                 # from the top dataset; '' for the top dataset
    path: Path
    exists: bool
    head: str | None = None
    tree: TrackedTree = field(default_factory=TrackedTree)
    changes: LineSpool | None = None
    keys: KeySpool | None = None
    removals: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    created: bool = False
    wanted: LineSpool | None = None   # paths to fetch content for
    subdatasets_updated: int = 0

    def want_content(self, path: str, key: str, url: str) -> None:
        if self.wanted is None:
            self.wanted = LineSpool("xnat-wanted-")
        self.wanted.write(f"{path}\t{key}\t{url}\n")

    def iter_wanted(self) -> Iterator[Wanted]:
        if self.wanted is None:
            return
        for line in self.wanted:
            path, key, url = line.rstrip("\n").split("\t")
            yield Wanted(path, key, url)

    def spool_change(self, path: str, key: str, url: str, size: int) -> None:
        if self.changes is None:
            self.changes = LineSpool("xnat-changes-")
            self.keys = KeySpool()
        self.changes.write(f"{path}\t{key}\t{url}\t{size}\n")
        assert self.keys is not None
        self.keys.add(key, url)

    def iter_changes(self) -> Iterator[Change]:
        if self.changes is None:
            return
        for line in self.changes:
            path, key, url, _ = line.rstrip("\n").split("\t")
            yield Change(path, key, url)

    def close(self) -> None:
        if self.wanted is not None:
            self.wanted.close()
        if self.changes is not None:
            self.changes.close()
        if self.keys is not None:
            self.keys.close()


class UpdateAborted(Exception):
    """Problems found before anything was written; each item is one result message."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


class Updater:
    """One run of xnat-update on one dataset hierarchy."""

    def __init__(self, ds, config: XnatConfig, options: UpdateOptions) -> None:
        self.ds = ds
        self.top = Path(ds.path)
        self.config = config
        self.options = options
        self.states: dict[str, DatasetState] = {}
        self.counts = Counts()
        self.failures: list[str] = []
        self.refused: list[str] = []
        self.refused_count = 0
        self.fetch_processes: str | None = None   # datalad.xnat.fetch-processes
        self.conflicts: list[str] = []
        self.digestless: list[tuple[RenderedPath, str, object]] = []
        self._scope_sessions: set[str] | None = None
        self._scope_subjects: set[str] | None = None
        self._stream: WantedStream | None = None   # default mode: to the downloads

    # ------------------------------------------------------------------ helpers

    def result(self, status: str, message, **kwargs) -> dict:
        return get_status_dict(action=ACTION, ds=self.ds, status=status, message=message,
                               logger=lgr, **kwargs)

    def state_for(self, relpath: str) -> DatasetState:
        state = self.states.get(relpath)
        if state is not None:
            return state
        if relpath:
            self.state_for(self.parent_of(relpath))
        path = self.top / relpath if relpath else self.top
        exists = relpath == "" or (path / ".git").exists()
        if relpath and not exists and self.options_has_gitlink(relpath):
            # registered in the superdataset but not installed: install it (no content)
            self.ds.get(str(path), get_data=False, result_renderer="disabled", result_xfm=None,
                        on_failure="ignore", return_type="list")
            exists = (path / ".git").exists()
        state = DatasetState(relpath, path, exists)
        if exists:
            _, state.head = current_branch(path)
            state.tree = TrackedTree.read(path, state.head)
        self.states[relpath] = state
        return state

    def options_has_gitlink(self, relpath: str) -> bool:
        parent = self.parent_of(relpath)
        parent_state = self.states.get(parent)
        if parent_state is None:
            return False
        inner = relpath[len(parent) + 1:] if parent else relpath
        return inner in parent_state.tree.gitlinks

    def parent_of(self, relpath: str) -> str:
        chain = self.fmt.datasets(relpath)
        return chain[-2] if len(chain) > 1 else ""

    # ------------------------------------------------------------------ run

    def run(self) -> Iterator[dict]:
        try:
            self.fmt = PathFormat(self.config.pathfmt)
        except LayoutError as exc:
            yield self.result("error", f"pathfmt in {CONFIG_FILE}: {exc}")
            return
        try:
            current_branch(self.top)
        except RegistrationError as exc:
            yield self.result("impossible", str(exc))
            return
        self.fetch_processes = self.ds.config.get("datalad.xnat.fetch-processes")
        try:
            helper_processes(1, 0, self.fetch_processes)
        except ValueError as exc:
            yield self.result("error", str(exc))
            return
        resolved = resolve_credential(self.options.credential, self.config.url, str(self.top),
                                      may_prompt=False)
        if resolved.credential is None:
            yield self.result("error", resolved.message)
            return
        import fasteners

        git_dir = subprocess.run(["git", "-C", str(self.top), "rev-parse", "--absolute-git-dir"],
                                 capture_output=True, text=True).stdout.strip()
        lock = fasteners.InterProcessLock(os.path.join(git_dir, "xnat-update.lck"))
        if not lock.acquire(blocking=False):
            yield self.result("impossible", "another xnat-update of this dataset is running "
                              f"(lock {git_dir}/xnat-update.lck); wait for it to finish")
            return
        from git_annex_remote_xnat.client import XnatClient

        self.client = XnatClient(self.config.url, resolved.credential, retries=3,
                                 pool_size=max(16, self.options.jobs or 0))
        try:
            yield from self._run_locked()
        finally:
            self.client.close()
            for state in self.states.values():
                state.close()
            lock.release()

    def _run_locked(self) -> Iterator[dict]:
        from git_annex_remote_xnat.client import XnatError

        try:
            self.client.login()
        except XnatError as exc:
            yield self.result("error", one_line(exc))
            return
        self.state_for("")
        # default mode: downloads start with the listing, and are removed again if the run
        # stops before its registration is committed (the dataset is left as it was)
        early = None if self.options.fast else self.start_fetch()
        try:
            problems = []
            try:
                self.enumerate()
                self.hash_digestless()
                self.find_gone()
            except UpdateAborted as exc:
                problems = exc.messages
            except XnatError as exc:
                problems = [one_line(exc)]
            if problems:
                if early is not None:
                    early.discard()
                for message in problems:
                    yield self.result("error", message)
                return
            if early is not None:
                self.end_stream()
            for message in self.failures:
                yield self.result("error", message)
            for state in self.states.values():
                for path in state.gone:
                    full = state.path / path
                    yield get_status_dict(
                        action=ACTION, path=str(full), type="file", logger=lgr,
                        status="ok" if self.options.remove_gone else "notneeded",
                        message="removed: gone from the server" if self.options.remove_gone
                        else "gone from the server (kept; --remove-gone removes it)")
            committed = self.commit()
        except BaseException as exc:
            if early is not None:
                early.discard()
            if not isinstance(exc, RegistrationError):
                raise
            yield self.result("error", f"registration failed, datasets not updated: {exc}")
            return
        if not self.options.fast:
            yield from self.fetch(early)
        total = self.counts
        # "ok" even when nothing changed: DataLad's renderer hides notneeded results, and the
        # summary is what users look for ("commits": 0 says nothing changed).
        status = "ok"
        if total.failed:
            status = "error"
        yield self.result(
            status, f"{self.config.project}: {total.summary()}",
            type="dataset", xnat_project=self.config.project, xnat_url=self.config.url,
            added=total.added, changed=total.changed, unchanged=total.unchanged,
            skipped=total.skipped, gone=total.gone, removed=total.removed,
            failed=total.failed, bytes_added=total.bytes_added,
            bytes_changed=total.bytes_changed, fetched=total.fetched,
            bytes_fetched=total.bytes_fetched, commits=committed)

    # ------------------------------------------------------------------ enumeration

    def enumerate(self) -> None:
        options = self.options
        collisions = CollisionTracker()
        sources = tempfile.NamedTemporaryFile("w+", encoding="utf-8", errors="surrogateescape",
                                              prefix="xnat-paths-")
        pid = f"xnat-update-list-{id(self)}"
        log_progress(lgr.info, pid, "Listing files of XNAT project %s", options.project,
                     label="Listing XNAT", unit=" files")
        seen = 0
        try:
            records = self.client.iter_files(options.project, subject=options.subject,
                                             experiment=options.experiment,
                                             resources=options.collections or None,
                                             jobs=options.jobs or 8)
            for record in records:
                seen += 1
                if seen % 200 == 0:
                    log_progress(lgr.info, pid, "Listed %d files", seen, update=seen,
                                 noninteractive_level=5)
                url = file_url(self.config.url, record)
                try:
                    rendered = self.fmt.render(record)
                except LayoutError as exc:
                    self.refused_count += 1
                    if len(self.refused) < MAX_LISTED_PROBLEMS:
                        self.refused.append(f"refused {url}: {exc}; rename it on the server "
                                            "or leave it out with --collection")
                    continue
                fingerprint = collisions.add(rendered.path)
                sources.write(f"{fingerprint}\t{rendered.path}\t{url}\n")
                if record.md5 is None:
                    self.digestless.append((rendered, url, record))
                    continue
                self.consider(rendered, md5e_key(record.size, record.md5, record.path), url,
                              record.size)
        finally:
            log_progress(lgr.info, pid, "Listed %d files of XNAT project %s", seen,
                         options.project)
        problems = []
        duplicates = collisions.duplicates()
        if duplicates:
            sources.seek(0)
            clashing = []
            for line in sources:
                fingerprint, path, url = line.rstrip("\n").split("\t")
                if int(fingerprint) in duplicates:
                    clashing.append((path, url))
            problems.append(describe_collisions(clashing))
        sources.close()
        problems += self.refused
        if self.refused_count > len(self.refused):
            problems.append(f"... and {self.refused_count - len(self.refused)} more refused "
                            "paths")
        if self.conflicts:
            problems.append("these paths are already used by files that are not registered "
                            "from XNAT: " + ", ".join(self.conflicts[:MAX_LISTED_PROBLEMS])
                            + "; move them away or choose another --pathfmt")
        if problems:
            raise UpdateAborted(problems + ["nothing was changed"])

    def consider(self, rendered: RenderedPath, key: str, url: str, size: int) -> None:
        """Compare one file with what its dataset tracks and spool it if it must be written."""
        state = self.state_for(rendered.dataset)
        inner = rendered.path_in_dataset
        index = state.tree.lookup(path_hash(inner)) if state.tree.paths else None
        changed = False
        if index is not None:
            state.tree.seen[index] = 1
            old = state.tree.blobs[index]
            if old == 0:
                self.conflicts.append(rendered.path)
                return
            same = old == symlink_fingerprint(key, inner)
            if same and not self.options.force:
                self.counts.unchanged += 1
                self.want_content(state, inner, key, url)
                return
            if not same and self.options.ifexists == "skip":
                # the dataset keeps the old version, whose content the server no longer has
                self.counts.skipped += 1
                return
            changed = not same
        self.want_content(state, inner, key, url)
        if index is None:
            self.counts.added += 1
            self.counts.bytes_added += size
            state.counts.added += 1
        elif changed:
            self.counts.changed += 1
            self.counts.bytes_changed += size
            state.counts.changed += 1
        else:  # --force: re-registered although unchanged
            self.counts.unchanged += 1
            state.counts.forced += 1
        state.spool_change(inner, key, url, size)

    def hash_digestless(self) -> None:
        """Files without an XNAT digest: download once and hash, so their key is an MD5E key."""
        if not self.digestless:
            return
        from git_annex_remote_xnat.client import XnatError
        from git_annex_remote_xnat.urls import rest_path

        self.digestless = self.drop_known_digestless(self.digestless)
        if not self.digestless:
            return
        pid = f"xnat-update-hash-{id(self)}"
        log_progress(lgr.info, pid, "Hashing %d files without XNAT digest", len(self.digestless),
                     label="Hashing", total=len(self.digestless), unit=" files")
        lock = threading.Lock()

        def fetch_and_hash(item):
            rendered, url, record = item
            with tempfile.TemporaryDirectory(prefix="xnat-hash-") as scratch:
                dest = Path(scratch) / "content"
                try:
                    self.client.download(rest_path(url, self.config.url), dest, size=record.size)
                except XnatError as exc:
                    return item, None, one_line(exc)
                digest = hashlib.md5()
                with open(dest, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                return item, (digest.hexdigest(), dest.stat().st_size), None

        with ThreadPoolExecutor(max_workers=max(1, min(self.options.jobs or 4, 8))) as pool:
            for done, (item, result, error) in enumerate(pool.map(fetch_and_hash,
                                                                  self.digestless), start=1):
                rendered, url, record = item
                with lock:
                    if error:
                        self.counts.failed += 1
                        self.failures.append(f"could not hash {url} (the server has no digest "
                                             f"for it): {error}")
                        # keep what the dataset has for it, do not report it as gone
                        state = self.state_for(rendered.dataset)
                        index = state.tree.lookup(path_hash(rendered.path_in_dataset))
                        if index is not None:
                            state.tree.seen[index] = 1
                    else:
                        md5, size = result
                        self.consider(rendered, md5e_key(size, md5, record.path), url, size)
                log_progress(lgr.info, pid, "Hashed %d", done, update=done,
                             noninteractive_level=5)
        log_progress(lgr.info, pid, "Hashed files without XNAT digest")

    def drop_known_digestless(self, items: list) -> list:
        """Digest-less files already tracked with the same size count as unchanged.

        Without a digest the server cannot tell us about a change of content, and
        re-downloading every such file on every update would make each update cost what the
        first one did. --force hashes them again.
        """
        if self.options.force:
            return items
        by_dataset: dict[str, set[int]] = {}
        for rendered, _, _ in items:
            state = self.state_for(rendered.dataset)
            if state.head is not None and state.tree.paths:
                by_dataset.setdefault(rendered.dataset, set()).add(
                    path_hash(rendered.path_in_dataset))
        known: dict[tuple[str, str], str] = {}
        for relpath, wanted in by_dataset.items():
            state = self.states[relpath]
            for path, key in iter_tracked_symlinks(state.path, state.head, wanted):
                known[(relpath, path)] = key
        remaining = []
        for item in items:
            rendered, url, record = item
            inner = rendered.path_in_dataset
            key = known.get((rendered.dataset, inner))
            if not key or f"-s{record.size}--" not in key:
                remaining.append(item)
                continue
            state = self.states[rendered.dataset]
            index = state.tree.lookup(path_hash(inner))
            if index is not None:
                state.tree.seen[index] = 1
            self.counts.unchanged += 1
            self.want_content(state, inner, key, url)
        return remaining

    def want_content(self, state: DatasetState, path: str, key: str, url: str) -> None:
        """Remember a file whose content the default mode (not --reckless fast) fetches."""
        if not self.options.fast:
            state.want_content(path, key, url)
            if self._stream is not None and not state.relpath:
                self._stream.put(Wanted(path, key, url))

    # ------------------------------------------------------------------ gone files

    def in_scope(self, url: str) -> bool:
        """Whether a registered xnat: URL belongs to what this update enumerated."""
        prefix = f"xnat://{server_id(self.config.url)}/"
        if not url.startswith(prefix):
            return False
        parts = [unquote(p) for p in url[len(prefix):].split("/")]
        options = self.options
        try:
            resource = parts[parts.index("resources") + 1]
        except (ValueError, IndexError):
            return False
        if options.collections and resource not in options.collections:
            return False
        if parts[0] == "experiments":
            return parts[1] in self.scope_sessions()
        if parts[0] == "projects" and parts[1] == options.project:
            if options.experiment:
                return False
            if len(parts) > 3 and parts[2] == "subjects":
                return parts[3] in self.scope_subjects()
            return not options.subject and parts[2] == "resources"
        return False

    def scope_sessions(self) -> set[str]:
        if self._scope_sessions is None:
            options = self.options
            subject_ids = None
            if options.subject:
                subject_ids = self.scope_subjects()
            sessions = self.client.experiments(options.project)
            self._scope_sessions = {
                e.id for e in sessions
                if (subject_ids is None or e.subject_id in subject_ids)
                and (not options.experiment or options.experiment in (e.id, e.label))}
        return self._scope_sessions

    def scope_subjects(self) -> set[str]:
        if self._scope_subjects is None:
            options = self.options
            self._scope_subjects = {s.id for s in self.client.subjects(options.project)
                                    if not options.subject or options.subject in (s.id, s.label)}
        return self._scope_subjects

    def find_gone(self) -> None:
        for state in list(self.states.values()):
            if not state.exists or state.head is None:
                continue
            unseen = state.tree.unseen()
            if not unseen:
                continue
            candidates = list(iter_tracked_symlinks(state.path, state.head, unseen))
            urls = key_urls(state.path, {key for _, key in candidates})
            for path, key in candidates:
                if any(self.in_scope(url) for url in urls.get(key, [])):
                    state.gone.append(path)
                    self.counts.gone += 1
                    if self.options.remove_gone:
                        state.removals.append(path)
                        self.counts.removed += 1

    # ------------------------------------------------------------------ writing

    def commit(self) -> int:
        """Create new subdatasets, then one commit per dataset, deepest first."""
        new_datasets = sorted((s for s in self.states.values() if not s.exists),
                              key=lambda s: s.relpath.count("/"))
        for state in new_datasets:
            self.create_subdataset(state)
        commits = 0
        # make sure every dataset on the way from a changed one up to the top gets a commit
        for relpath in list(self.states):
            for ancestor in [""] + self.fmt.datasets(relpath)[:-1]:
                self.state_for(ancestor)
        ordered = sorted(self.states.values(), key=lambda s: -s.relpath.count("/")
                         if s.relpath else 1)
        pid = f"xnat-update-register-{id(self)}"
        total = sum(s.counts.added + s.counts.changed + s.counts.forced for s in ordered)
        log_progress(lgr.info, pid, "Registering %d files", total, label="Registering",
                     total=max(total, 1), unit=" files")
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            if done % 500 == 0:
                log_progress(lgr.info, pid, "Registered %d", done, update=done,
                             noninteractive_level=5)

        try:
            for state in ordered:
                gitlinks = self.child_gitlinks(state)
                extra = self.extra_files(state)
                if state.keys is None and not state.removals and not gitlinks and not extra:
                    continue
                uuid = remote_uuid(state.path, self.config.remote) or \
                    ensure_special_remote(state.path, self.config)
                if state.keys is not None:
                    register_keys(state.path, state.keys.sorted_pairs(), uuid,
                                  self.config.remote, progress)
                message = self.commit_message(state)
                new = commit_tree_changes(state.path, state.iter_changes(), state.removals,
                                          gitlinks, message, extra)
                if new:
                    commits += 1
                    state.head = new
                    if state.relpath:
                        self.state_for(self.parent_of(state.relpath)).subdatasets_updated += 1
            done = total  # progress counted distinct keys; files sharing content share one
        finally:
            log_progress(lgr.info, pid, "Registered %d files", done)
        return commits

    def commit_message(self, state: DatasetState) -> str:
        counts = state.counts
        where = f"project {self.config.project} at {self.config.url}"
        head = (f"[DATALAD] xnat-update: {counts.added} added, {counts.changed} changed, "
                f"{len(state.removals)} removed")
        if state.subdatasets_updated:
            head += f", {state.subdatasets_updated} subdatasets updated"
        body = [f"From XNAT {where} (instance '{self.config.name}', remote "
                f"{self.config.remote})."]
        if state.gone and not state.removals:
            body.append(f"{len(state.gone)} files are gone from the server and were kept.")
        if not state.exists or state.relpath and state.head is None:
            body.append("Subdataset created by xnat-update.")
        return head + "\n\n" + "\n".join(body) + "\n"

    def child_gitlinks(self, state: DatasetState) -> dict[str, str]:
        """Direct child datasets whose HEAD differs from what `state` records for them."""
        links = {}
        for child in self.states.values():
            if not child.relpath or self.parent_of(child.relpath) != state.relpath:
                continue
            if child.head is None:
                continue
            inner = child.relpath[len(state.relpath) + 1:] if state.relpath else child.relpath
            if state.tree.gitlinks.get(inner) != child.head:
                links[inner] = child.head
        return links

    def extra_files(self, state: DatasetState) -> dict[str, bytes]:
        """.gitmodules entries for children it does not record yet; configuration files for a
        subdataset that lacks them (new, or created by an update that was interrupted)."""
        extra: dict[str, bytes] = {}
        unregistered = []
        for child in self.states.values():
            if not child.relpath or self.parent_of(child.relpath) != state.relpath:
                continue
            inner = child.relpath[len(state.relpath) + 1:] if state.relpath else child.relpath
            if child.exists and inner not in state.tree.gitlinks:
                unregistered.append((inner, _dataset_id(child.path)))
        if unregistered:
            gitmodules = state.path / ".gitmodules"
            content = gitmodules.read_bytes() if gitmodules.exists() else b""
            extra[".gitmodules"] = _gitmodules_with(content, unregistered)
        if state.relpath and (state.created or read_config(state.path, self.config.name) is None):
            config_file = state.path / CONFIG_FILE
            base = config_file.read_bytes() if config_file.exists() else None
            extra[CONFIG_FILE] = config_file_content(base, self.config)
            extra[provider_path(self.config.name)] = provider_file_content(self.config)
        return extra

    def create_subdataset(self, state: DatasetState) -> None:
        """A new `//` subdataset: a DataLad dataset with the special remote already enabled."""
        from datalad.api import create

        results = create(path=str(state.path), result_renderer="disabled", result_xfm=None,
                         return_type="list", on_failure="ignore")
        failed = [r for r in results if r.get("status") not in ("ok", "notneeded")]
        if failed or not (state.path / ".git").exists():
            raise RegistrationError(f"could not create subdataset {state.relpath}: "
                                    + "; ".join(str(r.get("message")) for r in failed))
        ensure_special_remote(state.path, self.config)
        state.exists = True
        state.created = True
        _, state.head = current_branch(state.path)
        state.tree = TrackedTree.read(state.path, state.head)

    # ------------------------------------------------------------------ content

    def start_fetch(self) -> BackgroundFetch:
        """Start downloading before the listing is done: the top dataset's wanted files as
        they are found (a flat layout has all of them there), then those of the other
        datasets that exist already (end_stream). Downloads are Python's and the network's
        work, listing and committing mostly the server's and git's. Content placed this way
        is recorded after the commit (fetch), or removed if the run stops before (discard)."""
        stream = self._stream = WantedStream()
        top = self.states[""]

        def plan() -> Iterator[tuple[str, AnnexPlacer | ProcessPlacer, Iterator[Wanted]]]:
            if direct_fetch_refusal(top.path) is None:
                # enough files to choose between threads and helper processes (a setting
                # makes that choice: then the first file is enough)
                count = stream.wait_for(
                    MIN_FILES_FOR_PROCESSES if self.fetch_processes is None else 1)
                if count:
                    yield "", self._placer(top, count), stream.items(top.iter_wanted)
            for relpath, state in stream.later():
                if direct_fetch_refusal(state.path) is None:
                    yield relpath, self._placer(state, state.wanted.count), state.iter_wanted()

        return BackgroundFetch(plan(), on_stop=stream.cancel)

    def end_stream(self) -> None:
        """The listing is done: hand the downloads what they read next (the spools are
        complete; flushed here, since the download thread only reads them)."""
        assert self._stream is not None
        later = []
        for relpath, state in self.states.items():
            if state.wanted is not None:
                state.wanted.flush()
                if relpath and state.exists:
                    later.append((relpath, state))
        self._stream.close(later)

    def fetch(self, early: BackgroundFetch | None = None) -> Iterator[dict]:
        """Fetch the content of every wanted file, per dataset: placed directly into the annex
        (content.py) where git-annex would place it the same way, else `git annex get -J N`.
        `early` holds the downloads started before the commit; the rest start now."""
        jobs = self.options.jobs or 4
        total = sum(s.wanted.count for s in self.states.values() if s.wanted is not None)
        if not total:
            if early is not None:
                early.stop()
            return
        pid = f"xnat-update-get-{id(self)}"
        log_progress(lgr.info, pid, "Downloading %d files", total, label="Downloading",
                     total=total, unit=" files")
        done = 0

        def outcomes() -> Iterator[tuple[DatasetState, str, int, str | None]]:
            if early is not None:
                try:
                    for relpath, fetched in early.outcomes():
                        yield self.states[relpath], fetched.wanted.path, fetched.size, \
                            fetched.error
                finally:
                    early.stop()
                    early.record()
            for relpath, state in self.states.items():
                if state.wanted is None or not state.exists or \
                        early is not None and relpath in early.covered:
                    continue
                refusal = direct_fetch_refusal(state.path)
                if refusal is None:
                    placer = self._placer(state, state.wanted.count)
                    for fetched in placer.fetch_all(state.iter_wanted()):
                        yield state, fetched.wanted.path, fetched.size, fetched.error
                else:
                    lgr.debug("fetching with git annex get in %s: %s", state.path, refusal)
                    for path, size, error in self._fetch_with_annex(state, jobs):
                        yield state, path, size, error

        try:
            for state, path, size, error in outcomes():
                done += 1
                log_progress(lgr.info, pid, "Downloaded %d", done, update=done,
                             noninteractive_level=5)
                if error is None:
                    self.counts.fetched += 1
                    self.counts.bytes_fetched += size
                    continue
                self.counts.failed += 1
                yield get_status_dict(action=ACTION, path=str(state.path / path),
                                      type="file", status="error", logger=lgr,
                                      message="download failed: " + one_line(error))
        except RegistrationError as exc:
            self.counts.failed += 1
            yield self.result("error", str(exc))
        finally:
            log_progress(lgr.info, pid, "Downloaded %d files", done)

    def _placer(self, state: DatasetState, count: int) -> AnnexPlacer | ProcessPlacer:
        """Downloads of `count` (or more) files into one dataset: in helper processes when
        there are many (fetchproc.py), else in threads of this process."""
        from git_annex_remote_xnat.urls import rest_path

        jobs = self.options.jobs or 4
        processes = helper_processes(jobs, count, self.fetch_processes)
        if processes > 1:
            return ProcessPlacer(state.path, self.config.url, self.client.credential, processes,
                                 threads=-(-jobs // processes))

        def download(url: str, dest: Path, size: int, md5: str) -> None:
            self.client.download(rest_path(url, self.config.url), dest, size=size, md5=md5)

        return AnnexPlacer(state.path, download, jobs)

    def _fetch_with_annex(self, state: DatasetState,
                          jobs: int) -> Iterator[tuple[str, int, str | None]]:
        proc = subprocess.Popen(
            ["git", "-C", str(state.path), "annex", "get", f"-J{jobs}", "--batch", "--json",
             "--json-error-messages", "--from", self.config.remote],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            encoding="utf-8", errors="surrogateescape")

        def feed() -> None:
            assert proc.stdin
            try:
                for wanted in state.iter_wanted():
                    proc.stdin.write(wanted.path + "\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        assert proc.stdout
        for record in annex_json_results(proc.stdout):
            if record["success"]:
                key = record.get("key") or ""
                size = key.split("--", 1)[0].rsplit("-s", 1)[-1]
                yield record.get("file", ""), int(size) if size.isdigit() else 0, None
            else:
                yield (record.get("file", ""), 0,
                       " ".join(record.get("error-messages", [])) or "git annex get failed")
        writer.join()
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
        if proc.returncode != 0 and stderr.strip():
            lgr.debug("git annex get: %s", stderr.strip())


def _dataset_id(path: Path) -> str:
    proc = subprocess.run(["git", "config", "-f", str(path / CONFIG_FILE), "--get",
                           "datalad.dataset.id"], capture_output=True, text=True)
    return proc.stdout.strip()


def _gitmodules_with(content: bytes, entries: list[tuple[str, str]]) -> bytes:
    """.gitmodules content with a submodule entry per (path, datalad id), as DataLad writes it."""
    with tempfile.TemporaryDirectory(prefix="xnat-gitmodules-") as scratch:
        path = Path(scratch) / "gitmodules"
        path.write_bytes(content)
        for relpath, dataset_id in entries:
            for key, value in (("path", relpath), ("url", f"./{relpath}"),
                               ("datalad-id", dataset_id)):
                if key == "datalad-id" and not value:
                    continue
                subprocess.run(["git", "config", "-f", str(path), f"submodule.{relpath}.{key}",
                                value], check=True, capture_output=True)
        return path.read_bytes()
