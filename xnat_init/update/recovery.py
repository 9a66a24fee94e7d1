"""What an interrupted xnat-update leaves behind, and how the next run repairs it.

Every step of an update that is not atomic by itself announces itself with a marker in the top
dataset's `.git/xnat-update/markers/` before it starts and removes it when it is done. The next
run (it holds the update lock, so no other update is running) repairs what a marker still there
names before it plans anything:

* `content`: content was being placed straight into a dataset's annex (placement.py) and may
  not be recorded yet. The annex and the location log are reconciled in both directions: keys
  whose content is there are recorded as here, keys recorded as here without content as gone.
* `worktree`: a dataset's branch was being moved to its new commit (gitannex.
  commit_tree_changes). A stale `index.lock` is removed, the files `git read-tree` had already
  moved are taken as moved, and the move is finished; if a local change is in the way now, the
  branch is put back to its old commit and the run reports it.

Everything temporary lives below `.git/xnat-update/` too (the spools of the plan, scratch
folders, subdatasets being created), so the next run finds and removes what a killed run
could not. A run that was not interrupted finds no marker: the check is one directory listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

PAUSE_VARIABLE = "XNAT_UPDATE_TEST_PAUSE"
STATE_DIR = "xnat-update"


def pause_point(name: str) -> None:
    """A moment where the interruption tests stop the update (never set outside them).

    With XNAT_UPDATE_TEST_PAUSE=name:file, the update writes its process ID to `file` on
    reaching the point named `name` and waits while `file` exists; a test then interrupts it
    there in a chosen way. Unset, this is one dictionary lookup.
    """
    wanted = os.environ.get(PAUSE_VARIABLE)
    if not wanted:
        return
    point, _, flag = wanted.partition(":")
    if point != name or not flag:
        return
    os.environ.pop(PAUSE_VARIABLE, None)  # once per run, and not for the child processes
    with open(flag, "w") as out:
        out.write(str(os.getpid()))
    while os.path.exists(flag):
        time.sleep(0.01)


class Journal:
    """The markers and temporary files of the updates of one dataset hierarchy, in its top
    dataset's `.git/xnat-update/`."""

    def __init__(self, git_dir: Path) -> None:
        self.root = git_dir / STATE_DIR
        self.markers = self.root / "markers"
        self.scratch = self.root / "tmp"

    def begin(self, kind: str, repo: Path, **details: str | None) -> Path:
        """Write the marker of a step of `kind` in `repo` (atomically: complete or absent)."""
        self.markers.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(f"{kind}\0{repo}".encode("utf-8", "surrogateescape")).hexdigest()
        marker = self.markers / f"{kind}-{name[:16]}"
        if marker.exists():
            return marker
        partial = marker.with_suffix(".partial")
        partial.write_text(json.dumps(dict(details, kind=kind, repo=str(repo))))
        os.replace(partial, marker)
        return marker

    def end(self, marker: Path | None) -> None:
        if marker is not None:
            marker.unlink(missing_ok=True)

    def pending(self) -> Iterator[tuple[Path, dict]]:
        """The markers a previous run left, oldest first."""
        try:
            found = sorted(self.markers.iterdir(), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:
            return
        for marker in found:
            if marker.suffix == ".partial":
                marker.unlink(missing_ok=True)
                continue
            try:
                yield marker, json.loads(marker.read_text())
            except (OSError, ValueError):
                marker.unlink(missing_ok=True)

    def clean_scratch(self) -> Path:
        """Remove what a previous run left in the scratch folder; return it, empty."""
        if self.scratch.exists():
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch


def recover(journal: Journal) -> list[str]:
    """Repair what interrupted updates left (see the module docstring); returns one message
    per repair that could not be made (the run reports them and goes on)."""
    from .gitannex import RegistrationError, finish_worktree_move, reconcile_content

    journal.clean_scratch()
    problems = []
    for marker, details in journal.pending():
        repo = Path(details["repo"])
        try:
            if not (repo / ".git").exists():
                pass  # the dataset is gone (a subdataset whose creation was undone)
            elif details["kind"] == "worktree":
                finish_worktree_move(repo, details["ref"], details.get("old"), details["new"])
            elif details["kind"] == "content":
                reconcile_content(repo, details["uuid"])
                _remove_fetch_scratch(repo)
        except RegistrationError as exc:
            problems.append(f"repairing the interrupted update of {repo}: {exc}")
            continue
        journal.end(marker)
    return problems


def _remove_fetch_scratch(repo: Path) -> None:
    tmp = repo / ".git" / "annex" / "tmp"
    for folder in tmp.glob("xnat-fetch-*") if tmp.exists() else ():
        shutil.rmtree(folder, ignore_errors=True)
