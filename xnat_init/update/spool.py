"""The plan's spools: temporary line files that hold no file descriptor while they grow.

xnat-update spools what it plans per (sub)dataset to disk (changes, keys, wanted content) so its
memory stays flat. With a subdataset per subject that is thousands of spools at once; an open
file each would hit the common soft limit of 1024 descriptors ("Too many open files"). So lines
wait in memory and are appended with a short-lived open, all pending spools at once whenever
`PENDING_LINES` lines are waiting in total: at most one descriptor, and bounded memory.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator

from git_annex_remote_xnat.keys import hashdir_lower

PENDING_LINES = 20_000
_directory: list[str | None] = [None]


def spool_directory() -> str | None:
    """Where the update's temporary files go (None: the system's temporary folder)."""
    return _directory[0]


def use_spool_directory(path: str | os.PathLike | None) -> str | None:
    """Put the temporary files of the running update into `path` (xnat-update: a folder in
    the dataset's .git, which the next run empties, so that not even a killed run leaves
    files behind in TMPDIR); returns the previous setting."""
    previous = _directory[0]
    _directory[0] = None if path is None else os.fspath(path)
    return previous


class LineSpool:
    """Lines of text appended to a temporary file; read back in order; removed by `close`."""

    _dirty: set["LineSpool"] = set()  # spools with pending lines, shared by all
    _pending_total = 0

    def __init__(self, prefix: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix=prefix, dir=spool_directory())
        os.close(fd)
        self._pending: list[str] = []
        self.count = 0

    def write(self, line: str) -> None:
        """Append `line` (ending in a newline)."""
        self._pending.append(line)
        self.count += 1
        LineSpool._dirty.add(self)
        LineSpool._pending_total += 1
        if LineSpool._pending_total >= PENDING_LINES:
            LineSpool.flush_all()

    def flush(self) -> None:
        if not self._pending:
            return
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as out:
            out.writelines(self._pending)
        LineSpool._pending_total -= len(self._pending)
        self._pending.clear()
        LineSpool._dirty.discard(self)

    @classmethod
    def flush_all(cls) -> None:
        for spool in list(cls._dirty):
            spool.flush()

    def __iter__(self) -> Iterator[str]:
        self.flush()
        with open(self.path, encoding="utf-8", errors="surrogateescape") as lines:
            yield from lines

    def close(self) -> None:
        LineSpool._pending_total -= len(self._pending)
        self._pending.clear()
        LineSpool._dirty.discard(self)
        try:
            os.unlink(self.path)
        except OSError:
            pass


@dataclass(frozen=True)
class Entry:
    """One file the update writes or fetches: its path in its dataset, its key, its xnat: URL."""

    path: str
    key: str
    url: str


class EntrySpool:
    """The one spool of a dataset's plan: every file to register, and every file whose content
    is wanted, one line each (`R` registered and wanted, `r` registered only, `W` wanted only).

    One line per file, not one per purpose: registration reads the `R`/`r` lines sorted by the
    key's folder on git-annex's branch (`sort`, outside Python's memory), the commit and the
    downloads read them in the order they were written.
    """

    def __init__(self) -> None:
        self._spool = LineSpool("xnat-plan-")
        self.registered = 0
        self.wanted = 0

    def add(self, entry: Entry, *, register: bool, want: bool) -> None:
        if not (register or want):
            return
        flag = ("R" if want else "r") if register else "W"
        self.registered += register
        self.wanted += want
        self._spool.write(f"{flag}\t{hashdir_lower(entry.key)}{entry.key}\t{entry.url}\t"
                          f"{entry.path}\n")

    def _entries(self, flags: str) -> Iterator[Entry]:
        for line in self._spool:
            flag, located, url, path = line.rstrip("\n").split("\t", 3)
            if flag in flags:
                yield Entry(path, located[_HASHDIR_LENGTH:], url)

    def registrations(self) -> Iterator[Entry]:
        """The files to register, in the order they were planned."""
        return self._entries("Rr") if self.registered else iter(())

    def wanted_entries(self) -> Iterator[Entry]:
        """The files whose content is wanted, in the order they were planned."""
        return self._entries("RW") if self.wanted else iter(())

    def flush(self) -> None:
        self._spool.flush()

    def sorted_keys(self) -> Iterator[tuple[str, str]]:
        """(key, url) of the files to register, grouped by key, in the order of the keys'
        folders on git-annex's branch (so each fast-import chunk touches a narrow range)."""
        if not self.registered:
            return
        self._spool.flush()
        for line in sorted_lines(self._spool.path, 2):
            flag, located, url, _ = line.rstrip("\n").split("\t", 3)
            if flag in "Rr":
                yield located[_HASHDIR_LENGTH:], url

    def close(self) -> None:
        self._spool.close()


_HASHDIR_LENGTH = len("abc/def/")


def sorted_lines(path: str, column: int) -> Iterator[str]:
    """The lines of a spool file sorted (stably, bytewise) by their tab-separated `column`
    (1 is the first), by `sort` outside Python's memory."""
    env = dict(os.environ, LC_ALL="C")
    # -S: sort's own buffer, else it holds the whole spool in memory
    scratch = ["-T", spool_directory()] if spool_directory() else []
    proc = subprocess.Popen(["sort", "-S", "32M", *scratch, "-t", "\t", f"-k{column},{column}",
                             "-s", path],
                            stdout=subprocess.PIPE, env=env, text=True,
                            encoding="utf-8", errors="surrogateescape")
    assert proc.stdout
    try:
        yield from proc.stdout
    finally:
        proc.stdout.close()
        proc.wait()
