"""One file's content: whether the server has it (HEAD), and fetching it verified.

A download never leaves a partial file that looks complete: the body streams to a temporary
name beside the destination, and is renamed only after Content-Length, the expected size and
the MD5 all match. git-annex would otherwise take a truncated body, or XNAT's login page, for
the file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    kept = False
    try:
        announced = int_or_none(answer.header("Content-Length"))
        if size is not None and announced is not None and announced != size:
            raise DownloadError(
                f"GET {safe_url(url)} announces {announced} bytes but {size} are expected: the "
                "file changed on the server; run `datalad xnat-update` to register it anew",
                answer.status, url)
        digest = hashlib.md5()
        received = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in answer.chunks(CHUNK_SIZE):
                    # The headers did not say HTML; the first bytes may still be the login page.
                    if received == 0 and is_login_page("", rest_path, chunk):
                        raise login_page_error(answer.status, "GET", url, session.auth_hint())
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received)
        except BodyBrokeOff as exc:
            raise DownloadError(
                f"GET {safe_url(url)} broke off after {received} bytes ({exc}); nothing was "
                "kept; try again", None, url) from exc
        expected = size if size is not None else announced
        if expected is not None and received != expected:
            raise DownloadError(
                f"GET {safe_url(url)} delivered {received} of {expected} bytes (truncated); "
                "nothing was kept; try again", answer.status, url)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DownloadError(
                f"GET {safe_url(url)} delivered content with MD5 {digest.hexdigest()}, "
                f"expected {md5.lower()} (corrupted in transit, or changed on the server); "
                "nothing was kept; try again or run `datalad xnat-update`", answer.status, url)
        os.replace(tmp, dest)
        kept = True
        return received
    finally:
        answer.close()
        if not kept:
            tmp.unlink(missing_ok=True)
