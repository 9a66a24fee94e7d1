"""Deterministic file content, produced on demand.

A file's bytes are a short header that names the file (so every file is distinct) followed by
filler read from one pseudo-random block of 1 MiB generated from the seed. Nothing is held per
file: a blob is (identity, size), and its bytes are sliced from the shared block when read.
"""

from __future__ import annotations

import hashlib
import random
import zlib

BLOCK_SIZE = 1 << 20
CHUNK = 1 << 16


class Filler:
    """The shared pseudo-random block for one seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"xnat-emulator-filler-{seed}")
        self.block = rng.randbytes(BLOCK_SIZE)
        # doubled so any window of up to BLOCK_SIZE bytes is one slice
        self._double = self.block + self.block

    def window(self, offset: int, length: int) -> bytes:
        offset %= BLOCK_SIZE
        out = []
        while length > 0:
            n = min(length, BLOCK_SIZE)
            out.append(self._double[offset:offset + n])
            length -= n
            offset = (offset + n) % BLOCK_SIZE
        return b"".join(out)


def _header_for(ident: str, name: str) -> bytes:
    """A plausible magic header by extension, then the identity (newline-terminated)."""
    lower = name.lower()
    tag = ident.encode("utf-8") + b"\n"
    if lower.endswith(".dcm") or lower.endswith(".ima"):
        return b"\0" * 128 + b"DICM" + tag
    if lower.endswith(".gif"):
        return b"GIF89a" + tag
    if lower.endswith(".gz"):
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + tag
    if lower.endswith(".png"):
        return b"\x89PNG\r\n\x1a\n" + tag
    return b"XNAT-EMULATOR " + tag


class Blob:
    """Content of one file. Subclasses: GeneratedBlob, BytesBlob."""

    size: int

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        raise NotImplementedError

    def chunks(self, chunk: int = CHUNK):
        pos = 0
        while pos < self.size:
            n = min(chunk, self.size - pos)
            yield self.read(pos, n)
            pos += n

    def md5(self) -> str:
        h = hashlib.md5()
        for c in self.chunks(1 << 20):
            h.update(c)
        return h.hexdigest()

    def bytes(self) -> bytes:
        return self.read(0, self.size)


class GeneratedBlob(Blob):
    __slots__ = ("filler", "ident", "name", "size")

    def __init__(self, filler: Filler, ident: str, name: str, size: int) -> None:
        self.filler = filler
        self.ident = ident
        self.name = name
        self.size = size

    def _header(self) -> bytes:
        return _header_for(self.ident, self.name)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.size - offset
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        header = self._header()
        out = b""
        if offset < len(header):
            out = header[offset:offset + length]
        rest = length - len(out)
        if rest > 0:
            start = offset + len(out)
            base = zlib.crc32(self.ident.encode("utf-8"))
            out += self.filler.window(base + start, rest)
        return out


class BytesBlob(Blob):
    __slots__ = ("data", "size")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            return self.data[offset:]
        return self.data[offset:offset + length]

    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()
