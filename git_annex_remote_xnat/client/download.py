"""One file's content: whether the server has it (HEAD), and fetching it verified.

A download never leaves a partial file that looks complete: the body streams to a temporary
name beside the destination, and is renamed only after Content-Length, the expected size and
the MD5 all match. git-annex would otherwise take a truncated body, or XNAT's login page, for
the file. Nor is a body read past the file's size: a server that sends more than the file has
is stopped one byte after it, so a body that never ends cannot fill the disk.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..zipstream import ArchiveBroken, Wanted, extract
from .errors import (
    DownloadError, NotFoundError, XnatError, is_login_page, login_page_error, safe_url,
)
from .listings import int_or_none
from .session import BodyBrokeOff, Session

CHUNK_SIZE = 1 << 20  # also how often progress is reported, at the most


@dataclass(frozen=True)
class FileStatus:
    """What a HEAD says about a file: exists is None when the answer proves nothing."""

    exists: bool | None
    size: int | None
    detail: str = ""


def file_status(session: Session, rest_path: str) -> FileStatus:
    """HEAD a file: exists True (with size), False on a definite 404, None when unknown."""
    url = session.url(rest_path)
    try:
        with session.request("HEAD", rest_path) as answer:
            if 200 <= answer.status < 300:
                return FileStatus(True, int_or_none(answer.header("Content-Length")))
            return FileStatus(None, None, f"HTTP {answer.status} for HEAD {safe_url(url)}")
    except NotFoundError:
        return FileStatus(False, None, f"HTTP 404 for HEAD {safe_url(url)}")
    except XnatError as exc:
        return FileStatus(None, None, str(exc))


class WrongBodyError(DownloadError):
    """The body is not the file however often it is asked for: more bytes than the file has,
    or another length announced and sent, or a redirect that led nowhere. Not retried."""


def download(session: Session, rest_path: str, dest: str | os.PathLike[str], *,
             size: int | None = None, md5: str | None = None,
             progress: Callable[[int], None] | None = None, attempts: int = 3,
             backoff_factor: float = 0.3) -> int:
    """Stream a file to `dest`, verified; return its size.

    A failure leaves `dest` as it was. A body that broke off or arrived with the wrong digest
    is fetched again, `attempts` times in all.
    """
    last_error: XnatError | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(min(backoff_factor * 2 ** attempt, 10))
        try:
            return _download_once(session, rest_path, Path(dest), size, md5, progress)
        except WrongBodyError:
            raise
        except DownloadError as exc:
            # Connection errors and 5xx before the body were already retried by urllib3;
            # what is left to retry here is a body that broke off or arrived corrupted.
            last_error = exc
    assert last_error is not None
    raise last_error


def _download_once(session: Session, rest_path: str, dest: Path, size: int | None,
                   md5: str | None, progress: Callable[[int], None] | None) -> int:
    answer = session.request("GET", rest_path, stream=True)
    url = answer.url
    where = f"GET {safe_url(url)}"
    redirects = answer.redirects
    if redirects:
        where += f" (redirected to {safe_url(redirects[-1])})"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    kept = False
    try:
        if 300 <= answer.status < 400:
            raise WrongBodyError(
                f"GET {safe_url(url)} was redirected {len(redirects) + 1} times without reaching "
                f"the file (the last answer: HTTP {answer.status} to "
                f"{safe_url(answer.header('Location')) or 'nowhere'}); check the server URL, "
                "or ask the XNAT administrators about the redirect loop", answer.status, url)
        announced = int_or_none(answer.header("Content-Length"))
        # A body is never read past the size the file is known to have: a server that sends
        # more (without a length, or announcing more) is stopped one byte after it.
        expected = size if size is not None else announced
        digest = hashlib.md5()
        received = reported = 0
        broke_off: BodyBrokeOff | None = None
        try:
            with open(tmp, "wb") as out:
                for chunk in answer.chunks(CHUNK_SIZE):
                    # The headers did not say HTML; the first bytes may still be the login page.
                    if received == 0 and is_login_page("", rest_path, chunk):
                        raise login_page_error(answer.status, "GET", url, session.auth_hint())
                    if expected is not None and received + len(chunk) > expected:
                        raise WrongBodyError(
                            f"{where} sent more than the {expected} bytes of the file"
                            f"{_announced(announced, expected)}; it was stopped there and "
                            f"nothing was kept; {_hint(redirects, announced)}", answer.status, url)
                    # pieces arrive as the socket gives them: progress is told at most
                    # every CHUNK_SIZE bytes, and never later
                    if progress is not None and received - reported + len(chunk) > CHUNK_SIZE \
                            and received > reported:
                        progress(received)
                        reported = received
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except BodyBrokeOff as exc:
            broke_off = exc
        # A Content-Length larger than the file: the whole file came, then the connection
        # closed short of the announced length. The size (and MD5, below) decide.
        if broke_off is not None and not (received == expected and announced is not None
                                          and announced > received):
            raise DownloadError(
                f"{where} broke off after {received} bytes ({broke_off}); nothing was "
                "kept; try again", None, url) from broke_off
        if expected is not None and received != expected:
            if announced == received:
                raise WrongBodyError(
                    f"{where} sent {received} bytes, as its Content-Length announced, where the "
                    f"file has {expected}; nothing was kept; "
                    + _hint(redirects, announced, consistent=True),
                    answer.status, url)
            raise DownloadError(
                f"{where} delivered {received} of {expected} bytes (truncated); "
                "nothing was kept; try again", answer.status, url)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DownloadError(
                f"{where} delivered content with MD5 {digest.hexdigest()}, "
                f"expected {md5.lower()} (corrupted in transit, or changed on the server); "
                "nothing was kept; try again or run `datalad xnat-update`", answer.status, url)
        os.replace(tmp, dest)
        kept = True
        if progress is not None and received > reported:
            progress(received)
        return received
    finally:
        answer.close()
        if not kept:
            tmp.unlink(missing_ok=True)


# what an archive may hold beyond its members' listed sizes (headers, names, descriptors)
ARCHIVE_OVERHEAD_PER_MEMBER = 64 * 1024


def download_archive(session: Session, listing_path: str, resource: str,
                     wanted: dict[str, Wanted], listed_bytes: int, listed_files: int
                     ) -> Iterator[tuple[str, str | None]]:
    """The wanted files of one resource from one zip of its files (`listing_path` with
    `format=zip`): (path, error) per wanted member as it arrives, error None when it was
    verified and placed at its `dest` (zipstream.extract). `listed_bytes` and `listed_files`
    are the resource's as listed: the archive is not read past what they can take.

    One attempt, no retries: the caller fetches what this did not place alone, with the
    retries of a single download. A failure of the archive itself (an HTTP error, a body that
    broke off, no zip) is raised as DownloadError after the members it placed were yielded.
    """
    answer = session.request("GET", listing_path, params={"format": "zip"}, stream=True,
                             retry=False)
    where = f"GET {safe_url(answer.url)}"
    limit = listed_bytes + ARCHIVE_OVERHEAD_PER_MEMBER * max(1, listed_files)

    def body() -> Iterator[bytes]:
        read = 0
        for chunk in answer.chunks(CHUNK_SIZE):
            if read == 0 and is_login_page(answer.header("Content-Type"), listing_path, chunk):
                raise login_page_error(answer.status, "GET", answer.url, session.auth_hint())
            read += len(chunk)
            if read > limit:
                raise ArchiveBroken(f"it sent more than the {limit} bytes its files can take")
            yield chunk

    try:
        if 300 <= answer.status < 400:
            raise DownloadError(f"{where} was redirected without reaching the archive",
                                answer.status, answer.url)
        yield from extract(body(), resource, wanted, limit)
    except ArchiveBroken as exc:
        raise DownloadError(f"{where}: {exc}", answer.status, answer.url) from exc
    except BodyBrokeOff as exc:
        raise DownloadError(f"{where} broke off ({exc})", None, answer.url) from exc
    finally:
        answer.close()


def _announced(announced: int | None, expected: int) -> str:
    if announced is None:
        return " (no Content-Length announced the body's size)"
    if announced != expected:
        return f" (its Content-Length announced {announced})"
    return ""


def _hint(redirects: list[str], announced: int | None, consistent: bool = False) -> str:
    """What to do about a body of the wrong size, by what the answer shows (`consistent`: its
    Content-Length and its body agree on the size)."""
    if redirects:
        return ("the server redirected the download away from the file; check the server URL "
                "(a moved server or a proxy?)")
    if announced is None:
        return ("the server or a proxy sends something else than the file; if XNAT holds a new "
                "version of it, `datalad xnat-update` registers that")
    if consistent:
        return ("the file changed on the server since it was registered; run "
                "`datalad xnat-update` to register it anew")
    return ("XNAT's copy differs from the one registered, or its Content-Length is wrong; "
            "`datalad xnat-update` registers a new version, if there is one")
