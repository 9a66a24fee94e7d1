"""Zip and tar archives of files, streamed as they are built (XNAT's `format=zip|tar|tar.gz`).

The builders yield bytes in pieces of about 64 KiB, so a large download never sits in memory
and the server can send it chunked without knowing its length.
"""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from typing import Iterator

from .model import FileEntry


class ZipStream:
    """Streams a zip archive of (name, FileEntry) pairs as it is built."""

    def __init__(self, names: list[tuple[str, FileEntry]], level: int) -> None:
        self.names = names
        self.level = level

    def iter_bytes(self) -> Iterator[bytes]:
        buf = _Collector()
        method = zipfile.ZIP_STORED if self.level <= 0 else zipfile.ZIP_DEFLATED
        kw = {} if method == zipfile.ZIP_STORED else {"compresslevel": min(9, self.level)}
        with zipfile.ZipFile(buf, "w", compression=method, **kw) as zf:
            for name, e in self.names:
                zi = zipfile.ZipInfo(name, date_time=time.gmtime(max(e.mtime, 315532800))[:6])
                zi.compress_type = method
                zi.file_size = e.size
                with zf.open(zi, "w", force_zip64=e.size > (1 << 31)) as f:
                    for c in e.blob.chunks():
                        f.write(c)
                        if buf.pending() >= 1 << 16:
                            yield buf.take()
                if buf.pending():
                    yield buf.take()
        if buf.pending():
            yield buf.take()


class TarStream:
    """Streams a tar (optionally gzipped) archive of (name, FileEntry) pairs."""

    def __init__(self, names: list[tuple[str, FileEntry]], gz: bool) -> None:
        self.names = names
        self.gz = gz

    def iter_bytes(self) -> Iterator[bytes]:
        buf = _Collector()
        with tarfile.open(fileobj=buf, mode="w|gz" if self.gz else "w|") as tf:
            for name, e in self.names:
                ti = tarfile.TarInfo(name)
                ti.size = e.size
                ti.mtime = int(e.mtime)
                ti.mode = 0o644
                tf.addfile(ti, _BlobReader(e.blob))
                if buf.pending() >= 1 << 16:
                    yield buf.take()
        if buf.pending():
            yield buf.take()


class _BlobReader:
    def __init__(self, blob) -> None:
        self.blob = blob
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.blob.size - self.pos
        out = self.blob.read(self.pos, n)
        self.pos += len(out)
        return out


class _Collector(io.RawIOBase):
    """A write-only, non-seekable sink that zipfile writes into."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        self._parts.append(b)
        self._n += len(b)
        return len(b)

    def pending(self) -> int:
        return self._n

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts = []
        self._n = 0
        return out

    def flush(self) -> None:
        pass

