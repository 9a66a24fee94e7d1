"""datalad xnat-update: register (and by default fetch) what the XNAT project holds.

The run, top to bottom: read the instance's configuration, log in once, take a lock
(`.git/xnat-update.lck`) so two updates of one dataset cannot interleave; then

1. plan (plan.py): stream the server's files (the client lists subjects and experiments once,
   then one `scans/ALL/files` per session, concurrently), render each file's path, compare it
   with what its dataset tracks; skip (and report) a file whose path is unsafe; stop before
   writing anything if two files render to one path, or a path is used by a file that is not
   from XNAT; key the files without an XNAT digest by downloading and hashing them once; find
   the files gone;
2. write (write.py): create the new `//` subdatasets, then one commit per dataset, deepest
   first, whose message summarises it;
3. fetch (fetch.py), unless --reckless fast: the content of every listed file, verified. These
   downloads start during step 1 and run beside step 2; what they placed is recorded after the
   commit, or removed again if the run stops before it.

An interrupted update leaves every dataset at its last complete commit; run it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datalad.distribution.dataset import datasetmethod, require_dataset
from datalad.interface.base import Interface, build_doc, eval_results
from datalad.interface.results import get_status_dict
from datalad.log import log_progress
from datalad.support.constraints import EnsureChoice, EnsureInt, EnsureNone, EnsureStr
from datalad.support.param import Parameter
from datalad.utils import bytes2human, ensure_list

from git_annex_remote_xnat.credentials import keep_typed_credential
from git_annex_remote_xnat.keys import key_size
from git_annex_remote_xnat.messages import one_line
from git_annex_remote_xnat.urls import XnatUrlError, file_url, normalize_base_url
from git_annex_remote_xnat.zipstream import archive_setting

from ..common import dataset_param, filter_params, log_in, warn_unmatched_collections
from ..config import CONFIG_FILE, DEFAULT_NAME, XnatConfig, read_config
from ..layout import LayoutError, PathFormat
from .datasets import Hierarchy, tree_above
from .fetch import Fetcher, hash_contents
from .gitannex import RegistrationError, current_branch, git_dir, terminations_interrupt
from .helpers import helper_processes
from git_annex_remote_xnat.client import Walk

from .plan import Counts, Plan, Planner, PlanOptions, Scope, UpdateAborted
from .recovery import Journal, recover
from .spool import use_spool_directory
from .write import Writer

lgr = logging.getLogger("datalad.xnat.update")
ACTION = "xnat_update"


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
        dataset=dataset_param("update"),
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
            doc="parallel listings and downloads (default, or 'auto': 8 listings, 4 downloads)",
            constraints=EnsureInt() | EnsureNone() | EnsureChoice("auto")),
        name=Parameter(
            args=("--name",), metavar="NAME",
            doc="the XNAT instance to update (as given to xnat-init --name)",
            constraints=EnsureStr() | EnsureNone()),
        remove_gone=Parameter(
            args=("--remove-gone", "--drop-gone"), action="store_true",
            doc="""remove files that are gone from the server (without this they are only
            reported)"""),
        dry_run=Parameter(
            args=("--dry-run",), action="store_true",
            doc="""list the server and report what the update would add, change, call gone
            (and remove, with --remove-gone) and fetch, per dataset, without writing anything:
            not the datasets, not git-annex's branch, no subdataset made or installed"""),
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
                 collection=None, credential=None, dry_run=False, scan_type=None,
                 quality=None):
        ds = require_dataset(dataset, check_installed=True, purpose="update from XNAT")
        if isinstance(jobs, int) and jobs < 1:
            yield get_status_dict(action=ACTION, ds=ds, status="error", logger=lgr,
                                  message=f"-J/--jobs {jobs}: give the number of parallel "
                                          "listings and downloads, 1 or more, or 'auto'")
            return
        name = name or DEFAULT_NAME
        config = read_config(ds.pathobj, name)
        if config is None:
            yield get_status_dict(action=ACTION, ds=ds, status="impossible", logger=lgr,
                                  message=f"XNAT instance '{name}' is not initialised in this "
                                          "dataset; run `datalad xnat-init URL -p PROJECT` first")
            return
        try:
            normalize_base_url(config.url)
        except XnatUrlError as exc:
            yield get_status_dict(action=ACTION, ds=ds, status="error", logger=lgr,
                                  message=f"datalad.xnat.{name}.url in {CONFIG_FILE}: {exc}; "
                                          "set it again with `datalad xnat-init -f URL`")
            return
        options = UpdateOptions(
            project=project or config.project,
            subjects=ensure_list(subject) or list(config.subjects),
            experiments=ensure_list(experiment) or list(config.experiments),
            collections=ensure_list(collection) or list(config.collections),
            scan_types=ensure_list(scan_type) or list(config.scan_types),
            qualities=ensure_list(quality) or list(config.qualities),
            credential=credential or config.credential, force=force,
            fast=reckless == "fast", ifexists=ifexists or "overwrite",
            jobs=None if jobs == "auto" else jobs, remove_gone=remove_gone, dry_run=dry_run)
        with terminations_interrupt():  # SIGTERM and SIGHUP get Ctrl-C's cleanup
            yield from Update(ds, config, options).run()


@dataclass
class UpdateOptions:
    project: str
    subjects: list[str]
    experiments: list[str]
    collections: list[str]
    scan_types: list[str]
    qualities: list[str]
    credential: str
    force: bool
    fast: bool
    ifexists: str
    jobs: int | None
    remove_gone: bool
    dry_run: bool = False


@dataclass
class Fetched:
    """What the fetch stage did."""

    files: int = 0
    bytes: int = 0
    failed: int = 0


def summary(counts: Counts, fetched: Fetched, failed: int,
            would: tuple[int, int] | None = None) -> str:
    """The one-line summary of an update; `would` (files, bytes to fetch) words a dry run's."""
    verb = "would be " if would is not None else ""
    parts = [f"{counts.added} {verb}added ({bytes2human(counts.bytes_added)})",
             f"{counts.changed} {verb}changed ({bytes2human(counts.bytes_changed)})",
             f"{counts.unchanged} unchanged"]
    if counts.skipped:
        parts.append(f"{counts.skipped} changed on the server but skipped")
    if counts.relabelled:
        parts.append(f"{counts.relabelled} with new XNAT metadata")
    if counts.moved:
        parts.append(f"{counts.moved} {verb}moved from labels renamed on the server")
    parts.append(f"{counts.gone} gone from the server" +
                 (f" ({counts.removed} {verb}removed)" if counts.removed else ""))
    if would is not None:
        parts.append(f"{would[0]} would be fetched ({bytes2human(would[1])})")
    if fetched.files:
        parts.append(f"{fetched.files} fetched ({bytes2human(fetched.bytes)})")
    parts.append(f"{failed} failed")
    if counts.no_digest:
        parts.append(f"{counts.no_digest} listed without XNAT digest")
    return ", ".join(parts)


class Update:
    """One run of xnat-update on one dataset hierarchy."""

    def __init__(self, ds, config: XnatConfig, options: UpdateOptions) -> None:
        self.ds = ds
        self.top = Path(ds.path)
        self.config = config
        self.options = options

    def result(self, status: str, message, **kwargs) -> dict:
        return get_status_dict(action=ACTION, ds=self.ds, status=status, message=message,
                               logger=lgr, **kwargs)

    def run(self) -> Iterator[dict]:
        try:
            fmt = PathFormat(self.config.pathfmt)
        except LayoutError as exc:
            yield self.result("error", f"pathfmt in {CONFIG_FILE}: {exc}")
            return
        try:
            current_branch(self.top)
        except RegistrationError as exc:
            yield self.result("impossible", str(exc))
            return
        top_of_tree = tree_above(self.ds, self.config)
        if top_of_tree is not None:
            yield self.result(
                "impossible", f"this dataset is a subdataset of the XNAT tree of {top_of_tree} "
                f"(instance '{self.config.name}'); run the update in that superdataset: "
                f"datalad -C {top_of_tree} xnat-update")
            return
        hierarchy = Hierarchy(self.ds, fmt, install=not self.options.dry_run)
        fetch_processes = hierarchy.view("").settings.fetch_processes
        try:
            helper_processes(1, 0, fetch_processes)
            archive_setting(hierarchy.view("").settings.fetch_archives)
        except ValueError as exc:
            yield self.result("error", str(exc))
            return
        logged_in = log_in(self.options.credential, self.config.url, str(self.top),
                           may_prompt=True, retries=3, pool_size=max(16, self.options.jobs or 0))
        if logged_in.client is None:
            yield self.result("error", logged_in.message)
            return
        client = logged_in.client
        if logged_in.prompted:
            warning = keep_typed_credential(logged_in.credential, self.config.url)
            if warning:
                lgr.warning("%s", warning)
        import fasteners

        lock_path = git_dir(self.top) / "xnat-update.lck"
        lock = fasteners.InterProcessLock(str(lock_path))
        if not lock.acquire(blocking=False):
            client.close()
            yield self.result("impossible", "another xnat-update of this dataset is running "
                              f"(lock {lock_path}); wait for it to finish")
            return
        from git_annex_remote_xnat.client import XnatError
        planner: Planner | None = None
        journal = Journal(lock_path.parent)
        spool_before = use_spool_directory(journal.scratch)
        try:
            if self.options.dry_run:
                journal.clean_scratch()
                if any(True for _ in journal.pending()):
                    yield self.result("notneeded", "an interrupted update left repairs that "
                                      "this dry run does not make; the next update makes them")
            else:
                for problem in recover(journal):  # what an interrupted update left
                    yield self.result("error", problem)
            fetcher = None if self.options.fast or self.options.dry_run else Fetcher(
                client, self.config.url, self.config.remote, hierarchy.view(""),
                self.options.jobs, fetch_processes, journal)
            planner = self.planner(hierarchy, fmt, fetcher)
            try:
                if fetcher is not None:
                    fetcher.start()
                try:
                    plan = self.plan(client, planner)
                except (UpdateAborted, XnatError) as exc:
                    if fetcher is not None:
                        fetcher.discard()
                    for message in getattr(exc, "messages", None) or [one_line(exc)]:
                        yield self.result("error", message)
                    return
                if fetcher is not None:
                    fetcher.listed(plan)
                yield from self.report_planned(plan, fmt)
                if self.options.dry_run:
                    yield from self.report_dry_run(plan, planner.scope)
                    return
                commits = Writer(hierarchy, self.config, journal).write(plan)
            except BaseException as exc:
                if fetcher is not None:
                    fetcher.discard()
                if not isinstance(exc, RegistrationError):
                    raise
                yield self.result("error", f"registration failed, datasets not updated: {exc}")
                return
            fetched = Fetched()
            if fetcher is not None:
                yield from self.fetch(fetcher, plan, hierarchy, fetched)
            yield self.report(plan, fetched, commits, planner.scope)
        finally:
            client.close()
            if planner is not None:
                planner.close()
            use_spool_directory(spool_before)
            journal.clean_scratch()
            lock.release()

    # ------------------------------------------------------------------------------- stages

    def planner(self, hierarchy: Hierarchy, fmt: PathFormat, fetcher: Fetcher | None) -> Planner:
        options = self.options
        scope = Scope(self.config.url, options.project, options.subjects, options.experiments,
                      options.collections, Walk(), options.scan_types, options.qualities)
        plan_options = PlanOptions(force=options.force, skip_changed=options.ifexists == "skip",
                                   fetch=not options.fast, remove_gone=options.remove_gone)
        # a dry run of the default mode counts the files it would fetch (keys without a
        # digest are planned as --reckless fast plans them: hashing them would download them)
        return Planner(hierarchy, fmt, plan_options, scope,
                       on_top_wanted=fetcher.want if fetcher is not None else None,
                       instance=self.config.name)

    def plan(self, client, planner: Planner) -> Plan:
        """Stage 1: list the server and plan; UpdateAborted or XnatError stop the run."""
        options = self.options
        pid = f"xnat-update-list-{id(self)}"
        log_progress(lgr.info, pid, "Listing files of XNAT project %s", options.project,
                     label="Listing XNAT", unit=" files")
        seen = 0
        try:
            for record in client.iter_files(options.project, subjects=options.subjects,
                                            experiments=options.experiments,
                                            resources=options.collections or None,
                                            jobs=options.jobs or 8, walk=planner.scope.walk):
                seen += 1
                if seen % 200 == 0:
                    log_progress(lgr.info, pid, "Listed %d files", seen, update=seen,
                                 noninteractive_level=5)
                planner.add(record, file_url(self.config.url, record))
        finally:
            log_progress(lgr.info, pid, "Listed %d files of XNAT project %s", seen,
                         options.project)
        planner.check()
        unkeyed = planner.unkeyed()
        if unkeyed and (options.fast or options.dry_run):
            # --reckless fast downloads nothing: VURL keys, held to their first copy's MD5
            for item in unkeyed:
                planner.keyed_by_url(item)
        elif unkeyed:
            pid = f"xnat-update-hash-{id(self)}"
            log_progress(lgr.info, pid, "Hashing %d files without XNAT digest", len(unkeyed),
                         label="Hashing", total=len(unkeyed), unit=" files")
            for done, (item, md5, size, error) in enumerate(
                    hash_contents(client, self.config.url, unkeyed, options.jobs), start=1):
                if error:
                    planner.unhashable(item, error)
                else:
                    planner.keyed(item, md5, size)
                log_progress(lgr.info, pid, "Hashed %d", done, update=done,
                             noninteractive_level=5)
            log_progress(lgr.info, pid, "Hashed files without XNAT digest")
        return planner.finish()

    def fetch(self, fetcher: Fetcher, plan: Plan, hierarchy: Hierarchy,
              fetched: Fetched) -> Iterator[dict]:
        """Stage 3: the content; one error result per file that failed, or one in all when
        the client gave the server up (it stopped answering: every later file failed at once)."""
        total = plan.wanted
        if not total:
            fetcher.early.stop()
            return
        pid = f"xnat-update-get-{id(self)}"
        log_progress(lgr.info, pid, "Downloading %d files", total, label="Downloading",
                     total=total, unit=" files")
        done = 0
        failures = []
        try:
            for outcome in fetcher.fetch(plan):
                done += 1
                log_progress(lgr.info, pid, "Downloaded %d", done, update=done,
                             noninteractive_level=5)
                if outcome.error is None:
                    fetched.files += 1
                    fetched.bytes += outcome.size
                    continue
                fetched.failed += 1
                failures.append(outcome)
        except RegistrationError as exc:
            fetched.failed += 1
            yield self.result("error", str(exc))
        finally:
            log_progress(lgr.info, pid, "Downloaded %d files", done)
        given_up = fetcher.given_up
        if failures and given_up is not None:
            yield self.result("error", f"{given_up}; {len(failures)} files were not fetched "
                              "(they are registered: run xnat-update again once it answers)")
            return
        for outcome in failures:
            path = hierarchy.view(outcome.relpath).path / outcome.path
            yield get_status_dict(action=ACTION, path=str(path), type="file",
                                  status="error", logger=lgr,
                                  message="download failed: " + one_line(outcome.error))

    # ------------------------------------------------------------------------------ reports

    def report_planned(self, plan: Plan, fmt: PathFormat) -> Iterator[dict]:
        for message in plan.failures:
            yield self.result("error", message)
        for label, folder in fmt.rewritten():
            yield get_status_dict(
                action=ACTION, path=str(self.top / folder), type="directory", status="ok",
                logger=lgr, message=f"XNAT's {label!r} is written as the folder {folder!r}: "
                "rewritten to be a safe folder name")
        for change_set in plan.change_sets.values():
            for path in change_set.gone:
                yield get_status_dict(
                    action=ACTION, path=str(change_set.view.path / path), type="file",
                    logger=lgr, status="ok" if self.options.remove_gone else "notneeded",
                    message=self._gone_words())
            for path in change_set.moved:
                yield get_status_dict(
                    action=ACTION, path=str(change_set.view.path / path), type="file",
                    logger=lgr, status="ok",
                    message=("would be removed" if self.options.dry_run else "removed")
                    + ": its subject, session or scan type was renamed on the server, which "
                    "lists the file at the new label")

    def _gone_words(self) -> str:
        if self.options.dry_run:
            return ("gone from the server (would be removed)" if self.options.remove_gone
                    else "gone from the server (would be kept; --remove-gone removes it)")
        return ("removed: gone from the server" if self.options.remove_gone
                else "gone from the server (kept; --remove-gone removes it)")

    def report_dry_run(self, plan: Plan, scope: Scope) -> Iterator[dict]:
        """One record per dataset the update would touch, then the summary: what it would add,
        change, call gone and fetch (files and bytes)."""
        fetching = []
        for change_set in plan.change_sets.values():
            files, size = self._to_fetch(change_set)
            fetching.append((files, size))
            counts = change_set.counts
            where = "would be created" if not change_set.view.exists else "exists"
            yield get_status_dict(
                action=ACTION, path=str(change_set.view.path), type="dataset", status="ok",
                logger=lgr, dry_run=True,
                message=f"dry run, {change_set.relpath or '.'} ({where}): "
                        + summary(counts, Fetched(), 0, would=(files, size)))
        total = plan.totals
        files = sum(f for f, _ in fetching)
        size = sum(b for _, b in fetching)
        unknown = warn_unmatched_collections(self.options.collections, scope.walk.resources)
        unselected = self.nothing_selected(scope, total)
        failed = len(plan.failures) + len(unselected)
        yield self.result(
            "error" if failed else "ok", f"{self.config.project} (dry run, nothing written): "
            + summary(total, Fetched(), failed, would=(files, size))
            + "".join(f"; {line}" for line in unselected),
            type="dataset", dry_run=True, xnat_project=self.config.project,
            xnat_url=self.config.url, added=total.added, changed=total.changed,
            unchanged=total.unchanged, skipped=total.skipped, gone=total.gone,
            removed=0, would_remove=total.removed, moved=0, would_move=total.moved,
            failed=failed, no_digest=total.no_digest,
            unknown_collections=unknown, bytes_added=total.bytes_added,
            bytes_changed=total.bytes_changed, fetched=0, bytes_fetched=0,
            would_fetch=files, bytes_to_fetch=size, commits=0)

    def _to_fetch(self, change_set) -> tuple[int, int]:
        """The files and bytes the default mode would download into one dataset."""
        if self.options.fast:
            return 0, 0
        keys = {entry.key for entry in change_set.entries.wanted_entries()}
        return len(keys), sum(key_size(key) or 0 for key in keys)

    def nothing_selected(self, scope: Scope, total: Counts) -> list[str]:
        """The --scan-type/--quality patterns that matched no scan: warned about, and errors
        when the selection as a whole took no file (it must not pass as "ok, 0 added")."""
        lines = scope.unmatched()
        if total.added + total.changed + total.unchanged + total.skipped:
            for line in lines:
                lgr.warning("%s", line)
            return []
        return lines

    def report(self, plan: Plan, fetched: Fetched, commits: int, scope: Scope) -> dict:
        total = plan.totals
        # the update did what it was asked (ok); a mistyped label must still not pass unseen
        unknown = warn_unmatched_collections(self.options.collections, scope.walk.resources)
        unselected = self.nothing_selected(scope, total)
        failed = len(plan.failures) + fetched.failed + len(unselected)
        # "ok" even when nothing changed: DataLad's renderer hides notneeded results, and the
        # summary is what users look for ("commits": 0 says nothing changed).
        return self.result(
            "error" if failed else "ok", f"{self.config.project}: "
            + summary(total, fetched, failed) + "".join(f"; {line}" for line in unselected),
            type="dataset", xnat_project=self.config.project, xnat_url=self.config.url,
            added=total.added, changed=total.changed, unchanged=total.unchanged,
            skipped=total.skipped, gone=total.gone, removed=total.removed, moved=total.moved,
            failed=failed,
            no_digest=total.no_digest, relabelled=total.relabelled,
            unknown_collections=unknown,
            bytes_added=total.bytes_added, bytes_changed=total.bytes_changed,
            fetched=fetched.files, bytes_fetched=fetched.bytes, commits=commits)
