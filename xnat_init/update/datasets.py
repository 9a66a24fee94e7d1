"""The datasets an update works in: the top dataset and the `//` subdatasets below it.

A view says what a dataset is before the update writes anything: whether it exists, its HEAD,
what HEAD tracks (gitlinks included) and its settings. The plan compares the server with these
views; the write stage creates the missing datasets and commits.

One thing happens here that is not just reading: a subdataset the superdataset records but
that is not installed (a fresh clone) is installed, without content, the first time the plan
needs it. Its files cannot be compared otherwise, and registering them anew into an empty
folder would fork its history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..config import DatasetSettings, XnatConfig, read_config
from ..layout import PathFormat
from .gitannex import TrackedTree, current_branch


@dataclass
class DatasetView:
    """One (sub)dataset as the update found it."""

    relpath: str                 # from the top dataset; '' for the top dataset
    path: Path
    exists: bool
    head: str | None = None
    tree: TrackedTree = field(default_factory=TrackedTree)
    created: bool = False        # made by this update (write stage)
    _settings: DatasetSettings | None = None

    @property
    def settings(self) -> DatasetSettings:
        """The dataset's datalad.xnat.* and git-annex settings, read once."""
        if self._settings is None:
            self._settings = DatasetSettings.read(self.path)
        return self._settings

    def read(self) -> None:
        """(Re)read HEAD and what it tracks, and forget the settings (after a creation)."""
        _, self.head = current_branch(self.path)
        self.tree = TrackedTree.read(self.path, self.head)
        self._settings = None


class Hierarchy:
    """The views of the top dataset and of every subdataset the update has looked at."""

    def __init__(self, ds, fmt: PathFormat, install: bool = True) -> None:
        """`install` False (a dry run): a registered subdataset that is not installed is
        looked at as absent, not installed."""
        self._ds = ds
        self._install = install
        self._fmt = fmt
        self.top = Path(ds.path)
        self._views: dict[str, DatasetView] = {}

    def view(self, relpath: str) -> DatasetView:
        """The view of the dataset at `relpath` (its superdatasets are looked at first)."""
        found = self._views.get(relpath)
        if found is not None:
            return found
        path = self.top / relpath if relpath else self.top
        exists = relpath == "" or (path / ".git").exists()
        if relpath:
            parent = self.view(self.parent_of(relpath))
            if not exists and self._install and self.inner_path(relpath) in parent.tree.gitlinks:
                self._ds.get(str(path), get_data=False, result_renderer="disabled",
                             result_xfm=None, on_failure="ignore", return_type="list")
                exists = (path / ".git").exists()
        view = DatasetView(relpath, path, exists)
        if exists:
            view.read()
        self._views[relpath] = view
        return view

    def installed(self, relpath: str) -> bool:
        """Whether the dataset at `relpath` is there to look at without installing it."""
        found = self._views.get(relpath)
        if found is not None:
            return found.exists
        return relpath == "" or (self.top / relpath / ".git").exists()

    def __iter__(self) -> Iterator[DatasetView]:
        return iter(list(self._views.values()))

    def parent_of(self, relpath: str) -> str:
        chain = self._fmt.datasets(relpath)
        return chain[-2] if len(chain) > 1 else ""

    def ancestors(self, relpath: str) -> list[str]:
        """The datasets above `relpath`, from the top down ('' first)."""
        return [""] + self._fmt.datasets(relpath)[:-1] if relpath else []

    def inner_path(self, relpath: str) -> str:
        """`relpath` relative to its superdataset."""
        parent = self.parent_of(relpath)
        return relpath[len(parent) + 1:] if parent else relpath

    def children(self, relpath: str) -> list[DatasetView]:
        """The subdatasets looked at whose superdataset is `relpath`."""
        return [view for view in self._views.values()
                if view.relpath and self.parent_of(view.relpath) == relpath]


def tree_above(ds, config: XnatConfig) -> Path | None:
    """The superdataset whose update made `ds` one of its `//` subdatasets (the same instance
    of the same server and project, with a pathfmt that has subdatasets), or None.

    Such a subdataset carries the instance's configuration so that clones can fetch; an update
    run in it would lay the whole project out inside it, so the update is run from the top.
    """
    superdataset = ds.get_superdataset(datalad_only=True)
    while superdataset is not None:
        above = read_config(Path(superdataset.path), config.name)
        if above is not None and (above.url, above.project) == (config.url, config.project) \
                and "//" in above.pathfmt:
            return Path(superdataset.path)
        superdataset = superdataset.get_superdataset(datalad_only=True)
    return None
