"""The write stage: new subdatasets, then one commit per dataset, deepest first.

It carries out a Plan and decides nothing: each ChangeSet's registrations become keys,
xnat: URLs and metadata on the dataset's git-annex branch (one pass, gitannex.py) and symlinks
in one commit on its branch; the instance's tables go into the top dataset's commit; a
subdataset's new commit is recorded in its superdataset's commit; a new subdataset gets the
special remote and the instance's configuration, so `datalad get -r` works in a fresh clone.
A dataset whose commit fails is left at its last commit.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from datalad.log import log_progress

from ..config import (
    CONFIG_FILE,
    XnatConfig,
    config_file_content,
    dataset_id,
    provider_file_content,
    provider_path,
    read_config,
)
from ..specialremote import ensure_special_remote, remote_uuid
from .datasets import Hierarchy
from .gitannex import RegistrationError, commit_tree_changes, register_keys
from .plan import ChangeSet, Plan
from .recovery import Journal, pause_point
from .spool import spool_directory

lgr = logging.getLogger("datalad.xnat.update")


class Writer:
    """Writes one Plan into the datasets of one hierarchy."""

    def __init__(self, hierarchy: Hierarchy, config: XnatConfig,
                 journal: Journal | None = None) -> None:
        self.hierarchy = hierarchy
        self.config = config
        self.journal = journal
        self._subdatasets_updated: dict[str, int] = {}
        self._plan: Plan | None = None

    def write(self, plan: Plan) -> int:
        """Create the planned subdatasets that do not exist, then commit; returns the number
        of commits made."""
        pause_point("write")
        self._plan = plan
        change_sets = plan.change_sets
        for change_set in sorted(change_sets.values(), key=lambda c: c.relpath.count("/")):
            if not change_set.view.exists:
                self._create_subdataset(change_set)
        ordered = sorted(change_sets.values(),
                         key=lambda c: -c.relpath.count("/") if c.relpath else 1)
        total = sum(c.entries.registered for c in ordered)
        pid = f"xnat-update-register-{id(self)}"
        log_progress(lgr.info, pid, "Registering %d files", total, label="Registering",
                     total=max(total, 1), unit=" files")
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            if done % 500 == 0:
                log_progress(lgr.info, pid, "Registered %d", done, update=done,
                             noninteractive_level=5)

        commits = 0
        try:
            for change_set in ordered:
                commits += self._commit(change_set, progress)
            done = total  # progress counted distinct keys; files sharing content share one
        finally:
            log_progress(lgr.info, pid, "Registered %d files", done)
        return commits

    def _commit(self, change_set: ChangeSet, progress: Callable[[int], None]) -> int:
        view = change_set.view
        gitlinks = self._child_gitlinks(change_set)
        extra = self._extra_files(change_set)
        annotations = change_set.annotations
        if not change_set.entries.registered and not change_set.removals and not gitlinks \
                and not extra and not annotations.pending:
            return 0
        uuid = remote_uuid(view.path, self.config.remote) or \
            ensure_special_remote(view.path, self.config)
        if change_set.entries.registered or annotations.pending:
            assert self._plan is not None
            register_keys(view.path, change_set.entries.sorted_keys(), uuid, self.config.remote,
                          progress, method=view.settings.register_method,
                          metadata=annotations.changes(self._plan.contexts))
        new = commit_tree_changes(view.path, change_set.entries.registrations(),
                                  change_set.removals, gitlinks, self._message(change_set), extra,
                                  journal=self.journal)
        if not new:
            return 0
        view.head = new
        if view.relpath:
            parent = self.hierarchy.parent_of(view.relpath)
            self._subdatasets_updated[parent] = self._subdatasets_updated.get(parent, 0) + 1
        return 1

    def _message(self, change_set: ChangeSet) -> str:
        counts, view = change_set.counts, change_set.view
        head = (f"[DATALAD] xnat-update: {counts.added} added, {counts.changed} changed, "
                f"{len(change_set.removals) - counts.moved} removed")
        if counts.moved:
            head += f", {counts.moved} moved from renamed labels"
        # the top dataset's commit (with the instance's tables) speaks for the whole update
        relabelled = counts.relabelled if view.relpath or self._plan is None else \
            self._plan.totals.relabelled
        if relabelled:
            head += f", XNAT metadata of {relabelled} files updated"
        updated = self._subdatasets_updated.get(view.relpath)
        if updated:
            head += f", {updated} subdatasets updated"
        body = [f"From XNAT project {self.config.project} at {self.config.url} (instance "
                f"'{self.config.name}', remote {self.config.remote})."]
        if change_set.gone and not change_set.remove_gone:
            body.append(f"{len(change_set.gone)} files are gone from the server and were kept.")
        if view.created:
            body.append("Subdataset created by xnat-update.")
        return head + "\n\n" + "\n".join(body) + "\n"

    def _child_gitlinks(self, change_set: ChangeSet) -> dict[str, str]:
        """Direct subdatasets whose HEAD differs from what `change_set`'s dataset records."""
        recorded = change_set.view.tree.gitlinks
        links = {}
        for child in self.hierarchy.children(change_set.relpath):
            inner = self.hierarchy.inner_path(child.relpath)
            if child.head is not None and recorded.get(inner) != child.head:
                links[inner] = child.head
        return links

    def _extra_files(self, change_set: ChangeSet) -> dict[str, bytes]:
        """.gitmodules entries for subdatasets it does not record yet; configuration files for
        a subdataset that lacks them (new, or created by an update that was interrupted); the
        instance's tables that changed, for the top dataset."""
        view = change_set.view
        extra: dict[str, bytes] = {}
        if not view.relpath and self._plan is not None:
            extra.update(self._plan.tables)
        unregistered = [(self.hierarchy.inner_path(child.relpath), dataset_id(child.path))
                        for child in self.hierarchy.children(view.relpath)
                        if child.exists
                        and self.hierarchy.inner_path(child.relpath) not in view.tree.gitlinks]
        if unregistered:
            gitmodules = view.path / ".gitmodules"
            content = gitmodules.read_bytes() if gitmodules.exists() else b""
            extra[".gitmodules"] = _gitmodules_with(content, unregistered)
        if view.relpath and (view.created or read_config(view.path, self.config.name) is None):
            config_file = view.path / CONFIG_FILE
            base = config_file.read_bytes() if config_file.exists() else None
            extra[CONFIG_FILE] = config_file_content(base, self.config)
            extra[provider_path(self.config.name)] = provider_file_content(self.config)
        return extra

    def _create_subdataset(self, change_set: ChangeSet) -> None:
        """A new `//` subdataset: a DataLad dataset with the special remote already enabled.

        It is made complete in the journal's scratch folder and then renamed into place, so
        an interrupted creation leaves no half-made dataset where the next run would take it
        for a real one (a scratch folder is emptied by the next run). A folder already there
        with files in it gets the dataset in place, as before."""
        from datalad.api import create

        view = change_set.view
        final = view.path
        in_place = self.journal is None or (final.is_dir() and any(final.iterdir()))
        if in_place:
            path = final
        else:
            self.journal.scratch.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix="xnat-subdataset-", dir=self.journal.scratch))
            path.rmdir()
        results = create(path=str(path), description=_location(final),
                         result_renderer="disabled", result_xfm=None, return_type="list",
                         on_failure="ignore")
        failed = [r for r in results if r.get("status") not in ("ok", "notneeded")]
        if failed or not (path / ".git").exists():
            raise RegistrationError(f"could not create subdataset {view.relpath}: "
                                    + "; ".join(str(r.get("message")) for r in failed))
        pause_point("subdataset")
        ensure_special_remote(path, self.config)
        if not in_place:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_dir():
                final.rmdir()  # empty
            os.rename(path, final)
        view.exists = True
        view.created = True
        view.read()


def _location(path: Path) -> str:
    """git-annex's own description of a repository (user@host:path), for the final path."""
    return f"{getpass.getuser()}@{socket.gethostname()}:{path}"


def _gitmodules_with(content: bytes, entries: list[tuple[str, str]]) -> bytes:
    """.gitmodules content with a submodule entry per (path, datalad id), as DataLad writes it."""
    with tempfile.TemporaryDirectory(prefix="xnat-gitmodules-", dir=spool_directory()) as scratch:
        path = Path(scratch) / "gitmodules"
        path.write_bytes(content)
        for relpath, ident in entries:
            for key, value in (("path", relpath), ("url", f"./{relpath}"),
                               ("datalad-id", ident)):
                if key == "datalad-id" and not value:
                    continue
                subprocess.run(["git", "config", "-f", str(path), f"submodule.{relpath}.{key}",
                                value], check=True, capture_output=True)
        return path.read_bytes()
