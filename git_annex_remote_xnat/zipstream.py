"""The members of a zip archive read as it arrives, each verified like a single download.

XNAT sends a resource's files as one zip (`.../resources/<R>/files?format=zip`): streamed,
chunked, without Content-Length, its entries DEFLATED with their sizes in data descriptors
(Java's ZipOutputStream), or STORED with sizes up front. The central directory comes last, so
the archive is read member by member from the local headers (stream-unzip) and never stored
whole. A member is kept only when its size and MD5 are the listed ones: it goes to a hidden
name beside its destination and is renamed into place after the check, so a broken or
truncated archive never leaves a bad or partial file where a good one is expected.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping


# When one archive of a resource beats a request per file (`worth_an_archive`): on a real XNAT a
# request costs about 50 ms, so a few small files already pay for the archive's one request; big
# files gain nothing from it, and a resource mostly held already would be sent again for little.
ARCHIVE_MIN_FILES = 3
ARCHIVE_MAX_MEAN_BYTES = 16 << 20
ARCHIVE_SETTINGS = ("auto", "always", "never")   # datalad.xnat.fetch-archives
# Below this many seconds per request (a server on the same host or a fast LAN) the requests an
# archive saves cost less than the server's building of the zip: `auto` fetches files singly.
# The environment variable replaces it (seconds), for the commands and the special remote alike.
ARCHIVE_MIN_ROUND_TRIP = 0.005
ROUND_TRIP_ENV = "GIT_ANNEX_REMOTE_XNAT_ARCHIVE_ROUND_TRIP"


def worth_an_archive(wanted_files: int, wanted_bytes: int, listed_files: int,
                     listed_bytes: int) -> bool:
    """Whether to fetch the `wanted_files` files (`wanted_bytes` in all) of a resource that lists
    `listed_files` files of `listed_bytes` as one zip of the whole resource rather than one by one.

    The one policy of every fetcher (the special remote, xnat-update's): at least
    ARCHIVE_MIN_FILES files, of at most ARCHIVE_MAX_MEAN_BYTES on average, that make at least half
    of the resource's bytes (the archive sends all of them; what is not wanted is read past).
    """
    return (wanted_files >= ARCHIVE_MIN_FILES
            and wanted_bytes <= ARCHIVE_MAX_MEAN_BYTES * wanted_files
            and 2 * wanted_bytes >= listed_bytes and listed_files >= wanted_files)


def archive_setting(value: str | None) -> str:
    """datalad.xnat.fetch-archives as given (unset: auto); ValueError with what to set when it
    is none of ARCHIVE_SETTINGS."""
    setting = (value or "auto").strip().lower()
    if setting not in ARCHIVE_SETTINGS:
        raise ValueError(f"datalad.xnat.fetch-archives={value!r} is not one of "
                         f"{', '.join(ARCHIVE_SETTINGS)}; set it to one of them (auto: one zip "
                         "per resource where that is cheaper)")
    min_round_trip()
    return setting


def min_round_trip() -> float:
    """The round trip (seconds) from which `auto` fetches archives: ROUND_TRIP_ENV when set,
    else ARCHIVE_MIN_ROUND_TRIP; ValueError with what to set when it is no number of seconds."""
    value = os.environ.get(ROUND_TRIP_ENV, "").strip()
    if not value:
        return ARCHIVE_MIN_ROUND_TRIP
    try:
        seconds = float(value)
        if not seconds >= 0:
            raise ValueError(value)
    except ValueError:
        raise ValueError(f"{ROUND_TRIP_ENV}={value!r} is not a number of seconds; set it to "
                         f"one, e.g. {ARCHIVE_MIN_ROUND_TRIP} (0: archives whatever a request "
                         "costs), or unset it") from None
    return seconds


def use_archive(setting: str, wanted_files: int, wanted_bytes: int, listed_files: int,
                listed_bytes: int, round_trip: float | None = None) -> bool:
    """worth_an_archive, unless datalad.xnat.fetch-archives (`setting`) forces either way; in
    `auto`, never where requests are cheap (`round_trip`, the client's measure, below
    min_round_trip(); None, not measured yet, counts as dear)."""
    if setting == "never" or wanted_files < 1:
        return False
    if setting == "always":
        return True
    if round_trip is not None and round_trip < min_round_trip():
        return False
    return worth_an_archive(wanted_files, wanted_bytes, listed_files, listed_bytes)


@dataclass(frozen=True)
class Wanted:
    """One member wanted from an archive: where its verified content goes, and what it is."""

    dest: Path
    size: int
    md5: str | None


class ArchiveBroken(Exception):
    """The archive is not a zip, or broke off, or holds more than it can: the members yielded
    before stay valid; the others were not placed."""


def member_path(name: str, resource: str) -> str | None:
    """A file's path in its resource from an entry name in XNAT's default layout
    (`<session>/scans/<N>-<type>/resources/<R>/files/<path>`, and the like for the other
    levels); None for an entry of another resource. Labels hold no `/`, so the first
    `/resources/<R>/files/` is the one."""
    marker = f"resources/{resource}/files/"
    start = 0 if name.startswith(marker) else name.find("/" + marker) + 1
    if start < 0 or not name.startswith(marker, start):
        return None
    return name[start + len(marker):] or None


def extract(chunks: Iterable[bytes], resource: str, wanted: Mapping[str, Wanted],
            limit: int) -> Iterator[tuple[str, str | None]]:
    """(path, error) for each wanted member as the archive delivers it: error None when the
    member matched its size and MD5 and is at its `dest`, else why it was not kept. Members not
    wanted are read past. At most `limit` bytes of members are read (an archive that does not
    end is cut there). ArchiveBroken when the stream is no zip or ends early."""
    from stream_unzip import UnzipError, stream_unzip  # only archive fetches need it

    seen: set[str] = set()
    total = 0
    try:
        for raw_name, _size, member in stream_unzip(chunks):
            name = raw_name.decode("utf-8", "surrogateescape")
            path = member_path(name, resource)
            target = wanted.get(path) if path is not None and path not in seen else None
            if target is None:
                for piece in member:
                    total += len(piece)
                    if total > limit:
                        raise ArchiveBroken(f"the archive holds more than the {limit} bytes of "
                                            "the files listed")
                continue
            seen.add(path)
            error, received = _write_member(member, target)
            total += received
            yield path, error
            if total > limit:
                raise ArchiveBroken(f"the archive holds more than the {limit} bytes of the "
                                    "files listed")
    except UnzipError as exc:
        raise ArchiveBroken(f"the archive is not a readable zip ({exc.__class__.__name__})") \
            from exc


def _write_member(member: Iterable[bytes], target: Wanted) -> tuple[str | None, int]:
    """Write one member to its destination if it is what was listed; (error, bytes read)."""
    tmp = target.dest.with_name(f".{target.dest.name}.{os.getpid()}.zip-part")
    digest = hashlib.md5()
    received = 0
    error = None
    try:
        with open(tmp, "wb") as out:
            for piece in member:
                received += len(piece)
                if error is None and received > target.size:
                    error = f"the archive holds more than the {target.size} bytes listed"
                if error is None:
                    out.write(piece)
                    digest.update(piece)
        if error is None and received != target.size:
            error = f"the archive holds {received} of its {target.size} bytes"
        if error is None and target.md5 is not None and digest.hexdigest() != target.md5.lower():
            error = (f"the archive holds content with MD5 {digest.hexdigest()}, expected "
                     f"{target.md5.lower()}")
        if error is None:
            os.replace(tmp, target.dest)
        return error, received
    finally:
        tmp.unlink(missing_ok=True)  # gone already when it was renamed into place
