"""XNAT's JSON answers read with a size cap, and a ResultSet's rows parsed as they arrive.

A listing of a session of a million files is a few hundred MB of JSON; decoded whole it takes
several times that in memory. The rows of ``ResultSet.Result`` are therefore parsed one by one
from the body as it arrives (ijson), and handed on in order, so memory stays flat in the row
count. A server (or proxy) that sends a body that never ends must not fill memory or stall a run
for ever, so every JSON answer has a cap in bytes (``GIT_ANNEX_REMOTE_XNAT_MAX_LISTING_BYTES``),
and one value is never longer than `MAX_VALUE_BYTES` (the parser holds a value whole).

Kept free of HTTP: the session hands in the body's chunks.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Iterator

import ijson

from .errors import NotXnatError, XnatError, safe_url

MAX_LISTING_ENV = "GIT_ANNEX_REMOTE_XNAT_MAX_LISTING_BYTES"
DEFAULT_MAX_LISTING_BYTES = 1 << 30
# No value of an XNAT listing comes near this (names and URIs are at most a few KiB); a "value"
# longer than this is a body that is not a listing, and the parser would hold it whole.
MAX_VALUE_BYTES = 1 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# XNAT escapes a name that is not valid UTF-8 with lone surrogates ("\udcff"), which Python's
# json reads but ijson's C parser refuses; such an escape is passed to it as MARK and the four
# hex digits, and turned back into the surrogate in the rows.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
MARK = "\ue000"
_MARKED = re.compile(MARK + "([0-9a-fA-F]{4})")


def max_listing_bytes() -> int:
    """The cap of one JSON answer: `MAX_LISTING_ENV` (bytes, or with K, M or G) when set, else
    the default; a malformed value is an XnatError that says how to write it."""
    value = os.environ.get(MAX_LISTING_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_LISTING_BYTES
    match = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", value.lower())
    if not match or int(match.group(1)) <= 0:
        raise XnatError(f"{MAX_LISTING_ENV}={value!r} is not a size; set it to bytes, e.g. "
                        "2000000000, or with a unit, e.g. 2G")
    return int(match.group(1)) * _UNITS[match.group(2)]


def describe(size: int) -> str:
    """A byte count as people write it: 4 MiB, 1 GiB, 1500 bytes."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def too_large(method: str, url: str, limit: int) -> XnatError:
    return XnatError(
        f"{method} {safe_url(url)} sent more than {describe(limit)}, the most one listing may "
        f"send; if the listing really is that large, raise {MAX_LISTING_ENV} (e.g. "
        f"{MAX_LISTING_ENV}=4G), otherwise the server sends a body that does not end", None, url)


class CappedBody:
    """A file-like view of a body's chunks for the parser: at most `limit` bytes, no value
    longer than `MAX_VALUE_BYTES`, and the first bytes kept for an answer without rows."""

    HEAD = 65536

    def __init__(self, chunks: Iterable[bytes], limit: int, url: str) -> None:
        self._chunks = iter(chunks)
        self._limit = limit
        self._url = url
        self.received = 0
        self.head = b""
        self._since_quote = 0  # bytes since the last '"': a string or number still open
        self._carry = b""      # the end of the last chunk, held back while it might split an escape
        self.marked = False    # lone surrogates were marked (see MARK)

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # the parser's probe of what read() returns
            return b""
        for chunk in self._chunks:
            if not chunk:
                continue
            self.received += len(chunk)
            chunk = self._hold_back(self._carry + chunk)
            if not chunk:
                continue
            if self.received > self._limit:
                raise too_large("GET", self._url, self._limit)
            if len(self.head) < self.HEAD:
                self.head += chunk[:self.HEAD - len(self.head)]
            last = chunk.rfind(b'"')
            self._since_quote = len(chunk) - 1 - last if last >= 0 \
                else self._since_quote + len(chunk)
            if self._since_quote > MAX_VALUE_BYTES:
                raise NotXnatError(
                    f"GET {safe_url(self._url)} sent {describe(MAX_VALUE_BYTES)} without a "
                    "break where an XNAT listing was expected; check that the URL is an XNAT "
                    "server", None, self._url)
            return chunk
        chunk, self._carry = self._carry, b""
        return self._mark(chunk) if chunk else b""

    def _hold_back(self, data: bytes) -> bytes:
        """`data` up to where an escape or a pair of them might be split by the chunk's end
        (from the start of the run of backslashes in its last 17 bytes), marked; the rest waits
        for the next chunk."""
        cut = data.find(b"\\", max(0, len(data) - 17))
        if cut < 0:
            self._carry = b""
            return self._mark(data)
        if cut >= 6 and _SURROGATE_ESCAPE.fullmatch(data, cut - 6, cut):
            cut -= 6  # the high half of a pair whose low half is held back
        while cut > 0 and data[cut - 1] == 0x5C:
            cut -= 1
        self._carry = data[cut:]
        return self._mark(data[:cut])

    def _mark(self, data: bytes) -> bytes:
        if b"\\u" not in data or not _SURROGATE_ESCAPE.search(data):
            return data
        out, pos, paired_until = [], 0, -1
        for match in _SURROGATE_ESCAPE.finditer(data):
            start = match.start()
            slashes = len(data[:start]) - len(data[:start].rstrip(b"\\"))
            if slashes % 2 or start < paired_until:  # "\\" then text; or a pair's low half
                continue
            code = int(match.group()[2:], 16)
            low = data[match.end():match.end() + 6]
            if code < 0xDC00 and _SURROGATE_ESCAPE.fullmatch(low) \
                    and int(low[2:], 16) >= 0xDC00:
                paired_until = match.end() + 6  # a valid pair: the parser decodes it
                continue
            out += [data[pos:start], b"\\ue000", match.group()[2:]]
            pos = match.end()
            self.marked = True
        return b"".join(out) + data[pos:] if out else data


def read_capped(chunks: Iterable[bytes], limit: int, url: str) -> bytes:
    """A whole body of at most `limit` bytes (an item document), else the too-large error."""
    parts = []
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise too_large("GET", url, limit)
        parts.append(chunk)
    return b"".join(parts)


def iter_rows(chunks: Iterable[bytes], limit: int, url: str) -> Iterator[dict[str, Any]]:
    """The rows of a ``ResultSet.Result`` body as they arrive, in order; NotXnatError when the
    body is not JSON or not a listing, the too-large error past `limit` bytes."""
    body = CappedBody(chunks, limit, url)
    rows = 0
    try:
        for row in ijson.items(body, "ResultSet.Result.item", use_float=True):
            if isinstance(row, dict):
                rows += 1
                yield _unmarked(row) if body.marked else row
    except ijson.JSONError as exc:
        raise NotXnatError(f"GET {safe_url(url)} did not answer JSON; check that the URL is an "
                           "XNAT server", None, url) from exc
    if rows == 0 and not _is_listing(body.head):
        raise NotXnatError(f"GET {safe_url(url)} is not an XNAT listing (no ResultSet.Result)",
                           None, url)


def _unmarked(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _MARKED.sub(lambda m: chr(int(m.group(1), 16)), value)
            if isinstance(value, str) and MARK in value else value
            for key, value in row.items()}


def _is_listing(head: bytes) -> bool:
    """Whether a small body without rows is a ResultSet (an empty listing) after all."""
    try:
        data = json.loads(head)
        return isinstance(data["ResultSet"]["Result"], list)
    except (ValueError, KeyError, TypeError):
        return False
