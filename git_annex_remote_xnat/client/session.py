"""One logged-in conversation with one XNAT server, and the only place a request is sent.

What it takes care of, so no other module has to:

* one XNAT session (``POST /data/JSESSION``) reused for every request, renewed once when the
  server answers 401 or its login page (idle expiry), deleted at `close()`. Basic auth is sent
  only to log in, because every Basic-authenticated request creates a new server-side session
  and XNAT caps them per account;
* a non-browser User-Agent: a browser-like one makes XNAT answer with a 200 login page;
* timeouts on every request (``GIT_ANNEX_REMOTE_XNAT_TIMEOUT`` overrides the default);
  retries with exponential backoff (urllib3 `Retry`) on connection errors and on the answers
  curl's ``--retry`` takes for transient (408, 429, 500, 502, 503, 504: XNAT's Tomcat answers
  500 for passing failures too) for idempotent requests and the login, honouring
  ``Retry-After``;
* a server that stopped answering is given up on: after `UNREACHABLE_AFTER` requests in a row
  got no HTTP answer, every further request fails at once with the same one line, so a run over
  many files ends with one error soon instead of one timeout per file;
* the session cookie goes to the server's own scheme, host and port only: not to an absolute
  URL elsewhere, and urllib3 drops it (and Authorization) on a redirect to another host;
* every failure as an `XnatError` of one line: HTTP status, the URL without secrets, what to do;
* ``format=json`` listings decoded to their ``ResultSet.Result`` rows, streamed and capped in
  bytes (`resultset`); no answer is read whole without a cap (a login answer, an error page).

The transport is one urllib3 pool manager owned here, not a `requests.Session`: a session's
per-request cookie-jar merge and response cookie extraction cost as much CPU as fetching a file
of a few hundred KiB, and downloads of many such files are the common case. The price is doing
the little of requests' work this client needs by hand: the proxy and CA bundle from the
environment (read once), and the cookies of the login answer.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import threading
import time
import urllib.request
from collections import deque
from http.cookies import CookieError, SimpleCookie
from typing import Any, Iterator
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import HTTPError as _TransportError
from urllib3.exceptions import LocationValueError
from urllib3.util.retry import Retry

from .. import __version__
from ..credentials import Credential, default_credential_name, how_to_provide
from . import resultset
from .errors import (
    AuthenticationError, NotFoundError, NotXnatError, PermissionDeniedError,
    ServerUnreachableError, TLSError, XnatError, is_login_page, login_page_error, safe_url,
)

USER_AGENT = f"git-annex-remote-xnat/{__version__}"
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
TIMEOUT_ENV = "GIT_ANNEX_REMOTE_XNAT_TIMEOUT"  # "READ" or "CONNECT,READ" in seconds
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # curl --retry's transient ones
OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})
NOT_XNAT_LOGIN_STATUSES = frozenset({404, 405, 501})  # no such path, or POST not taken there
MAX_RETRY_AFTER = 30.0  # seconds; a server asking for longer gets this and then an error
CLOSE_TIMEOUT = (5.0, 10.0)  # ending the server session must not hold up an exit
UNREACHABLE_AFTER = 3  # requests in a row without an HTTP answer before the server is given up
LISTING_CHUNK = 1 << 16
MESSAGE_BYTES = 4096  # what is read of a login answer or an error page, whatever follows
DRAIN_BYTES = 1 << 20  # what is read of an answer about to be retried, so its connection stays
BACKOFF_MAX = 10.0  # seconds: the longest wait between two tries
ROUND_TRIPS_KEPT = 16  # the recent answers `Session.round_trip` is the least of
_URLLIB3_1 = urllib3.__version__.startswith("1.")  # 1.26: botocore's cap on Python < 3.10

_H3 = re.compile(r"<h3>(.*?)</h3>", re.IGNORECASE | re.DOTALL)
# XNAT's alias tokens are UUIDs, user names never are (xnatpy tells them apart the same way)
_ALIAS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class BodyBrokeOff(Exception):
    """The connection failed while a body was being read (its str() names the failure)."""


class _BoundedResponse(urllib3.HTTPResponse):
    """urllib3's response, whose `drain_conn` gives up on a long body instead of reading it all.

    urllib3 drains an answer it is about to retry (a 500, say) so that the connection can be
    reused; an error page that never ends would hold that retry, and the run, for ever.
    """

    def drain_conn(self) -> None:
        try:
            left = DRAIN_BYTES
            while left > 0:
                chunk = self.read(min(left, LISTING_CHUNK), decode_content=False)
                if not chunk:
                    return
                left -= len(chunk)
            # the rest is not worth reading: this connection is not reused
            # (urllib3 < 2.3 has no shutdown(); closing drops the connection there too)
            getattr(self, "shutdown", self.close)()
        except (_TransportError, OSError):
            pass
        finally:
            self.release_conn()

    if _URLLIB3_1:
        # urllib3 1.26 (what botocore allows on Python < 3.10) has no read1: its read(amt)
        # waits for `amt` bytes, and a connection failing meanwhile loses those it had.
        _read_once = False  # set: `_fp_read` returns what one read of the socket gave

        def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
            """At most `amt` bytes of the body as they arrive; b"" at its end."""
            self._read_once = True
            try:
                while True:  # a decoder may take a read's bytes without giving any out yet
                    data = self.read(amt, decode_content=decode_content)
                    if data or self.isclosed():
                        return data or b""
            finally:
                self._read_once = False

        def _fp_read(self, amt: int | None) -> bytes:  # type: ignore[override]
            if self._read_once and amt:
                return self._fp.read1(amt)
            return super()._fp_read(amt)


def _with_bounded_drains(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """`manager`, its connections (whatever their kind: plain, TLS, SOCKS) answering with
    `_BoundedResponse`. urllib3 2 builds the response in the connection, so that is where the
    class is chosen; `_BoundedResponse` adds no state, only the bounded drain. urllib3 1.26
    builds it in the pool, from the pool's `ResponseCls`."""
    def bounded(pool_cls: type) -> type:
        if _URLLIB3_1:
            return type(pool_cls.__name__, (pool_cls,), {"ResponseCls": _BoundedResponse})

        def getresponse(self):  # type: ignore[no-untyped-def]
            response = super(connection_cls, self).getresponse()
            response.__class__ = _BoundedResponse
            return response
        connection_cls = type(pool_cls.ConnectionCls.__name__, (pool_cls.ConnectionCls,),
                              {"getresponse": getresponse})
        return type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": connection_cls})

    manager.pool_classes_by_scheme = {scheme: bounded(cls) for scheme, cls
                                      in manager.pool_classes_by_scheme.items()}
    return manager


class _Retry(Retry):
    """urllib3's Retry, with Retry-After capped so a confused server cannot stall us for hours,
    and the backoff capped at `BACKOFF_MAX` (here, as urllib3 1.26 takes no `backoff_max`)."""

    def get_backoff_time(self) -> float:
        return min(BACKOFF_MAX, super().get_backoff_time())

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER)


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _retry_policy(retries: int, backoff_factor: float, methods: frozenset[str] = IDEMPOTENT
                  ) -> Retry:
    # Few connect and read retries: a refused connection or a hung server should fail within
    # seconds, not minutes; transient answers (408/429/5xx) get the full count.
    return _Retry(
        total=retries, connect=min(retries, 3), read=min(retries, 2), status=retries, other=0,
        backoff_factor=backoff_factor,
        status_forcelist=RETRY_STATUSES, allowed_methods=methods,
        respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
    )


def configured_timeout(default: tuple[float, float] = DEFAULT_TIMEOUT) -> tuple[float, float]:
    """(connect, read) seconds: `TIMEOUT_ENV` when set ("READ" or "CONNECT,READ"), else
    `default`. Read once per session, so the special remote and xnat-update's helper processes
    take it from the environment they inherit; a malformed value is an XnatError that says so."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return default
    try:
        numbers = [float(part) for part in value.split(",")]
        if len(numbers) not in (1, 2) or min(numbers) <= 0:
            raise ValueError(value)
    except ValueError:
        raise XnatError(f"{TIMEOUT_ENV}={value!r} is not a timeout; set it to seconds, e.g. 30, "
                        "or connect,read seconds, e.g. 5,30") from None
    if len(numbers) == 1:
        return (min(default[0], numbers[0]), numbers[0])
    return (numbers[0], numbers[1])


def _tls_context() -> ssl.SSLContext:
    """The certificates a server's must chain to, as the environment names them.

    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (a file or a directory) replace every other
    source, as with requests and curl. Otherwise the system's store (which OpenSSL lets
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` replace) and certifi's bundle, when installed, are both
    trusted: a site CA added to the system store then works as it does for curl.
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        try:
            return ssl.create_default_context(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            raise XnatError(f"cannot read the CA bundle {bundle} that REQUESTS_CA_BUNDLE or "
                            f"CURL_CA_BUNDLE names ({exc.__class__.__name__}); point it at a "
                            "PEM file of CA certificates") from None
    context = ssl.create_default_context()
    try:
        import certifi
        context.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError, ssl.SSLError):  # the system's store alone then
        pass
    return context


def _pool_manager(base_url: str, pool_size: int) -> urllib3.PoolManager:
    """Connection pools for `base_url` with the proxy and CA certificates the environment names.

    Read once here, as requests would on every request: ``http(s)_proxy``/``no_proxy`` (user
    and password in a proxy URL become Proxy-Authorization) and the trust of `_tls_context`.
    """
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if urlsplit(base_url).scheme == "https":
        context = _tls_context()
        if _URLLIB3_1:
            # urllib3 1.26 passes ssl no server_hostname for an IP address, so ssl's own check
            # refuses to connect ("check_hostname requires server_hostname"); with it off,
            # urllib3 1.26 matches the certificate to the host itself, IP addresses included.
            context.check_hostname = False
        tls["ssl_context"] = context
    pools = {"num_pools": 4, "maxsize": pool_size, **tls}
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return _with_bounded_drains(urllib3.PoolManager(**pools))
    if "://" not in proxy:
        proxy = "http://" + proxy
    proxy_parts = urlsplit(proxy)
    if proxy_parts.scheme.startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as with requests
        return _with_bounded_drains(SOCKSProxyManager(proxy, **pools))
    headers = None
    if proxy_parts.username is not None:
        user = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
        headers = urllib3.util.make_headers(proxy_basic_auth=user)
    return _with_bounded_drains(
        urllib3.ProxyManager(safe_url(proxy), proxy_headers=headers, **pools))


def _timeout(seconds: tuple[float, float]) -> urllib3.Timeout:
    return urllib3.Timeout(connect=seconds[0], read=seconds[1])


def _transport_error(exc: Exception, method: str, url: str) -> XnatError:
    """urllib3's exception for "no HTTP answer", as the one-line error to show."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(exc, LocationValueError):
        return XnatError(f"{method} {safe_url(url)} failed ({exc.__class__.__name__}); check "
                         "the server URL", None, url)
    if isinstance(reason, urllib3.exceptions.SSLError):
        return _tls_error(reason, method, url)
    return ServerUnreachableError(
        f"cannot reach {safe_url(url)} ({reason.__class__.__name__}, retried); check the "
        "server URL and the network, then try again", None, url)


def _tls_error(exc: Exception, method: str, url: str) -> XnatError:
    """An untrusted certificate says so and how to trust it; other TLS failures name theirs."""
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    cause: BaseException | None = exc
    for _ in range(8):  # urllib3 wraps ssl's error in its own, as an argument or a cause
        if cause is None or isinstance(cause, ssl.SSLCertVerificationError):
            break
        cause = cause.__cause__ or cause.__context__ or next(
            (arg for arg in cause.args if isinstance(arg, BaseException)), None)
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = getattr(cause, "verify_message", "") or "verification failed"
        return TLSError(
            f"the TLS certificate of {where} is not trusted ({why}); if the server uses a "
            "private CA, point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at its certificate file, "
            "or add that CA to the system's trust store", None, url)
    return TLSError(f"TLS error for {method} {safe_url(url)} ({exc.__class__.__name__}: "
                    f"{exc}); check that the URL's scheme and port are the server's HTTPS",
                    None, url)


class Answer:
    """One HTTP answer: status, headers and body, without urllib3 showing through.

    A streamed answer (a file) leaves its body on the connection for `chunks()`; any other
    answer arrives read. `close()` gives the connection back, or drops it when a streamed body
    was left unread (its rest would be read as the next answer).
    """

    __slots__ = ("status", "reason", "headers", "url", "_raw", "_streamed")

    def __init__(self, raw: urllib3.BaseHTTPResponse, url: str, streamed: bool) -> None:
        self.status: int = raw.status
        self.reason: str = raw.reason or ""
        self.headers = raw.headers  # case-insensitive
        self.url = url
        self._raw = raw
        self._streamed = streamed

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def head(self) -> bytes:
        """The body if it has been read already, else nothing (never blocks on the network)."""
        return b"" if self._streamed else (self._raw.data or b"")

    @property
    def content(self) -> bytes:
        """The whole body (read now for a streamed answer; b"" if the connection fails)."""
        if not self._streamed:
            return self._raw.data or b""
        try:
            return self._raw.read()
        except _TransportError:
            return b""

    def start(self, size: int) -> bytes:
        """At most the first `size` bytes of the body: enough for a session id or a message,
        however much the server goes on sending (b"" if the connection fails)."""
        if not self._streamed:
            return (self._raw.data or b"")[:size]
        try:
            return self._raw.read(size)
        except _TransportError:
            return b""

    @property
    def redirects(self) -> list[str]:
        """Where the redirects that urllib3 followed to this answer pointed, in order."""
        retries = getattr(self._raw, "retries", None)
        history = retries.history if retries is not None else ()
        return [step.redirect_location for step in history if step.redirect_location]

    def chunks(self, size: int) -> Iterator[bytes]:
        """The body in pieces of up to `size` bytes as they arrive; BodyBrokeOff when the
        connection fails. Each piece is handed on before the next read (urllib3's `stream`
        would drop what it buffered when a read fails: a body shorter than announced)."""
        try:
            while True:
                chunk = self._raw.read1(size, decode_content=True)
                if not chunk:
                    return
                yield chunk
        except _TransportError as exc:
            raise BodyBrokeOff(exc.__class__.__name__) from exc

    def close(self) -> None:
        self._raw.close()         # a body read to its end already gave the connection back
        self._raw.release_conn()  # an unfinished one: its closed connection frees a pool slot

    def __enter__(self) -> "Answer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Session:
    """A logged-in conversation with one XNAT server; thread-safe.

    `credential` None or anonymous means no authentication (an open site's guest account).
    Login happens on the first request (or an explicit `login()`), so creating one is free.
    `timeout` None is `configured_timeout()`.
    """

    def __init__(self, base_url: str, credential: Credential | None = None, *,
                 timeout: tuple[float, float] | None = None, retries: int = 5,
                 backoff_factor: float = 0.3, pool_size: int = 16) -> None:
        parts = urlsplit(base_url.strip())
        path = parts.path.rstrip("/")
        if path.endswith("/data"):
            path = path[: -len("/data")]
        self.base_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.credential = credential
        self.retries = retries
        self.backoff_factor = backoff_factor
        self._retry = _retry_policy(retries, backoff_factor)
        # Logging in again is harmless (at worst an extra server session that idles out), so
        # the login POST is retried like an idempotent request.
        self._login_retry = _retry_policy(retries, backoff_factor, IDEMPOTENT | {"POST"})
        # One attempt, for requests whose caller has a cheaper way round a failure
        self._no_retry = _retry_policy(0, backoff_factor)
        # A bad setting in the environment (timeout, CA bundle) fails the first request, like
        # any XnatError, so that every caller reports it as one line without handling it here.
        self._setup_error: XnatError | None = None
        try:
            self._timeout = _timeout(configured_timeout() if timeout is None else timeout)
            self._pools = _pool_manager(self.base_url, pool_size)
            self.max_listing_bytes = resultset.max_listing_bytes()
        except XnatError as exc:
            self._setup_error = exc
            self.max_listing_bytes = resultset.DEFAULT_MAX_LISTING_BYTES
            self._timeout = _timeout(DEFAULT_TIMEOUT)
            self._pools = urllib3.PoolManager()
        self._origin = _origin(self.base_url)
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._generation = 0   # bumped by every login; a 401 renews only the session it saw
        self._logged_in = False
        self._cookie = ""      # the Cookie header: what the login answer set, nothing else
        self._unanswered = 0   # requests in a row that got no HTTP answer
        self._given_up: ServerUnreachableError | None = None
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)

    @property
    def anonymous(self) -> bool:
        return self.credential is None or self.credential.anonymous

    def url(self, rest_path: str) -> str:
        """The absolute URL of a REST path ("/data/..." or an absolute URL as is)."""
        if rest_path.startswith(("http://", "https://")):
            return rest_path
        if not rest_path.startswith("/"):
            rest_path = "/" + rest_path
        if not rest_path.startswith("/data/") and rest_path != "/data":
            rest_path = "/data" + rest_path
        return self.base_url + rest_path

    # ---------------------------------------------------------------- session lifecycle

    def login(self) -> None:
        """POST /data/JSESSION once; AuthenticationError, NotXnatError or ServerUnreachableError."""
        with self._lock:
            if not self._logged_in:
                self._login_locked()

    def _login_locked(self) -> None:
        url = self.url("/data/JSESSION")
        headers = {}
        if not self.anonymous:
            headers = urllib3.util.make_headers(
                basic_auth=f"{self.credential.user}:{self.credential.password}")
        # The old session's cookie is not sent: the server would take it over the password.
        answer = self._send("POST", url, headers=headers, stream=True, cookie=False,
                            retry=self._login_retry)
        with answer:
            if answer.status in NOT_XNAT_LOGIN_STATUSES:  # XNAT always takes this POST
                raise NotXnatError(
                    f"HTTP {answer.status} for POST {url}: no XNAT REST API there; check the "
                    "server URL (include the context path, e.g. https://host/xnat)",
                    answer.status, url)
            self._check(answer, "POST", url)
            session_id = answer.start(MESSAGE_BYTES).decode("ascii", "replace").strip()
            if not session_id or len(session_id) > 256 or any(c.isspace() for c in session_id):
                raise NotXnatError(f"POST {url} did not answer with an XNAT session id; "
                                   "check that the URL is an XNAT server", answer.status, url)
            cookies = _set_cookies(answer.headers.getlist("Set-Cookie"))
        cookies.setdefault("JSESSIONID", session_id)
        # Only the login answer's cookies are kept: the Set-Cookie of a later answer (a 401's
        # fresh anonymous session, say) could otherwise replace a session another thread has
        # just renewed.
        self._cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
        self._generation += 1
        self._logged_in = True

    def close(self) -> None:
        """End the server session (DELETE /data/JSESSION, errors ignored) and the HTTP pools."""
        with self._lock:
            if self._logged_in:
                self._logged_in = False
                try:
                    self._send("DELETE", self.url("/data/JSESSION"), timeout=CLOSE_TIMEOUT).close()
                except XnatError:
                    pass
            self._pools.clear()

    def _renew(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:  # nobody renewed it since this request started
                self._login_locked()

    # ---------------------------------------------------------------- requests

    def _send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              stream: bool = False, timeout: tuple[float, float] | None = None,
              cookie: bool = True, retry: Retry | None = None,
              compressed: bool = False) -> Answer:
        """Every request of the client goes out here; "no HTTP answer" becomes an XnatError.

        A streamed GET (a file) asks for the body as stored, so Content-Length and the MD5
        are the file's; listings (`compressed`, or not streamed) accept compression. The
        session cookie goes only to the server's own origin. Once the server is given up on
        (see `_count`), nothing is sent.
        """
        if self._setup_error is not None:
            raise XnatError(str(self._setup_error), None, url)
        if self._given_up is not None:
            raise ServerUnreachableError(str(self._given_up), None, url)
        sent = {"User-Agent": USER_AGENT, "Accept": "*/*",
                "Accept-Encoding": "identity" if stream and not compressed else "gzip, deflate"}
        if cookie and self._cookie and _origin(url) == self._origin:
            sent["Cookie"] = self._cookie
        if headers:
            sent.update(headers)
        try:
            raw = self._pools.urlopen(
                method, url, headers=sent, retries=retry or self._retry, redirect=True,
                timeout=self._timeout if timeout is None else _timeout(timeout),
                preload_content=not stream, decode_content=True,
                # urllib3 2's default; 1.26 would end a body shorter than announced quietly
                enforce_content_length=True)
        except _TransportError as exc:
            error = _transport_error(exc, method, url)
            self._count(error)
            raise error from exc
        self._count(None)
        return Answer(raw, url, stream)

    def _count(self, error: XnatError | None) -> None:
        """Give the server up after `UNREACHABLE_AFTER` requests in a row got no HTTP answer
        (each after urllib3's own retries); any answer starts the count again. A TLS failure
        is an answer of sorts: it is about trust, not reachability."""
        with self._count_lock:
            if error is None or not isinstance(error, ServerUnreachableError) \
                    or isinstance(error, TLSError):
                self._unanswered = 0
                return
            self._unanswered += 1
            if self._unanswered >= UNREACHABLE_AFTER and self._given_up is None:
                self._given_up = ServerUnreachableError(
                    f"{safe_url(self.base_url)} stopped answering ({self._unanswered} requests "
                    f"in a row got no answer; the last: {error}); nothing more is tried in "
                    "this run", None, self.base_url)

    @property
    def given_up(self) -> ServerUnreachableError | None:
        """The error that ended this session's trying, once the server stopped answering."""
        return self._given_up

    def request(self, method: str, rest_path: str, *, params: dict[str, str] | None = None,
                stream: bool = False, compressed: bool = False, retry: bool = True) -> Answer:
        """A 2xx or 3xx answer to `method` `rest_path`, logged in; else the XnatError it means.

        A 401, or a login page where data was asked for, renews the XNAT session once and sends
        again. `stream` leaves the body unread for `Answer.chunks` (a GET of a file, as stored,
        or with `compressed` a listing). Without `retry`, a 5xx or a lost connection is not
        sent again (an archive: its files have their own retries). The caller closes the answer.
        """
        if not self._logged_in:
            self.login()
        url = self.url(rest_path)
        if params:
            url += "?" + urlencode(params)
        for attempt in range(2):
            generation = self._generation
            started = time.monotonic()
            answer = self._send(method, url, stream=stream, compressed=compressed,
                                retry=None if retry else self._no_retry)
            if attempt == 1 or not (answer.status == 401 or self._is_login_page(answer)):
                break
            answer.close()
            self._renew(generation)
        try:
            self._check(answer, method, url)
        except BaseException:
            answer.close()
            raise
        if stream and answer.status < 300:  # up to the headers: what any request costs
            with self._count_lock:
                self._round_trips.append(time.monotonic() - started)
        return answer

    @property
    def round_trip(self) -> float | None:
        """Seconds from sending a request to its answer's headers: the least of the last
        ROUND_TRIPS_KEPT streamed data requests answered (logins not counted), None before
        the first. What one more request costs beyond its bytes (the link's round trip and
        the server's own work per request), without the wait behind other requests that
        parallel downloads add."""
        with self._count_lock:
            return min(self._round_trips, default=None)

    def get_json(self, rest_path: str, params: dict[str, str] | None = None) -> Any:
        """The decoded ``format=json`` answer of a GET (an item document: held whole, so read
        up to `max_listing_bytes`)."""
        with self.request("GET", rest_path, params={"format": "json", **(params or {})},
                          stream=True, compressed=True) as answer:
            try:
                body = resultset.read_capped(answer.chunks(LISTING_CHUNK),
                                             self.max_listing_bytes, answer.url)
            except BodyBrokeOff as exc:
                raise _broke_off(answer.url, exc) from exc
            try:
                return json.loads(body)
            except ValueError as exc:
                raise NotXnatError(f"GET {safe_url(answer.url)} did not answer JSON; check that "
                                   "the URL is an XNAT server", answer.status, answer.url) from exc

    def iter_rows(self, rest_path: str, params: dict[str, str] | None = None
                  ) -> Iterator[dict[str, Any]]:
        """The rows of an XNAT listing (``ResultSet.Result``) as they arrive, in order, so that
        memory stays flat however many there are; XNAT sends every value as text. The request
        goes out at the first row asked for. A body that breaks off before its first row is
        asked for again (urllib3 retried only up to the headers); later, it is an XnatError."""
        params = {"format": "json", **(params or {})}
        for attempt in range(3):
            yielded = 0
            with self.request("GET", rest_path, params=params, stream=True,
                              compressed=True) as answer:
                try:
                    for row in resultset.iter_rows(answer.chunks(LISTING_CHUNK),
                                                   self.max_listing_bytes, answer.url):
                        yielded += 1
                        yield row
                    return
                except BodyBrokeOff as exc:
                    if yielded or attempt == 2:
                        raise _broke_off(answer.url, exc) from exc

    def rows(self, rest_path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The rows of an XNAT listing (``ResultSet.Result``), all at once."""
        return list(self.iter_rows(rest_path, params))

    # ---------------------------------------------------------------- errors

    @staticmethod
    def _is_login_page(answer: Answer) -> bool:
        return (200 <= answer.status < 300 and is_login_page(
            answer.header("Content-Type"), urlsplit(answer.url).path, answer.head))

    def _check(self, answer: Answer, method: str, url: str) -> None:
        """Raise what an error status, or a login page where data was asked for, means."""
        if answer.status >= 400:
            raise self._status_error(answer, method, url)
        if self._is_login_page(answer):
            raise login_page_error(answer.status, method, url, self.auth_hint())

    def auth_hint(self) -> str:
        """How to make the server accept us: which credential to fix, or to provide one."""
        if self.anonymous:
            return "this site needs a login: " + how_to_provide(
                default_credential_name(self.base_url), self.base_url) + \
                ", and use it instead of anonymous"
        cred = self.credential
        if _ALIAS.fullmatch(cred.user or ""):
            return (f"user '{cred.user}' is an alias token (credential '{cred.name}', from "
                    f"{cred.source or 'unknown'}), which has expired or was revoked; `datalad "
                    "xnat-credential --token` in the dataset stores a new one")
        return (f"check user '{cred.user}' and the password or token of credential '{cred.name}' "
                f"(from {cred.source or 'unknown'}); " + how_to_provide(cred.name))

    def _status_error(self, answer: Answer, method: str, url: str) -> XnatError:
        status = answer.status
        user = "anonymous" if self.anonymous else f"user '{self.credential.user}'"
        if status == 401:
            who = "anonymous access" if self.anonymous else user
            return AuthenticationError(
                f"HTTP 401 Unauthorized for {safe_url(url)}: the server refused {who}; "
                + self.auth_hint(), 401, url)
        detail = ""
        if method != "HEAD":  # the body is only decoration for the message
            match = _H3.search(answer.start(MESSAGE_BYTES).decode("utf-8", "replace"))
            detail = f" ({match.group(1).strip()})" if match else ""
        where = f"{method} {safe_url(url)}"
        if status == 403:
            return PermissionDeniedError(
                f"HTTP 403 Forbidden for {where}{detail}: {user} may not read this; ask the "
                "project owner for access", status, url)
        if status == 404:
            return NotFoundError(
                f"HTTP 404 Not Found for {where}{detail}: it does not exist or {user} cannot see "
                "it (XNAT answers 404 for private projects); check the IDs and access", status, url)
        if status in OVERLOAD_STATUSES:
            return XnatError(
                f"HTTP {status} {answer.reason} for {where}{detail} (retried {self.retries} "
                "times): the server is overloaded or down; try again later", status, url)
        if status >= 500:
            retried = f" (retried {self.retries} times)" if status in RETRY_STATUSES else ""
            return XnatError(
                f"HTTP {status} {answer.reason} for {where}{detail}{retried}: the server failed; "
                "try again later, or ask the XNAT administrators if it persists", status, url)
        return XnatError(f"HTTP {status} {answer.reason} for {where}{detail}", status, url)


def _broke_off(url: str, exc: BodyBrokeOff) -> XnatError:
    return XnatError(f"GET {safe_url(url)} broke off ({exc}) in the middle of its answer; "
                     "try again", None, url)


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what a cookie set without a Domain is bound to here."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a port: urllib3 refuses the URL itself
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _set_cookies(headers: list[str]) -> dict[str, str]:
    """name -> value of Set-Cookie headers, values as sent (quotes kept); unparsable ones skipped."""
    cookies: dict[str, str] = {}
    for header in headers:
        jar = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            continue
        for name, morsel in jar.items():
            if morsel["max-age"] != "0":
                cookies[name] = morsel.coded_value
    return cookies
