"""XnatClient: the only code of the project that speaks HTTP to XNAT.

The client is a facade over modules with one job each, so that callers need one import:

* `errors`: the exceptions (str() is one line), `safe_url`, and the one login-page test;
* `session`: one logged-in conversation (auth, renewal, retries, timeouts, error mapping,
  JSON rows) and the only place a request is sent;
* `listings`: the row record types and one function per XNAT listing;
* `enumeration`: `iter_files`, every file of a project with about one request per session;
* `download`: HEAD status and verified streaming downloads.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

from ..credentials import Credential
from ..records import LEVELS, FileRecord
from ..zipstream import Wanted
from . import listings
from .download import CHUNK_SIZE, FileStatus, download, download_archive, file_status
from .enumeration import ID_BATCH, Enumeration, Walk
from .errors import (
    AuthenticationError, DownloadError, NotFoundError, NotXnatError, PermissionDeniedError,
    ServerUnreachableError, TLSError, XnatError, safe_url,
)
from .listings import AliasToken, Experiment, Project, RemoteFile, Resource, Scan, Subject
from .session import DEFAULT_TIMEOUT, USER_AGENT, Session

__all__ = [
    "XnatClient", "Session",
    "XnatError", "AuthenticationError", "NotFoundError", "PermissionDeniedError",
    "NotXnatError", "ServerUnreachableError", "TLSError", "DownloadError", "safe_url",
    "Project", "Subject", "Experiment", "Scan", "Resource", "RemoteFile", "FileStatus",
    "FileRecord", "USER_AGENT", "DEFAULT_TIMEOUT", "CHUNK_SIZE", "ID_BATCH",
    "Walk", "AliasToken",
]


class XnatClient:
    """A logged-in conversation with one XNAT server; thread-safe for concurrent listings.

    `credential` None or anonymous means no authentication (an open site's guest account).
    Login happens on the first request (or an explicit `login()`), so creating a client is free.
    `session` is the conversation itself, for REST calls the client does not wrap.
    `timeout` None is the environment's or the default (see `session.configured_timeout`).
    """

    def __init__(self, base_url: str, credential: Credential | None = None, *,
                 timeout: tuple[float, float] | None = None, retries: int = 5,
                 backoff_factor: float = 0.3, pool_size: int = 16,
                 download_attempts: int = 5) -> None:
        self.session = Session(base_url, credential, timeout=timeout, retries=retries,
                               backoff_factor=backoff_factor, pool_size=pool_size)
        self.download_attempts = max(1, download_attempts)
        self._enumeration = Enumeration(self.session)

    @property
    def base_url(self) -> str:
        """The server URL with its context path, without a trailing /data."""
        return self.session.base_url

    @property
    def credential(self) -> Credential | None:
        return self.session.credential

    @property
    def anonymous(self) -> bool:
        return self.session.anonymous

    @property
    def given_up(self) -> ServerUnreachableError | None:
        """Set once the server stopped answering: every further request fails at once with it."""
        return self.session.given_up

    # ---------------------------------------------------------------- session lifecycle

    def login(self) -> None:
        """POST /data/JSESSION once; AuthenticationError, NotXnatError or ServerUnreachableError."""
        self.session.login()

    def close(self) -> None:
        """End the server session (DELETE /data/JSESSION, errors ignored) and the HTTP pools."""
        self.session.close()

    def __enter__(self) -> "XnatClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- listings

    def projects(self) -> list[Project]:
        """The projects this user can read."""
        return listings.projects(self.session)

    def project(self, project: str) -> Project:
        """One project by ID or alias; NotFoundError when missing or private."""
        return listings.project(self.session, project)

    def subjects(self, project: str) -> list[Subject]:
        return listings.subjects(self.session, project)

    def experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        """Imaging sessions (subject assessors) of a project, optionally of one subject."""
        return listings.experiments(self.session, project, subject)

    def scans(self, experiment: str) -> list[Scan]:
        return listings.scans(self.session, experiment)

    def resources(self, rest_path: str) -> list[Resource]:
        """Resources of any level: `rest_path` is e.g. /data/experiments/E/scans/1."""
        return listings.resources(self.session, rest_path)

    def files(self, rest_path: str) -> list[RemoteFile]:
        """Files of a resource or of all resources of a level (`.../files` is appended if missing)."""
        return listings.files(self.session, rest_path)

    def iter_files(self, project: str, subjects: Iterable[str] = (),
                   experiments: Iterable[str] = (), resources: Iterable[str] | None = None,
                   jobs: int = 8, scan_types: bool = True, levels: Iterable[str] = LEVELS,
                   walk: Walk | None = None) -> Iterator[FileRecord]:
        """Every file of a project as FileRecords, in a deterministic order, with few requests
        (see `Enumeration.iter_files`); `walk` is told the subjects and sessions walked."""
        return self._enumeration.iter_files(project, subjects, experiments, resources, jobs,
                                            scan_types, levels, walk)

    def issue_token(self) -> AliasToken:
        """A new alias token of the logged-in user (`/data/services/tokens/issue`): an alias and
        a secret that log in like a user name and password, until the server's expiry."""
        return listings.alias_token(self.session)

    @property
    def round_trip(self) -> float | None:
        """What a request to this server costs beyond its bytes (Session.round_trip)."""
        return self.session.round_trip

    # ---------------------------------------------------------------- files

    def file_status(self, rest_path: str) -> FileStatus:
        """HEAD a file: exists True (with size), False on a definite 404, None when unknown."""
        return file_status(self.session, rest_path)

    def download(self, rest_path: str, dest: str | os.PathLike[str], size: int | None = None,
                 md5: str | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Stream a file to `dest`, verified (Content-Length, `size`, `md5`); return its size.

        A failure leaves `dest` as it was; a body that broke off or arrived corrupted is
        fetched again, `download_attempts` times in all.
        """
        return download(self.session, rest_path, dest, size=size, md5=md5, progress=progress,
                        attempts=self.download_attempts,
                        backoff_factor=self.session.backoff_factor)

    def download_archive(self, listing_path: str, resource: str, wanted: dict[str, Wanted],
                         listed_bytes: int, listed_files: int
                         ) -> Iterator[tuple[str, str | None]]:
        """Several files of one resource from one zip of its files, each verified and placed
        as it arrives: (path in the resource, error or None) per wanted member the archive
        held (download.download_archive). One attempt; the caller fetches the rest alone."""
        return download_archive(self.session, listing_path, resource, wanted, listed_bytes,
                                listed_files)
