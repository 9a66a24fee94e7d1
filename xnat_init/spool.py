"""Temporary line files that hold no file descriptor while they grow.

xnat-update spools what it plans per (sub)dataset to disk (changes, keys, wanted content) so its
memory stays flat. With a subdataset per subject that is thousands of spools at once; an open
file each would hit the common soft limit of 1024 descriptors ("Too many open files"). So lines
wait in memory and are appended with a short-lived open, all pending spools at once whenever
`PENDING_LINES` lines are waiting in total: at most one descriptor, and bounded memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator

PENDING_LINES = 20_000


class LineSpool:
    """Lines of text appended to a temporary file; read back in order; removed by `close`."""

    _dirty: set["LineSpool"] = set()  # spools with pending lines, shared by all
    _pending_total = 0

    def __init__(self, prefix: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix=prefix)
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
