"""XnatClient: the only module of the project that speaks HTTP to XNAT.

What it takes care of, so no caller has to:

* one `requests.Session` per client, one XNAT session (``POST /data/JSESSION``) reused for every
  request, renewed once when the server answers 401 (idle expiry), deleted at `close()`;
  Basic auth is sent only to log in, because every Basic-authenticated request creates a new
  server-side session and XNAT caps them per account;
* a non-browser User-Agent: a browser-like one makes XNAT answer with a 200 login page;
* a 2xx answer that is an HTML page is an authentication error, never data;
* ``format=json`` on every listing, listing values as typed records (XNAT sends every value as a
  string, and some servers say ``id`` instead of ``ID``);
* timeouts on every request; retries with exponential backoff (urllib3 `Retry`) on connection
  errors, 429, 502, 503 and 504 for idempotent requests, honouring ``Retry-After``;
* downloads that stream in 1 MiB chunks to a temporary name, check Content-Length, the expected
  size and MD5, and only then rename: a truncated or corrupted body never looks complete;
* errors as one line: HTTP status, the URL without secrets, and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import get_cookie_header
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from . import __version__
from .credentials import Credential, how_to_provide
from .records import LEVELS, FileRecord

USER_AGENT = f"git-annex-remote-xnat/{__version__}"
CHUNK_SIZE = 1 << 20
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 30.0  # seconds; a server asking for longer gets this and then an error
# Comma lists of session or subject IDs per request for level-wide file listings.
ID_BATCH = 50


# --------------------------------------------------------------------------------------- errors

class XnatError(Exception):
    """Base of all client errors; str() is always one line (git-annex and DataLad show it as is)."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None):
        super().__init__(" ".join(message.split()))
        self.status = status
        self.url = url


class AuthenticationError(XnatError):
    """The server refused the credential, or answered with its login page."""


class NotFoundError(XnatError):
    """404: missing, or private and not visible to this user (XNAT does not tell them apart)."""


class PermissionDeniedError(XnatError):
    """403: visible but not readable by this user."""


class NotXnatError(XnatError):
    """The URL answers, but not like an XNAT REST API."""


class ServerUnreachableError(XnatError):
    """No HTTP answer at all: DNS, refused connection, timeout, TLS."""


class DownloadError(XnatError):
    """A body that was truncated, had the wrong size or the wrong MD5; nothing was kept."""


def safe_url(url: str) -> str:
    """The URL without user name or password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_H3 = re.compile(r"<h3>(.*?)</h3>", re.IGNORECASE | re.DOTALL)


def _looks_like_html(content_type: str, head: bytes) -> bool:
    if "text/html" in content_type.lower():
        return True
    start = head.lstrip()[:15].lower()
    return start.startswith(b"<!doctype html") or start.startswith(b"<html")


# -------------------------------------------------------------------------------------- records

def _row_id(row: dict[str, Any]) -> str:
    return str(row.get("ID") or row.get("id") or "")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _digest(value: Any) -> str | None:
    value = str(value or "").strip().lower()
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    secondary_id: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Project":
        pid = _row_id(row)
        return cls(pid, str(row.get("name", "")), str(row.get("description", "")),
                   str(row.get("secondary_ID", "")), str(row.get("URI") or f"/data/projects/{pid}"))


@dataclass(frozen=True)
class Subject:
    id: str
    label: str
    project: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Subject":
        sid = _row_id(row)
        return cls(sid, str(row.get("label", "")), str(row.get("project", "")),
                   str(row.get("URI") or f"/data/subjects/{sid}"))


@dataclass(frozen=True)
class Experiment:
    id: str
    label: str
    project: str
    subject_id: str
    subject_label: str
    xsi_type: str
    date: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Experiment":
        eid = _row_id(row)
        return cls(eid, str(row.get("label", "")), str(row.get("project", "")),
                   str(row.get("subject_ID", "")), str(row.get("subject_label", "")),
                   str(row.get("xsiType", "")), str(row.get("date", "")),
                   str(row.get("URI") or f"/data/experiments/{eid}"))


@dataclass(frozen=True)
class Scan:
    id: str
    type: str
    series_description: str
    quality: str
    xsi_type: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Scan":
        return cls(_row_id(row), str(row.get("type", "")), str(row.get("series_description", "")),
                   str(row.get("quality", "")), str(row.get("xsiType", "")), str(row.get("URI", "")))


@dataclass(frozen=True)
class Resource:
    id: str
    label: str
    format: str
    content: str
    category: str
    file_count: int | None
    file_size: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Resource":
        return cls(str(row.get("xnat_abstractresource_id") or _row_id(row)), str(row.get("label", "")),
                   str(row.get("format", "")), str(row.get("content", "")),
                   str(row.get("category", "")), _int_or_none(row.get("file_count")),
                   _int_or_none(row.get("file_size")))


_FILE_URI = re.compile(r"/resources/([^/]+)/files/(.+)$")


@dataclass(frozen=True)
class RemoteFile:
    """One row of a `.../files` listing."""

    name: str
    path: str          # relative path inside the resource (what follows /files/ in the URI)
    size: int | None
    md5: str | None
    resource: str      # the resource label (`collection`)
    resource_id: str   # XNAT's numeric resource id (`cat_ID`)
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RemoteFile":
        uri = str(row.get("URI", ""))
        name = str(row.get("Name", ""))
        match = _FILE_URI.search(uri)
        path = match.group(2) if match else name
        # Servers differ in whether the URI is percent-encoded; the basename `Name` decides.
        if path.rsplit("/", 1)[-1] != name and unquote(path.rsplit("/", 1)[-1]) == name:
            path = unquote(path)
        resource_id = str(row.get("cat_ID", "")) or (match.group(1) if match else "")
        return cls(name, path, _int_or_none(row.get("Size")), _digest(row.get("digest")),
                   str(row.get("collection", "")), resource_id, uri)


@dataclass(frozen=True)
class FileStatus:
    """What a HEAD says about a file: exists is None when the answer proves nothing."""

    exists: bool | None
    size: int | None
    detail: str = ""


# ---------------------------------------------------------------------------------------- retry

class _Retry(Retry):
    """urllib3's Retry, with Retry-After capped so a confused server cannot stall us for hours."""

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER)


def _retry_policy(retries: int, backoff_factor: float) -> Retry:
    # Few connect and read retries: a refused connection or a hung server should fail within
    # seconds, not minutes; overload answers (429/5xx) get the full count.
    return _Retry(
        total=retries, connect=min(retries, 3), read=min(retries, 2), status=retries, other=0,
        backoff_factor=backoff_factor, backoff_max=10,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS", "DELETE"}),
        respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
    )


# --------------------------------------------------------------------------------------- client

class XnatClient:
    """A logged-in conversation with one XNAT server; thread-safe for concurrent listings.

    `credential` None or anonymous means no authentication (an open site's guest account).
    Login happens on the first request (or an explicit `login()`), so creating a client is free.
    """

    def __init__(self, base_url: str, credential: Credential | None = None, *,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, retries: int = 5,
                 backoff_factor: float = 0.3, pool_size: int = 16,
                 download_attempts: int = 3) -> None:
        parts = urlsplit(base_url.strip())
        path = parts.path.rstrip("/")
        if path.endswith("/data"):
            path = path[: -len("/data")]
        self.base_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.credential = credential
        self.timeout = timeout
        self.retries = retries
        self.backoff_factor = backoff_factor
        self.download_attempts = max(1, download_attempts)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        # Read the proxy and CA bundle environment once instead of on every request (about
        # 0.6 ms each); this also keeps requests from adding ~/.netrc Basic auth to every call.
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(self.base_url)
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            self._session.verify = ca_bundle
        adapter = HTTPAdapter(max_retries=_retry_policy(retries, backoff_factor),
                              pool_connections=4, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._generation = 0       # bumped by every login; a 401 renews only the session it saw
        self._logged_in = False
        self._resource_labels: dict[str, str] = {}
        self._comma_support: dict[str, bool] = {}  # "prefix*suffix" -> server takes "ID1,ID2"
        self._pools: dict[str, tuple[Any, bool, Retry]] = {}  # scheme://host -> _pool_for()
        self._cookie_header: tuple[int, str] | None = None  # (login generation, Cookie value)
        self._probe: tuple[str, list[str], list[dict[str, Any]] | None] | None = None

    # ---------------------------------------------------------------- session lifecycle

    @property
    def anonymous(self) -> bool:
        return self.credential is None or self.credential.anonymous

    def __enter__(self) -> "XnatClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def login(self) -> None:
        """POST /data/JSESSION once; AuthenticationError, NotXnatError or ServerUnreachableError."""
        with self._lock:
            if not self._logged_in:
                self._login_locked()

    def _login_locked(self) -> None:
        self._session.cookies.clear()
        url = self._url("/data/JSESSION")
        auth = None if self.anonymous else (self.credential.user, self.credential.password)
        # urllib3 retries only idempotent methods; logging in again is harmless (at worst an
        # extra server session that idles out), so 429/5xx answers to it are retried here.
        for attempt in range(self.retries + 1):
            response = self._send("POST", url, auth=auth)
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            response.close()
            time.sleep(min(self.backoff_factor * 2 ** attempt, 10))
        try:
            if response.status_code == 401:
                raise self._auth_error(response, url)
            if response.status_code == 404:
                raise NotXnatError(
                    f"HTTP 404 for POST {url}: no XNAT REST API there; check the server URL "
                    "(include the context path, e.g. https://host/xnat)", 404, url)
            self._raise_for_status(response, "POST", url)
            body = response.content[:4096]
            if _looks_like_html(response.headers.get("Content-Type", ""), body):
                raise AuthenticationError(
                    f"HTTP {response.status_code} for POST {url} is an HTML page (a login page?) "
                    f"instead of a session id; {self._auth_hint()}", response.status_code, url)
            session_id = body.decode("ascii", "replace").strip()
            if not session_id or len(session_id) > 256 or any(c.isspace() for c in session_id):
                raise NotXnatError(f"POST {url} did not answer with an XNAT session id; "
                                   "check that the URL is an XNAT server", response.status_code, url)
        finally:
            response.close()
        if "JSESSIONID" not in self._session.cookies:
            self._session.cookies.set("JSESSIONID", session_id)
        self._generation += 1
        self._logged_in = True

    def close(self) -> None:
        """End the server session (DELETE /data/JSESSION, errors ignored) and the HTTP pool."""
        with self._lock:
            if self._logged_in:
                self._logged_in = False
                try:
                    self._session.delete(self._url("/data/JSESSION"), timeout=(5, 10)).close()
                except requests.RequestException:
                    pass
            self._session.close()

    def _renew(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:  # nobody renewed it since this request started
                self._login_locked()

    # ---------------------------------------------------------------- plumbing

    def _url(self, rest_path: str) -> str:
        if rest_path.startswith(("http://", "https://")):
            return rest_path
        if not rest_path.startswith("/"):
            rest_path = "/" + rest_path
        if not rest_path.startswith("/data/") and rest_path != "/data":
            rest_path = "/data" + rest_path
        return self.base_url + rest_path

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self._session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise ServerUnreachableError(
                f"TLS error for {method} {safe_url(url)}: {exc.__class__.__name__}; check the "
                "certificate or REQUESTS_CA_BUNDLE", None, url) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnreachableError(
                f"cannot reach {safe_url(url)} ({exc.__class__.__name__}, retried); check the "
                "server URL and the network, then try again", None, url) from exc
        except requests.RequestException as exc:
            raise XnatError(f"{method} {safe_url(url)} failed: {exc}", None, url) from exc

    def _pool_for(self, url: str) -> tuple[Any, bool, Retry]:
        """The urllib3 connection pool requests would use for `url` (same TLS verification,
        CA bundle and proxy), whether it wants the absolute URL (a plain HTTP proxy) or only
        the path, and the adapter's retry policy."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            found = self._pools.get(origin)
            if found is None or found[0].pool is None:  # pool.pool is None: closed (evicted)
                request = requests.Request("GET", url).prepare()
                adapter = self._session.get_adapter(url)
                proxies = self._session.proxies
                pool = adapter.get_connection_with_tls_context(
                    request, self._session.verify, proxies, self._session.cert)
                found = (pool, adapter.request_url(request, proxies) != request.path_url,
                         adapter.max_retries)
                self._pools[origin] = found
        return found

    def _cookies_for(self, url: str) -> str:
        """The Cookie header for `url`; it changes only when a login sets a new session."""
        with self._lock:
            cached = self._cookie_header
            if cached is None or cached[0] != self._generation:
                value = get_cookie_header(self._session.cookies, requests.Request("GET", url)) or ""
                cached = self._cookie_header = (self._generation, value)
        return cached[1]

    def _send_stream(self, url: str) -> requests.Response:
        """GET `url` with the body left unread, through the session's own connection pool.

        Why not Session.request: for a download of a few hundred KiB, its per-request cookie
        jar merge and response cookie extraction cost about 1 ms CPU, as much as the transfer
        itself (measured: 2,000 files of 256 KiB in 8 threads, 3.0-3.3 s through the session,
        1.8 s like this). The answer is wrapped in a requests.Response so the rest of the
        client treats it like any other.
        """
        pool, absolute, retries = self._pool_for(url)
        parts = urlsplit(url)
        target = url if absolute else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"}
        cookie = self._cookies_for(url)
        if cookie:
            headers["Cookie"] = cookie
        connect, read = self.timeout
        try:
            raw = pool.urlopen("GET", target, headers=headers, redirect=False,
                               assert_same_host=False, preload_content=False, decode_content=True,
                               retries=retries,
                               timeout=urllib3.Timeout(connect=connect, read=read))
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, urllib3.exceptions.SSLError):
                raise ServerUnreachableError(
                    f"TLS error for GET {safe_url(url)}: {reason.__class__.__name__}; check the "
                    "certificate or REQUESTS_CA_BUNDLE", None, url) from exc
            raise ServerUnreachableError(
                f"cannot reach {safe_url(url)} ({reason.__class__.__name__}, retried); check the "
                "server URL and the network, then try again", None, url) from exc
        response = requests.Response()
        response.raw = raw
        response.status_code = raw.status
        response.reason = raw.reason
        response.headers = CaseInsensitiveDict(raw.headers)
        response.url = url
        return response

    def _request(self, method: str, rest_path: str, *, params: dict[str, str] | None = None,
                 stream: bool = False) -> requests.Response:
        """Send with the shared session; on 401 renew the XNAT session once and retry.

        `stream` (a GET whose body the caller reads) takes the lighter `_send_stream`."""
        if not self._logged_in:
            self.login()
        url = self._url(rest_path)
        if stream and (method != "GET" or params):
            raise ValueError("stream=True is for plain GETs of a file")
        for attempt in range(2):
            generation = self._generation
            response = (self._send_stream(url) if stream
                        else self._send(method, url, params=params))
            if attempt == 1 or not self._session_refused(response, rest_path):
                return response
            response.close()
            self._renew(generation)
        return response  # pragma: no cover

    @staticmethod
    def _session_refused(response: requests.Response, rest_path: str) -> bool:
        """401, or the 200 login page some servers and proxies send instead of a 401."""
        if response.status_code == 401:
            return True
        return (200 <= response.status_code < 300
                and "text/html" in response.headers.get("Content-Type", "").lower()
                and not _is_html_name(rest_path.split("?", 1)[0]))

    def _auth_hint(self) -> str:
        if self.anonymous:
            return "this site needs a login: " + how_to_provide(
                urlsplit(self.base_url).hostname or "NAME") + ", and use it instead of anonymous"
        cred = self.credential
        return (f"check user '{cred.user}' and the password or token of credential '{cred.name}' "
                f"(from {cred.source or 'unknown'}); " + how_to_provide(cred.name))

    def _auth_error(self, response: requests.Response, url: str) -> AuthenticationError:
        who = "anonymous access" if self.anonymous else f"user '{self.credential.user}'"
        return AuthenticationError(
            f"HTTP 401 Unauthorized for {safe_url(url)}: the server refused {who}; "
            + self._auth_hint(), 401, url)

    def _raise_for_status(self, response: requests.Response, method: str, url: str) -> None:
        status = response.status_code
        if status < 400:
            return
        try:
            match = _H3.search(response.text[:4096]) if method != "HEAD" else None
            detail = f" ({match.group(1).strip()})" if match else ""
        except Exception:  # noqa: BLE001 - the body is only decoration for the message
            detail = ""
        where = f"{method} {safe_url(url)}"
        user = "anonymous" if self.anonymous else f"user '{self.credential.user}'"
        if status == 401:
            raise self._auth_error(response, url)
        if status == 403:
            raise PermissionDeniedError(
                f"HTTP 403 Forbidden for {where}{detail}: {user} may not read this; ask the "
                "project owner for access", status, url)
        if status == 404:
            raise NotFoundError(
                f"HTTP 404 Not Found for {where}{detail}: it does not exist or {user} cannot see "
                "it (XNAT answers 404 for private projects); check the IDs and access", status, url)
        if status in RETRY_STATUSES:
            raise XnatError(
                f"HTTP {status} {response.reason} for {where}{detail} (retried {self.retries} "
                "times): the server is overloaded or down; try again later", status, url)
        if status >= 500:
            raise XnatError(
                f"HTTP {status} {response.reason} for {where}{detail}: the server failed; try "
                "again later, or ask the XNAT administrators if it persists", status, url)
        raise XnatError(f"HTTP {status} {response.reason} for {where}{detail}", status, url)

    def _get_json(self, rest_path: str, params: dict[str, str] | None = None) -> Any:
        query = {"format": "json", **(params or {})}
        response = self._request("GET", rest_path, params=query)
        url = response.url
        try:
            self._raise_for_status(response, "GET", url)
            body = response.content
            if _looks_like_html(response.headers.get("Content-Type", ""), body[:512]):
                raise AuthenticationError(
                    f"HTTP {response.status_code} for GET {safe_url(url)} is an HTML page (the "
                    f"login page?) instead of data; {self._auth_hint()}", response.status_code, url)
            try:
                return json.loads(body)
            except ValueError as exc:
                raise NotXnatError(f"GET {safe_url(url)} did not answer JSON; check that the URL "
                                   "is an XNAT server", response.status_code, url) from exc
        finally:
            response.close()

    def _rows(self, rest_path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        data = self._get_json(rest_path, params)
        try:
            rows = data["ResultSet"]["Result"]
        except (KeyError, TypeError) as exc:
            raise NotXnatError(f"GET {safe_url(self._url(rest_path))} is not an XNAT listing "
                               "(no ResultSet.Result)") from exc
        return [row for row in rows if isinstance(row, dict)]

    # ---------------------------------------------------------------- listings

    def projects(self) -> list[Project]:
        """The projects this user can read."""
        return [Project.from_row(row) for row in self._rows("/data/projects")]

    def project(self, project: str) -> Project:
        """One project by ID or alias; NotFoundError when missing or private."""
        data = self._get_json(f"/data/projects/{quote(project, safe='')}")
        try:
            fields = next(item["data_fields"] for item in data["items"]
                          if not item.get("meta", {}).get("isHistory"))
        except (KeyError, TypeError, StopIteration) as exc:
            raise NotXnatError(f"unexpected answer for project {project}") from exc
        return Project.from_row(fields)

    def subjects(self, project: str) -> list[Subject]:
        return [Subject.from_row(row)
                for row in self._rows(f"/data/projects/{quote(project, safe='')}/subjects")]

    def experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        """Imaging sessions (subject assessors) of a project, optionally of one subject."""
        path = f"/data/projects/{quote(project, safe='')}"
        if subject:
            path += f"/subjects/{quote(subject, safe='')}"
        columns = "ID,label,project,subject_ID,subject_label,xsiType,date,insert_date"
        rows = self._rows(path + "/experiments", {"columns": columns})
        return [Experiment.from_row(row) for row in rows]

    def scans(self, experiment: str) -> list[Scan]:
        return [Scan.from_row(row)
                for row in self._rows(f"/data/experiments/{quote(experiment, safe='')}/scans")]

    def resources(self, rest_path: str) -> list[Resource]:
        """Resources of any level: `rest_path` is e.g. /data/experiments/E/scans/1."""
        return [Resource.from_row(row) for row in self._rows(rest_path.rstrip("/") + "/resources")]

    def files(self, rest_path: str) -> list[RemoteFile]:
        """Files of a resource or of all resources of a level (`.../files` is appended if missing)."""
        rest_path = rest_path.rstrip("/")
        if not rest_path.endswith("/files"):
            rest_path += "/files"
        return [RemoteFile.from_row(row) for row in self._rows(rest_path)]

    # ---------------------------------------------------------------- enumeration

    def iter_files(self, project: str, subject: str | None = None, experiment: str | None = None,
                   resources: Iterable[str] | None = None, jobs: int = 8,
                   scan_types: bool = True,
                   levels: Iterable[str] = LEVELS) -> Iterator[FileRecord]:
        """Every file of a project as FileRecords, in a deterministic order, with few requests.

        Requests: the subjects and the experiments listing; per session one `scans/ALL/files`
        listing (every scan's files at once); per ID_BATCH sessions one `scans` listing (scan
        types) and one `files` listing (session resources), using XNAT's comma lists of IDs;
        one project `files` listing; subject resources per ID_BATCH subjects, or per subject
        when the server refuses comma lists there. A server that refuses a comma list gets one
        request per ID instead. `jobs` requests run at a time; memory stays bounded.
        `subject` and `experiment` match an ID or a label; `resources` keeps only those labels;
        `levels` limits which of 'scan', 'session', 'subject', 'project' are listed.
        """
        wanted = set(resources) if resources else None
        levels = set(levels)
        quoted_project = quote(project, safe="")
        subjects = {s.id: s for s in self.subjects(project)}
        if subject:
            subjects = {sid: s for sid, s in subjects.items() if subject in (sid, s.label)}
            if not subjects:
                raise NotFoundError(f"project {project} has no subject {subject}")
        sessions = [e for e in self._unique_experiments(project)
                    if e.subject_id in subjects or (not e.subject_id and not subject)]
        if experiment:
            sessions = [e for e in sessions if experiment in (e.id, e.label)]
            if not sessions:
                raise NotFoundError(f"project {project} has no experiment {experiment}"
                                    + (f" for subject {subject}" if subject else ""))

        def keep(records: list[FileRecord]) -> list[FileRecord]:
            return [r for r in records if wanted is None or r.resource in wanted]

        tasks: list[Callable[[], list[FileRecord]]] = []
        if "project" in levels and not subject and not experiment:
            def project_task() -> list[FileRecord]:
                return keep([FileRecord(project, "", "", "", "", "", "", "project",
                                        *self._record_tail(f))
                             for f in self._level_files(f"/data/projects/{quoted_project}")])
            tasks.append(project_task)

        if "subject" in levels and not experiment:
            subject_prefix = f"/data/projects/{quoted_project}/subjects/"
            aliases = {s.label: sid for sid, s in subjects.items()}

            def subject_task(ids: list[str]) -> Callable[[], list[FileRecord]]:
                def run() -> list[FileRecord]:
                    found = self._files_by_owner(subject_prefix, ids, "subjects", aliases)
                    return keep([FileRecord(project, sid, subjects[sid].label, "", "", "", "",
                                            "subject", *self._record_tail(f))
                                 for sid in ids for f in found.get(sid, [])])
                return run
            tasks.extend(subject_task(ids) for ids in self._id_groups(subject_prefix, list(subjects)))

        need_types = scan_types and "scan" in levels
        session_ids = [e.id for e in sessions]
        batches = [session_ids[i:i + ID_BATCH] for i in range(0, len(session_ids), ID_BATCH)]
        batch_of = {eid: n for n, batch in enumerate(batches) for eid in batch}
        batch_locks = [threading.Lock() for _ in batches]
        batch_data: dict[int, tuple[dict[str, dict[str, str]], dict[str, list[RemoteFile]]]] = {}

        def session_batch(n: int) -> tuple[dict[str, dict[str, str]], dict[str, list[RemoteFile]]]:
            """Scan types and session-level files of a batch of sessions, fetched once."""
            with batch_locks[n]:
                if n not in batch_data:
                    ids = batches[n]
                    types = self._scan_types(ids) if need_types else {}
                    own = (self._files_by_owner("/data/experiments/", ids, "experiments")
                           if "session" in levels else {})
                    batch_data[n] = (types, own)
                return batch_data[n]

        def session_task(session: Experiment) -> Callable[[], list[FileRecord]]:
            def run() -> list[FileRecord]:
                types, own = session_batch(batch_of[session.id])
                subj = subjects.get(session.subject_id)
                head = (project, session.subject_id,
                        session.subject_label or (subj.label if subj else ""),
                        session.id, session.label)
                records = []
                if "scan" in levels:
                    session_types = types.get(session.id, {})
                    for row in self._rows(f"/data/experiments/{quote(session.id, safe='')}"
                                          "/scans/ALL/files"):
                        remote_file = RemoteFile.from_row(row)
                        scan_id = unquote(_uri_part(remote_file.uri, "scans"))
                        records.append(FileRecord(*head, scan_id, session_types.get(scan_id, ""),
                                                  "scan", *self._record_tail(remote_file)))
                for remote_file in own.get(session.id, []):
                    records.append(FileRecord(*head, "", "", "session",
                                              *self._record_tail(remote_file)))
                return keep(records)
            return run
        tasks.extend(session_task(session) for session in sessions)

        for records in _ordered_map(lambda task: task(), tasks, jobs):
            yield from records

    def _unique_experiments(self, project: str) -> list[Experiment]:
        seen: dict[str, Experiment] = {}
        for exp in self.experiments(project):
            seen.setdefault(exp.id, exp)
        return list(seen.values())

    def _record_tail(self, remote_file: RemoteFile) -> tuple[str, str, int, str | None]:
        label = remote_file.resource or self._resource_label(remote_file)
        return label, remote_file.path, remote_file.size or 0, remote_file.md5

    def _resource_label(self, remote_file: RemoteFile) -> str:
        """Label for a row without `collection`: one resources listing per level, cached."""
        if remote_file.resource_id in self._resource_labels:
            return self._resource_labels[remote_file.resource_id]
        level = remote_file.uri.split("/resources/", 1)[0]
        try:
            for resource in self.resources(level):
                self._resource_labels[resource.id] = resource.label
        except XnatError:
            pass
        return self._resource_labels.setdefault(remote_file.resource_id, remote_file.resource_id)

    def _level_files(self, level_path: str) -> list[RemoteFile]:
        try:
            return self.files(level_path)
        except NotFoundError:
            return []

    def _comma_list(self, prefix: str, ids: list[str], suffix: str) -> list[dict[str, Any]] | None:
        """Rows of `prefix` + "ID1,ID2,..." + `suffix`, or None when the server refuses the list.

        XNAT accepts comma lists of experiment IDs in paths; whether a server also does for
        other levels is learnt from the first answer and remembered.
        """
        key = prefix + "*" + suffix
        if len(ids) < 2 or self._comma_support.get(key) is False:
            return None
        try:
            rows = self._rows(prefix + ",".join(quote(i, safe="") for i in ids) + suffix)
        except (AuthenticationError, ServerUnreachableError):
            raise
        except XnatError:
            self._comma_support[key] = False
            return None
        self._comma_support[key] = True
        return rows

    def _id_groups(self, prefix: str, ids: list[str]) -> list[list[str]]:
        """Batches of IDs for comma lists, or single IDs once the server refused a list."""
        if not ids:
            return []
        key = prefix + "*/files"
        if self._comma_support.get(key) is None and len(ids) > 1:
            self._probe = (prefix, ids[:ID_BATCH], self._comma_list(prefix, ids[:ID_BATCH], "/files"))
        if self._comma_support.get(key):
            return [ids[i:i + ID_BATCH] for i in range(0, len(ids), ID_BATCH)]
        return [[i] for i in ids]

    def _files_by_owner(self, prefix: str, ids: list[str], owner_kind: str,
                        aliases: dict[str, str] | None = None) -> dict[str, list[RemoteFile]]:
        """Files of the own resources of several sessions or subjects, keyed by owner ID.

        One comma-list request when the server takes it (the owner of each row is read from its
        URI), else one request per ID.
        """
        probe = getattr(self, "_probe", None)
        if probe and probe[0] == prefix and probe[1] == ids:
            rows = probe[2]
            self._probe = None
        else:
            rows = self._comma_list(prefix, ids, "/files")
        if rows is None:
            return {owner: self._level_files(prefix + quote(owner, safe="")) for owner in ids}
        found: dict[str, list[RemoteFile]] = {}
        for row in rows:
            remote_file = RemoteFile.from_row(row)
            owner = unquote(_uri_part(remote_file.uri, owner_kind))
            owner = (aliases or {}).get(owner, owner)  # a URI may name a subject by label
            if owner in ids:
                found.setdefault(owner, []).append(remote_file)
        return found

    def _scan_types(self, session_ids: list[str]) -> dict[str, dict[str, str]]:
        """{session ID: {scan ID: type}}: one `scans` listing per batch, or per session."""
        rows = self._comma_list("/data/experiments/", session_ids, "/scans")
        types: dict[str, dict[str, str]] = {}
        if rows is not None:
            for row in rows:
                scan = Scan.from_row(row)
                owner = unquote(_uri_part(scan.uri, "experiments"))
                types.setdefault(owner, {})[scan.id] = scan.type
            if all(owner in session_ids for owner in types):
                return types
            types = {}
        for session_id in session_ids:
            types[session_id] = {scan.id: scan.type for scan in self.scans(session_id)}
        return types

    # ---------------------------------------------------------------- files

    def file_status(self, rest_path: str) -> FileStatus:
        """HEAD a file: exists True (with size), False on a definite 404, None when unknown."""
        url = self._url(rest_path)
        try:
            response = self._request("HEAD", rest_path)
        except XnatError as exc:
            return FileStatus(None, None, str(exc))
        with response:
            status = response.status_code
            if status == 404:
                return FileStatus(False, None, f"HTTP 404 for HEAD {safe_url(url)}")
            if 200 <= status < 300:
                content_type = response.headers.get("Content-Type", "")
                if "text/html" in content_type and not _is_html_name(rest_path):
                    return FileStatus(None, None, f"HTTP {status} for HEAD {safe_url(url)} is an "
                                      f"HTML page (a login page?); {self._auth_hint()}")
                return FileStatus(True, _int_or_none(response.headers.get("Content-Length")))
            try:
                self._raise_for_status(response, "HEAD", url)
            except XnatError as exc:
                return FileStatus(None, None, str(exc))
            return FileStatus(None, None, f"HTTP {status} for HEAD {safe_url(url)}")

    def download(self, rest_path: str, dest: str | os.PathLike[str], size: int | None = None,
                 md5: str | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Stream a file to `dest`, verified; return its size.

        The body goes to a temporary name beside `dest` and is renamed only after Content-Length,
        `size` and `md5` (when given) all match, so a failure leaves `dest` as it was. A body that
        broke off or arrived with the wrong digest is fetched again, `download_attempts` in all.
        """
        last_error: XnatError | None = None
        for attempt in range(self.download_attempts):
            if attempt:
                time.sleep(min(self.backoff_factor * 2 ** attempt, 10))
            try:
                return self._download_once(rest_path, Path(dest), size, md5, progress)
            except DownloadError as exc:
                # Connection errors and 5xx before the body were already retried by urllib3;
                # what is left to retry here is a body that broke off or arrived corrupted.
                last_error = exc
        assert last_error is not None
        raise last_error

    def _download_once(self, rest_path: str, dest: Path, size: int | None, md5: str | None,
                       progress: Callable[[int], None] | None) -> int:
        url = self._url(rest_path)
        response = self._request("GET", rest_path, stream=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        kept = False
        try:
            self._raise_for_status(response, "GET", url)
            content_type = response.headers.get("Content-Type", "")
            if "text/html" in content_type and not _is_html_name(rest_path):
                raise AuthenticationError(
                    f"HTTP {response.status_code} for GET {safe_url(url)} is an HTML page (the "
                    f"login page?) instead of the file; {self._auth_hint()}",
                    response.status_code, url)
            announced = _int_or_none(response.headers.get("Content-Length"))
            if size is not None and announced is not None and announced != size:
                raise DownloadError(
                    f"GET {safe_url(url)} announces {announced} bytes but {size} are expected: the "
                    "file changed on the server; run `datalad xnat-update` to register it anew",
                    response.status_code, url)
            digest = hashlib.md5()
            received = 0
            try:
                with open(tmp, "wb") as out:
                    for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                        if received == 0 and _looks_like_html("", chunk[:64]) and \
                                not _is_html_name(rest_path) and b"Login" in chunk[:65536]:
                            raise AuthenticationError(
                                f"GET {safe_url(url)} returned XNAT's HTML login page instead of "
                                f"the file; {self._auth_hint()}", response.status_code, url)
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received)
            except requests.RequestException as exc:
                raise DownloadError(
                    f"GET {safe_url(url)} broke off after {received} bytes "
                    f"({exc.__class__.__name__}); nothing was kept; try again", None, url) from exc
            expected = size if size is not None else announced
            if expected is not None and received != expected:
                raise DownloadError(
                    f"GET {safe_url(url)} delivered {received} of {expected} bytes (truncated); "
                    "nothing was kept; try again", response.status_code, url)
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DownloadError(
                    f"GET {safe_url(url)} delivered content with MD5 {digest.hexdigest()}, "
                    f"expected {md5.lower()} (corrupted in transit, or changed on the server); "
                    "nothing was kept; try again or run `datalad xnat-update`",
                    response.status_code, url)
            os.replace(tmp, dest)
            kept = True
            return received
        finally:
            response.close()
            if not kept:
                tmp.unlink(missing_ok=True)


def _is_html_name(path: str) -> bool:
    return unquote(path).lower().endswith((".html", ".htm"))


def _uri_part(uri: str, after: str) -> str:
    """The path segment that follows `/<after>/` in a URI (scan ID after /scans/, ...)."""
    parts = uri.split("/")
    try:
        return parts[parts.index(after) + 1]
    except (ValueError, IndexError):
        return ""


def _ordered_map(func: Callable[[Any], Any], items: list[Any], jobs: int) -> Iterator[Any]:
    """Like executor.map, but with at most 2*jobs results in flight so memory stays flat."""
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            yield func(item)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="xnat-list") as pool:
        pending: deque[Future] = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(func, item))
                break
            yield result
