"""Zip and tar archives of files, streamed as they are built (XNAT's `format=zip|tar|tar.gz`).

The builders yield bytes in pieces of about 64 KiB, so a large download never sits in memory
and the server can send it chunked without knowing its length.

`ZipStream` writes what XNAT's Java `ZipOutputStream` sends to a socket:

* DEFLATED entries (level 1..9): general-purpose flag bit 3, CRC-32 and sizes zero in the local
  header and given in a data descriptor (signed `PK\\x07\\x08`) after the data;
* STORED entries (level 0): CRC-32 and sizes in the local header and no data descriptor (Java
  refuses a STORED entry whose sizes it does not know first; a streaming reader needs them).
  The CRC is computed in a first pass over the blob, which is read again to send it;
* Zip64 for members over `zip64_over` bytes (2 GiB): 0xFFFFFFFF sizes in the local header with a
  Zip64 extra field (the real sizes for STORED, zeros for DEFLATED), 8-byte sizes in the data
  descriptor; Zip64 in the central directory and its end records where an offset, a size or
  the entry count needs it;
* flag bit 11 (UTF-8) on names that are not ASCII; times in DOS form (UTC, from 1980).

`corrupt=True` (the `corrupt_archives` fault) alters the first bytes of one member's data (the
second member with content, else the first) while its CRC-32 and sizes stay those of the true
content, as bytes altered in transit would be: a zip reader reports a CRC mismatch for that
member (for a DEFLATED member the content is altered before compression, so the deflate stream
itself stays valid and only the check fails); in a tar only an MD5 check sees it.
"""

from __future__ import annotations

import io
import struct
import tarfile
import time
import zlib
from typing import Iterator

from .model import FileEntry

ZIP64_OVER = 1 << 31        # members over this size get Zip64 headers (as before: 2 GiB)
PIECE = 1 << 16             # the size of the pieces the builders yield
_MAX32 = 0xFFFFFFFF
_CORRUPT_BYTES = 16         # how many leading bytes of the corrupted member are flipped

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")


def corrupt_target(names: list[tuple[str, FileEntry]]) -> int | None:
    """The index of the member the corrupt fault alters: the second with content, else the
    first; None when no member has content."""
    full = [i for i, (_n, e) in enumerate(names) if e.size > 0]
    if not full:
        return None
    return full[1] if len(full) > 1 else full[0]


def _altered(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with their first bytes flipped."""
    left = _CORRUPT_BYTES
    for c in chunks:
        if left > 0 and c:
            n = min(left, len(c))
            c = bytes(b ^ 0xFF for b in c[:n]) + c[n:]
            left -= n
        yield c


def _dos_time(mtime: float) -> tuple[int, int]:
    t = time.gmtime(max(mtime, 315532800))
    return ((t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
            ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday)


class ZipStream:
    """Streams a zip archive of (name, FileEntry) pairs as it is built (see the module)."""

    def __init__(self, names: list[tuple[str, FileEntry]], level: int, *,
                 corrupt: bool = False, zip64_over: int = ZIP64_OVER) -> None:
        self.names = names
        self.level = level
        self.corrupt = corrupt
        self.zip64_over = zip64_over

    def iter_bytes(self) -> Iterator[bytes]:
        stored = self.level <= 0
        level = min(9, self.level)
        target = corrupt_target(self.names) if self.corrupt else None
        central: list[bytes] = []
        out: list[bytes] = []
        pending = 0
        offset = 0                              # bytes of the archive yielded or pending

        def put(b: bytes) -> None:
            nonlocal pending, offset
            if b:
                out.append(b)
                pending += len(b)
                offset += len(b)

        def take() -> bytes:
            nonlocal pending
            b = b"".join(out)
            out.clear()
            pending = 0
            return b

        for i, (name, e) in enumerate(self.names):
            raw = name.encode("utf-8")
            flags = 0 if raw.isascii() else 0x800
            tm, dt = _dos_time(e.mtime)
            zip64 = e.size > self.zip64_over
            header_at = offset
            size = e.size
            if stored:
                crc = 0
                for c in e.blob.chunks():
                    crc = zlib.crc32(c, crc)
                extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
                csz = usz = _MAX32 if zip64 else size
                put(_LOCAL.pack(0x04034B50, 45 if zip64 else 10, flags, 0, tm, dt, crc,
                                csz, usz, len(raw), len(extra)) + raw + extra)
                chunks = e.blob.chunks()
                for c in (_altered(chunks) if i == target else chunks):
                    put(c)
                    if pending >= PIECE:
                        yield take()
                csize = size
                method = 0
            else:
                flags |= 0x08
                extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
                szs = _MAX32 if zip64 else 0
                put(_LOCAL.pack(0x04034B50, 45 if zip64 else 20, flags, 8, tm, dt, 0,
                                szs, szs, len(raw), len(extra)) + raw + extra)
                data_at = offset
                deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
                crc = 0
                for c in e.blob.chunks():
                    crc = zlib.crc32(c, crc)
                    if i == target:
                        c = next(_altered(iter([c])))   # the first chunk holds the bytes
                        target = -1                     # flipped once, in the first chunk
                    put(deflate.compress(c))
                    if pending >= PIECE:
                        yield take()
                put(deflate.flush())
                csize = offset - data_at
                if zip64:
                    put(_DESCRIPTOR64.pack(0x08074B50, crc, csize, size))
                else:
                    put(_DESCRIPTOR32.pack(0x08074B50, crc, csize, size))
                method = 8
            # the central directory entry: Zip64 fields for what does not fit in 32 bits
            fields = []
            cen_usize, cen_csize, cen_offset = size, csize, header_at
            if zip64 or size >= _MAX32:
                cen_usize = _MAX32
                fields.append(size)
            if zip64 or csize >= _MAX32:
                cen_csize = _MAX32
                fields.append(csize)
            if header_at >= _MAX32:
                cen_offset = _MAX32
                fields.append(header_at)
            cextra = struct.pack("<HH", 1, 8 * len(fields)) + struct.pack(
                f"<{len(fields)}Q", *fields) if fields else b""
            version = 45 if fields else (20 if method == 8 else 10)
            central.append(_CENTRAL.pack(0x02014B50, version, version, flags, method, tm, dt,
                                         crc, cen_csize, cen_usize, len(raw), len(cextra), 0,
                                         0, 0, 0, cen_offset) + raw + cextra)
            if pending >= PIECE:
                yield take()
        cd_at = offset
        for rec in central:
            put(rec)
            if pending >= PIECE:
                yield take()
        cd_size = offset - cd_at
        count = len(central)
        if count >= 0xFFFF or cd_at >= _MAX32 or cd_size >= _MAX32:
            end64_at = offset
            put(_ZIP64_END.pack(0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_at))
            put(_ZIP64_LOCATOR.pack(0x07064B50, 0, end64_at, 1))
        put(_END.pack(0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                      min(cd_size, _MAX32), min(cd_at, _MAX32), 0))
        yield take()


class TarStream:
    """Streams a tar (optionally gzipped) archive of (name, FileEntry) pairs; `corrupt`: one
    member's first bytes altered (see the module)."""

    def __init__(self, names: list[tuple[str, FileEntry]], gz: bool, *,
                 corrupt: bool = False) -> None:
        self.names = names
        self.gz = gz
        self.corrupt = corrupt

    def iter_bytes(self) -> Iterator[bytes]:
        buf = _Collector()
        target = corrupt_target(self.names) if self.corrupt else None
        with tarfile.open(fileobj=buf, mode="w|gz" if self.gz else "w|") as tf:
            for i, (name, e) in enumerate(self.names):
                ti = tarfile.TarInfo(name)
                ti.size = e.size
                ti.mtime = int(e.mtime)
                ti.mode = 0o644
                tf.addfile(ti, _BlobReader(e.blob, altered=i == target))
                if buf.pending() >= PIECE:
                    yield buf.take()
        if buf.pending():
            yield buf.take()


class _BlobReader:
    def __init__(self, blob, altered: bool = False) -> None:
        self.blob = blob
        self.pos = 0
        self.altered = altered

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.blob.size - self.pos
        out = self.blob.read(self.pos, n)
        if self.altered and self.pos < _CORRUPT_BYTES and out:
            k = min(len(out), _CORRUPT_BYTES - self.pos)
            out = bytes(b ^ 0xFF for b in out[:k]) + out[k:]
        self.pos += len(out)
        return out


class _Collector(io.RawIOBase):
    """A write-only, non-seekable sink that tarfile writes into."""

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
