"""The HTTP layer: routing, authentication, XNAT's representations, faults and counters.

One `App` holds the state of an emulated site; `make_server(app, host, port)` returns a
`ThreadingHTTPServer` speaking HTTP/1.1 with keep-alive whose handler dispatches to the app.
"""

from __future__ import annotations

import csv
import email.utils
import io
import json
import re
import socket
import sys
import tarfile
import threading
import time
import traceback
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Iterator
from urllib.parse import parse_qsl, unquote_plus, urlsplit
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

from .auth import Auth
from .counters import Counters
from .faults import Faults
from .model import Experiment, FileEntry, Project, Resource, Scan, Site, Subject

INTERACTIVE_AGENTS = (r".*MSIE.*", r".*Mozilla.*", r".*AppleWebKit.*", r".*Opera.*")
LOGIN_PATH = "/app/template/Login.vm"

LEGACY_VERSION = "1.6.5"

BUILD_INFO = {
    "version": "1.8.10", "buildNumber": "emulator", "buildDate": "Mon Jan 15 10:00:00 UTC 2024",
    "sha": "0000000000", "isDirty": "false", "commit": "0", "tag": "1.8.10",
    "shaFull": "0000000000000000000000000000000000000000", "branch": "emulator",
    "timestamp": "1705312800000",
}

CONTENT_TYPES = {
    "bmp": "image/bmp", "gif": "image/gif", "html": "text/html", "htm": "text/html",
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "pdf": "application/pdf", "png": "image/png",
    "svg": "image/svg+xml", "tif": "image/tiff", "tiff": "image/tiff", "txt": "text/plain",
    "xml": "text/xml",
}

# query keys that are never column filters
RESERVED = {"format", "columns", "sortBy", "sortOrder", "limit", "offset", "xsiType",
            "accept-not-found", "all", "structure", "compression", "file_format",
            "file_content", "locator", "includeHistory", "CSRF", "recursive", "XNAT_CSRF",
            "handler", "concealHiddenFields", "event_reason", "listContents", "index"}

_STATUS_TEXT = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message or _STATUS_TEXT.get(status, "Error")


class AuthRequired(Exception):
    """No usable identity: 401 for scripts, a login redirect for browsers."""

    def __init__(self, reason: str = "no credentials", bad_credentials: bool = False) -> None:
        super().__init__(reason)
        self.bad_credentials = bad_credentials


def status_page(status: int, message: str) -> bytes:
    if status >= 500:
        sec = f"10.5.{status - 499}"
    else:
        sec = f"10.4.{status - 399}"
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{xml_escape(message)}</h3><p>You can get technical details "
        f"<a href=\"http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html#sec{sec}\">here</a>.<br>\n"
        "Please continue your visit at our <a href=\"/\">home page</a>.\n</p>\n</body>\n</html>\n"
    ).encode("utf-8")


LOGIN_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head>\n<title>XNAT</title>\n</head>\n<body id=\"page_body\">\n"
    "<!-- BEGIN xnat-templates/screens/Login.vm -->\n"
    "<div id=\"login_area\">\n<form name=\"form1\" method=\"post\" action=\"/login\" "
    "id=\"login_form\">\n<p><label for=\"username\">User</label>"
    "<input type=\"text\" id=\"username\" name=\"username\"></p>\n"
    "<p><label for=\"password\">Password</label>"
    "<input type=\"password\" id=\"password\" name=\"password\"></p>\n"
    "<p><button id=\"loginButton\" type=\"submit\">Login</button></p>\n</form>\n</div>\n"
    "<!-- END xnat-templates/screens/Login.vm -->\n</body>\n</html>\n"
).encode("utf-8")


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def content_type_for(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


def _like(pattern: str, value: str) -> bool:
    """XNAT filter matching: comma = OR, `*`/`%` wildcards, case-insensitive."""
    value = value.lower()
    for alt in pattern.split(","):
        alt = alt.strip().lower()
        if "*" in alt or "%" in alt:
            rx = "^" + ".*".join(re.escape(p) for p in re.split(r"[*%]", alt)) + "$"
            if re.match(rx, value, re.S):
                return True
        elif alt == value:
            return True
    return False


_MIME_FORMATS = {"application/json": "json", "text/json": "json", "text/xml": "xml",
                 "application/xml": "xml", "text/csv": "csv", "text/html": "html",
                 "application/zip": "zip", "application/x-tar": "tar",
                 "application/x-gzip": "tar.gz", "application/gzip": "tar.gz"}


class Response:
    def __init__(self, status: int = 200, body: bytes = b"", ctype: str = "text/plain",
                 headers: list[tuple[str, str]] | None = None, stream=None,
                 length: int | None = None) -> None:
        self.status = status
        self.body = body
        self.ctype = ctype
        self.headers = list(headers or [])
        self.stream = stream          # iterator of bytes (sent with Content-Length or chunked)
        self.length = length          # Content-Length for a stream, if known
        self.fault: str | None = None  # download fault to apply while streaming
        self.offset = 0                # first byte of a blob stream (Range)


class Request:
    def __init__(self, method: str, raw_path: str, query: dict[str, str], headers, body: bytes,
                 prefix: str) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.body = body
        self.prefix = prefix               # "/data" or "/data/archive"
        self.user: str | None = None
        self.session_id: str | None = None   # the session this request used or created
        self.new_session = False
        self.set_cookies: list[str] = []
        self.base_url = ""

    @property
    def fmt(self) -> str:
        f = self.query.get("format")
        if f:
            f = f.lower()
            return _MIME_FORMATS.get(f, f)
        accept = self.headers.get("Accept", "") or ""
        if "application/json" in accept:
            return "json"
        return ""


# ---------------------------------------------------------------------------------------------
# routing
# ---------------------------------------------------------------------------------------------

class Target:
    """A parsed /data path: the entity steps and the action."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []     # (kind, token)
        self.action = ""
        self.template = ""
        self.resource: str | None = None
        self.path: str | None = None
        self.path_is_dir = False
        self.extra: dict[str, str] = {}


def parse_data_path(segs: list[str]) -> Target:
    """Parse the (decoded) segments below /data[/archive]. Raises HTTPError(404) if unmatched."""
    t = Target()
    tpl: list[str] = []
    pos = [0]

    def take() -> str | None:
        if pos[0] < len(segs):
            pos[0] += 1
            return segs[pos[0] - 1]
        return None

    word = take()
    if word == "projects":
        tpl.append("projects")
        p = take()
        if p is None:
            t.action = "projects"
        else:
            tpl.append("{P}")
            t.steps.append(("project", p))
            _project_tail(t, tpl, take)
    elif word == "subjects":
        tpl.append("subjects")
        s = take()
        if s is None:
            t.action = "subjects"
        else:
            tpl.append("{S}")
            t.steps.append(("subject", s))
            _subject_tail(t, tpl, take)
    elif word == "experiments":
        tpl.append("experiments")
        e = take()
        if e is None:
            t.action = "experiments"
        else:
            tpl.append("{E}")
            t.steps.append(("experiment", e))
            _experiment_tail(t, tpl, take)
    else:
        raise HTTPError(404, "The server has not found anything matching the request URI")
    if pos[0] < len(segs):
        raise HTTPError(404, "The server has not found anything matching the request URI")
    t.template = "/" + "/".join(tpl)
    return t


def _project_tail(t, tpl, take) -> None:
    w = take()
    if w is None:
        t.action = "project"
        return
    if w == "accessibility":
        tpl.append(w)
        t.action = "accessibility"
        return
    if w == "subjects":
        tpl.append(w)
        s = take()
        if s is None:
            t.action = "subjects"
            return
        tpl.append("{S}")
        t.steps.append(("subject", s))
        _subject_tail(t, tpl, take)
        return
    if w == "experiments":
        tpl.append(w)
        e = take()
        if e is None:
            t.action = "experiments"
            return
        tpl.append("{E}")
        t.steps.append(("experiment", e))
        _experiment_tail(t, tpl, take)
        return
    _level_tail(t, tpl, take, w)


def _level_tail(t, tpl, take, w) -> None:
    """`resources[/{R}[/files[/path]]]` or `files[/path]`, starting at the word `w`."""
    if w == "files":
        tpl.append("files")
        _files_after(t, tpl, take)
        return
    if w != "resources":
        raise HTTPError(404, "The server has not found anything matching the request URI")
    tpl.append("resources")
    r = take()
    if r is None:
        t.action = "resources"
        return
    tpl.append("{R}")
    t.resource = r
    w2 = take()
    if w2 is None:
        t.action = "resource"
        return
    if w2 != "files":
        raise HTTPError(404, "The server has not found anything matching the request URI")
    tpl.append("files")
    _files_after(t, tpl, take)


def _files_after(t, tpl, take) -> None:
    rest = []
    while True:
        s = take()
        if s is None:
            break
        rest.append(s)
    if not rest or rest == [""]:
        t.action = "files"
        return
    if rest[-1] == "":
        t.action = "files"
        t.path = "/".join(s for s in rest if s != "")
        t.path_is_dir = True
        tpl.append("{path}/")
        return
    t.action = "file"
    t.path = "/".join(rest)
    tpl.append("{path}")


def _subject_tail(t, tpl, take) -> None:
    w = take()
    if w is None:
        t.action = "subject"
        return
    if w == "experiments":
        tpl.append(w)
        e = take()
        if e is None:
            t.action = "experiments"
            return
        tpl.append("{E}")
        t.steps.append(("experiment", e))
        _experiment_tail(t, tpl, take)
        return
    _level_tail(t, tpl, take, w)


def _experiment_tail(t, tpl, take) -> None:
    w = take()
    if w is None:
        t.action = "experiment"
        return
    if w == "scans":
        tpl.append(w)
        sc = take()
        if sc is None:
            t.action = "scans"
            return
        tpl.append("{SC}")
        t.steps.append(("scan", sc))
        w2 = take()
        if w2 is None:
            t.action = "scan"
            return
        _level_tail(t, tpl, take, w2)
        return
    if w == "assessors":
        tpl.append(w)
        a = take()
        if a is None:
            t.action = "assessors"
            return
        tpl.append("{A}")
        t.steps.append(("assessor", a))
        w2 = take()
        if w2 is None:
            t.action = "assessor"
            return
        if w2 in ("in", "out"):
            tpl.append(w2)
            t.extra["io"] = w2
            w2 = take()
            if w2 is None:
                raise HTTPError(404, "The server has not found anything matching the request URI")
        _level_tail(t, tpl, take, w2)
        return
    if w == "projects":
        tpl.append(w)
        t.action = "experiment_projects"
        return
    _level_tail(t, tpl, take, w)


# ---------------------------------------------------------------------------------------------
# the application
# ---------------------------------------------------------------------------------------------

class Scope:
    """Entities resolved from a Target, with the path context for URIs and labels."""

    def __init__(self) -> None:
        self.project: Project | None = None
        self.subject: Subject | None = None
        self.experiments: list[Experiment] = []
        self.scans: list[Scan] = []
        self.assessor: Experiment | None = None
        self.via_project = False


class App:
    def __init__(self, site: Site, *, require_login: bool = True, session_timeout: float = 900.0,
                 faults: Faults | None = None, counters: Counters | None = None,
                 users: dict[str, str] | None = None, admins: Iterable[str] = ("admin",),
                 interactive_agents: Iterable[str] = INTERACTIVE_AGENTS,
                 context_path: str = "", honor_range: bool = False,
                 max_sessions_per_user: int = 0, checksums: bool = True,
                 version_mode: str = "modern", verbose: bool = False) -> None:
        if version_mode not in ("modern", "legacy"):
            raise ValueError("version_mode is 'modern' or 'legacy'")
        self.site = site
        self.checksums = checksums
        self.version_mode = version_mode
        self.context_path = ("/" + context_path.strip("/")) if context_path.strip("/") else ""
        self.honor_range = honor_range
        self.require_login = require_login
        self.faults = faults or Faults(site.seed)
        self.counters = counters or Counters()
        self.auth = Auth(dict(users or {}), set(admins), session_timeout, max_sessions_per_user)
        self.interactive = [re.compile(p) for p in interactive_agents]
        self.verbose = verbose

    # -- permissions ------------------------------------------------------------------------
    def is_admin(self, user: str | None) -> bool:
        return user in self.auth.admins

    def can_see(self, user: str, p: Project) -> bool:
        return (self.is_admin(user) or p.accessibility in ("public", "protected")
                or user in p.members)

    def can_read(self, user: str, p: Project) -> bool:
        return self.is_admin(user) or p.accessibility == "public" or user in p.members

    def can_read_experiment(self, user: str, e: Experiment) -> bool:
        return any(self.can_read(user, self.site.projects[pid]) for pid in e.labels)

    def can_read_subject(self, user: str, s: Subject) -> bool:
        return any(self.can_read(user, self.site.projects[pid]) for pid in s.labels)

    def is_browser(self, req: Request) -> bool:
        ua = req.headers.get("User-Agent", "") or ""
        return any(rx.match(ua) for rx in self.interactive)

    # -- authentication ---------------------------------------------------------------------
    def authenticate(self, req: Request, allow_guest: bool = True) -> str:
        cookie_sid = None
        cookie_header = req.headers.get("Cookie")
        if cookie_header:
            for part in cookie_header.split(";"):
                k, _, v = part.strip().partition("=")
                if k == "JSESSIONID":
                    cookie_sid = v.strip().strip('"')
        dead_cookie = False
        if cookie_sid:
            s = self.auth.use_session(cookie_sid, int(self.faults.expire_sessions_after or 0))
            if s is not None:
                req.session_id = s.id
                self._expiration_cookie(req)
                return s.user
            dead_cookie = True
        authz = req.headers.get("Authorization") or ""
        if authz[:6].lower() == "basic ":
            import base64
            try:
                raw = base64.b64decode(authz[6:].strip()).decode("utf-8")
            except Exception:
                raise AuthRequired("garbled credentials", bad_credentials=True)
            user, _, password = raw.partition(":")
            who = self.auth.check_password(user, password)
            if who is None:
                raise AuthRequired("bad credentials", bad_credentials=True)
            s = self.auth.new_session(who)
            if s is None:
                raise AuthRequired("too many sessions", bad_credentials=True)
            req.session_id = s.id
            req.new_session = True
            req.set_cookies.append(f"JSESSIONID={s.id}; Path={self.context_path or '/'}; HttpOnly")
            self._expiration_cookie(req)
            return who
        if dead_cookie:
            raise AuthRequired("invalid session")
        if self.require_login or not allow_guest:
            raise AuthRequired("no credentials")
        return "guest"

    def _expiration_cookie(self, req: Request) -> None:
        now_ms = int(time.time() * 1000)
        tmo_ms = int(self.auth.session_timeout * 1000)
        req.set_cookies.append(
            f'SESSION_EXPIRATION_TIME="{now_ms},{tmo_ms}"; Path={self.context_path or "/"}')

    def ensure_session(self, req: Request, user: str) -> str:
        """The session id for JSESSION/auth endpoints, creating one when the request had none."""
        if req.session_id is None:
            s = self.auth.new_session(user)
            if s is None:
                raise AuthRequired("too many sessions", bad_credentials=True)
            req.session_id = s.id
            req.new_session = True
            req.set_cookies.append(f"JSESSIONID={s.id}; Path={self.context_path or '/'}; HttpOnly")
            self._expiration_cookie(req)
        return req.session_id

    # -- dispatch ---------------------------------------------------------------------------
    def route(self, method: str, path: str) -> tuple[str, str, object]:
        """(template, kind, payload) for a path. kind tells dispatch what to do."""
        raw_segs = path.split("/")[1:]
        segs = [unquote_plus(s) for s in raw_segs]
        if path in ("/", ""):
            return "/", "root", None
        if path.rstrip("/") == LOGIN_PATH:
            return LOGIN_PATH, "login_page", None
        if segs[0] == "xapi":
            rest = "/".join(segs[1:]).rstrip("/")
            if rest == "siteConfig/buildInfo":
                return "/xapi/siteConfig/buildInfo", "build_info", None
            if rest.startswith("users/active/") and rest.count("/") == 2:
                return "/xapi/users/active/{u}", "xapi_users_active", rest.rsplit("/", 1)[1]
            return "/xapi/" + rest, "xapi_unknown", None
        if segs[0] in ("data", "REST"):
            prefix = "/" + segs[0]
            rest = segs[1:]
            if rest and rest[0] == "archive":
                prefix += "/archive"
                rest = rest[1:]
            if len(rest) > 1 and rest[-1] == "" and "files" not in rest[:-1]:
                rest = rest[:-1]
            joined = "/".join(rest)
            if joined in ("JSESSION", "JSESSION/"):
                return prefix + "/JSESSION", "jsession", None
            if joined == "services/auth":
                return prefix + "/services/auth", "services_auth", None
            if joined == "auth":
                return prefix + "/auth", "data_auth", None
            if joined == "version":
                return prefix + "/version", "version", None
            if rest[:2] == ["services", "tokens"]:
                tail = rest[2:]
                if tail == ["issue"]:
                    return prefix + "/services/tokens/issue", "token_issue", None
                if len(tail) == 3 and tail[:2] == ["issue", "user"]:
                    return prefix + "/services/tokens/issue/user/{u}", "token_issue", tail[2]
                if len(tail) == 3 and tail[0] in ("validate", "invalidate"):
                    return (prefix + f"/services/tokens/{tail[0]}/{{a}}/{{s}}",
                            "token_" + tail[0], (tail[1], tail[2]))
                if tail == ["show"]:
                    return prefix + "/services/tokens/show", "token_show", None
                return prefix + "/services/tokens/" + "/".join(tail), "unknown", None
            try:
                target = parse_data_path(rest)
            except HTTPError as exc:
                return prefix + "/" + "/".join(raw_segs[len(prefix.split("/")) - 1:]), \
                    "unknown", exc
            return prefix + target.template, "data", target
        return path, "not_data", None

    def handle(self, req: Request, kind: str, payload) -> Response:
        browser = self.is_browser(req)
        m = req.method
        try:
            if kind == "root":
                return self._root(req)
            if kind == "login_page":
                return Response(200, LOGIN_PAGE, "text/html;charset=UTF-8")
            if kind == "services_auth":
                return self._services_auth(req)
            if kind == "not_data":
                raise HTTPError(404, "Not Found")
            # everything else sits behind the guard
            user = self.authenticate(req)
            req.user = user
            if kind == "jsession":
                return self._jsession(req, user)
            if kind == "data_auth":
                if m not in ("GET", "HEAD"):
                    raise HTTPError(405, "Method Not Allowed")
                body = f"User '{user}' is logged in"
                if req.query.get("CSRF") == "true":
                    body += f"; XNAT_CSRF={req.session_id or 'guest'}"
                return Response(200, body.encode(), "text/plain;charset=UTF-8")
            if kind == "build_info":
                if self.version_mode == "legacy":
                    return Response(404, b"", "text/plain")
                return Response(200, json.dumps(BUILD_INFO).encode(), "application/json")
            if kind == "xapi_users_active":
                return self._kill_user_sessions(req, user, payload)
            if kind == "xapi_unknown":
                return Response(404, b"", "text/plain")
            if kind == "version":
                if self.version_mode == "legacy":
                    return Response(200, LEGACY_VERSION.encode(), "text/plain;charset=UTF-8")
                raise HTTPError(404, "The server has not found anything matching the request URI")
            if kind.startswith("token_"):
                return self._tokens(req, user, kind, payload)
            if kind == "unknown":
                if isinstance(payload, HTTPError):
                    raise payload
                raise HTTPError(404, "The server has not found anything matching the request URI")
            if kind == "data":
                if m not in ("GET", "HEAD"):
                    raise HTTPError(405, "Method Not Allowed")
                return self._data(req, user, payload)
            raise HTTPError(404, "Not Found")
        except AuthRequired as exc:
            return self._unauthorized(req, browser, exc)
        except HTTPError as exc:
            return Response(exc.status, status_page(exc.status, exc.message),
                            "text/html;charset=UTF-8")

    def _unauthorized(self, req: Request, browser: bool, exc: AuthRequired) -> Response:
        if self.faults.login_page_instead_of_401:
            return Response(200, LOGIN_PAGE, "text/html;charset=UTF-8")
        if browser:
            if exc.bad_credentials:
                return Response(401, LOGIN_PAGE, "text/html;charset=UTF-8",
                                [("WWW-Authenticate", f'Basic realm="{self.site.site_id}"')])
            return Response(302, b"", "text/plain",
                            [("Location", req.base_url + self.context_path + LOGIN_PATH)])
        return Response(401, status_page(401, "Unauthorized"), "text/html;charset=UTF-8",
                        [("WWW-Authenticate", f'Basic realm="{self.site.site_id}"')])

    def _root(self, req: Request) -> Response:
        try:
            user = self.authenticate(req)
        except AuthRequired:
            return Response(302, b"", "text/plain",
                            [("Location", req.base_url + self.context_path + LOGIN_PATH)])
        if user == "guest":
            who = '<span id="user_info">Logged in as: <span style="color:red;">Guest</span></span>'
        else:
            who = f'<span id="user_info">Logged in as: <a href="/app/template/XDATScreen_UpdateUser.vm">{user}</a></span>'
        page = ("<!DOCTYPE html>\n<html>\n<head><title>XNAT</title></head>\n<body>\n"
                f"<div id=\"header\">{who}</div>\n<h1>XNAT emulator</h1>\n</body>\n</html>\n")
        return Response(200, page.encode(), "text/html;charset=UTF-8")

    # -- auth endpoints ---------------------------------------------------------------------
    def _jsession(self, req: Request, user: str) -> Response:
        m = req.method
        if m in ("GET", "POST", "HEAD"):
            sid = self.ensure_session(req, user)
            body = sid
            if req.query.get("CSRF") == "true":
                body += f"; XNAT_CSRF={sid.lower()}"
            return Response(200, body.encode(), "text/plain;charset=UTF-8")
        if m == "DELETE":
            if req.session_id:
                self.auth.drop_session(req.session_id)
                req.set_cookies = [c for c in req.set_cookies
                                   if not c.startswith("SESSION_EXPIRATION_TIME")]
            return Response(200, b"", "text/plain;charset=UTF-8")
        raise HTTPError(405, "Method Not Allowed")

    def _kill_user_sessions(self, req: Request, user: str, target: str) -> Response:
        """`DELETE /xapi/users/active/{u}` (admin): invalidate every session of a user."""
        if not self.is_admin(user):
            return Response(403, b"", "text/plain")
        if req.method == "DELETE":
            killed = self.auth.drop_user_sessions(target)
            return Response(200, json.dumps(killed).encode(), "application/json")
        if req.method in ("GET", "HEAD"):
            ids = [s.id for s in list(self.auth.sessions.values()) if s.user == target]
            return Response(200, json.dumps({"sessions": ids, "count": len(ids)}).encode(),
                            "application/json")
        return Response(405, b"", "text/plain")

    def _services_auth(self, req: Request) -> Response:
        if req.method not in ("PUT", "POST"):
            raise HTTPError(405, "Method Not Allowed")
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        user = form.get("username") or form.get("j_username") or ""
        password = form.get("password") or form.get("j_password") or ""
        who = self.auth.check_password(user, password) if user else None
        if who is None:
            return Response(401, status_page(401, "Authentication failed."),
                            "text/html;charset=UTF-8")
        sid = self.ensure_session(req, who)
        return Response(200, sid.encode(), "text/plain;charset=UTF-8")

    def _tokens(self, req: Request, user: str, kind: str, payload) -> Response:
        if kind == "token_issue":
            if user == "guest":
                raise HTTPError(403, "Guest users cannot issue alias tokens.")
            target_user = user
            if payload is not None:
                if not self.is_admin(user):
                    raise HTTPError(403, "Only administrators can issue tokens for other users.")
                if payload not in self.auth.users:
                    raise HTTPError(404, f"User {payload} not found.")
                target_user = payload
            tok = self.auth.issue_token(target_user)
            body = tok.entity()
            if self.version_mode == "legacy":
                body = {"alias": tok.alias, "secret": tok.secret,
                        "estimatedExpirationTime": time.strftime(
                            "%Y%m%d_%H%M%S", time.localtime(tok.expires_ms / 1000))}
            return Response(200, json.dumps(body).encode(), "application/json")
        if kind == "token_show":
            toks = [t.entity() for t in list(self.auth.tokens.values())
                    if t.user == user and t.enabled]
            return Response(200, json.dumps(toks).encode(), "application/json")
        alias, secret = payload
        tok = self.auth.token(alias)
        if tok is None:
            raise HTTPError(404, f"Alias token {alias} not found.")
        if kind == "token_validate":
            ok = tok.enabled and tok.secret == secret
            body = {"valid": tok.user} if ok else {}
            return Response(200, json.dumps(body).encode(), "application/json")
        # invalidate
        if tok.secret == secret:
            self.auth.invalidate_token(alias)
        return Response(200, json.dumps({"result": "OK"}).encode(), "application/json")

    # -- data -------------------------------------------------------------------------------
    def _data(self, req: Request, user: str, t: Target) -> Response:
        a = t.action
        t.extra["all"] = req.query.get("all", "")
        if a == "projects":
            return self._list_projects(req, user)
        if a == "subjects" and not t.steps:
            return self._list_subjects_global(req, user)
        if a == "experiments" and not t.steps:
            return self._list_experiments_global(req, user)
        scope = self.resolve(req, user, t)
        if a == "project":
            return self._item(req, self._project_item(scope.project), "xnat:projectData")
        if a == "accessibility":
            return Response(200, scope.project.accessibility.encode(), "text/plain;charset=UTF-8")
        if a == "subjects":
            return self._list_subjects_project(req, user, scope)
        if a == "subject":
            return self._item(req, self._subject_item(scope), "xnat:subjectData")
        if a == "experiments":
            return self._list_experiments_project(req, user, scope)
        if a == "experiment":
            items = [self._experiment_item(scope, e) for e in scope.experiments]
            return self._item(req, items, scope.experiments[0].xsi_type)
        if a == "experiment_projects":
            rows = [{"ID": pid, "label": scope.experiments[0].labels[pid],
                     "URI": f"/data/projects/{pid}"} for pid in scope.experiments[0].labels]
            return self._table(req, rows, ["ID", "label", "URI"], total=True)
        if a == "scans":
            return self._list_scans(req, scope)
        if a == "scan":
            items = [self._scan_item(sc) for sc in scope.scans]
            return self._item(req, items, scope.scans[0].xsi_type if scope.scans else "")
        if a == "assessors":
            return self._list_assessors(req, scope)
        if a == "assessor":
            return self._item(req, [self._experiment_item(scope, scope.assessor)],
                              scope.assessor.xsi_type)
        if a == "resources":
            return self._list_resources(req, self.level_resources(scope, t, None))
        if a == "resource":
            pairs = self.level_resources(scope, t, t.resource)
            if not pairs:
                raise HTTPError(404, "Unable to find the specified resource.")
            return self._catalog_xml(pairs[0][1])
        if a == "files":
            return self._files(req, scope, t)
        if a == "file":
            return self._file(req, scope, t)
        raise HTTPError(404, "The server has not found anything matching the request URI")

    def resolve(self, req: Request, user: str, t: Target) -> Scope:
        sc = Scope()
        site = self.site
        deep = bool(t.steps[1:]) or t.action not in ("project", "accessibility")
        for kind, tok in t.steps:
            if kind == "project":
                p = site.project(tok)
                if p is None or not self.can_see(user, p):
                    raise HTTPError(404, f"Unable to find project {tok}")
                if deep and not self.can_read(user, p):
                    if t.action == "subjects" and len(t.steps) == 1:
                        raise HTTPError(403, f"Unable to read subjects for Project: {p.id}")
                    if t.action == "experiments" and len(t.steps) <= 2:
                        raise HTTPError(403, f"Unable to read experiments for Project: {p.id}")
                    raise HTTPError(404, f"Unable to find the specified resource in project {p.id}")
                sc.project = p
                sc.via_project = True
            elif kind == "subject":
                if sc.project is not None:
                    subj = None
                    for s in sc.project.subjects:
                        if s.id == tok or s.label_in(sc.project.id) == tok:
                            subj = s
                            break
                else:
                    subj = site.subjects.get(tok)
                    if subj is not None and not self.can_read_subject(user, subj):
                        subj = None
                if subj is None:
                    raise HTTPError(404, f"Unable to identify subject {tok}")
                sc.subject = subj
            elif kind == "experiment":
                exps: list[Experiment] = []
                if sc.subject is not None:
                    pid = sc.project.id if sc.project else sc.subject.project.id
                    for e in sc.subject.experiments:
                        if (e.id == tok or e.label_in(pid) == tok) and (
                                sc.project is None or pid in e.labels):
                            exps.append(e)
                            break
                elif sc.project is not None:
                    pid = sc.project.id
                    for e in sc.project.experiments:
                        if e.id == tok or e.label_in(pid) == tok:
                            exps.append(e)
                            break
                    if not exps:
                        e = site.experiments.get(tok)
                        if e is not None and pid in e.labels:
                            exps.append(e)
                else:
                    for one in tok.split(","):
                        e = site.experiments.get(one.strip())
                        if e is not None and self.can_read_experiment(user, e):
                            exps.append(e)
                if not exps:
                    raise HTTPError(404, "Unable to find the specified experiment.")
                sc.experiments = exps
            elif kind == "scan":
                scans: list[Scan] = []
                for e in sc.experiments:
                    scans.extend(select_scans(e, tok))
                if not scans:
                    raise HTTPError(404, f"Unable to find scan {tok}")
                sc.scans = scans
            elif kind == "assessor":
                found = None
                for e in sc.experiments:
                    for a in e.assessors:
                        if a.id == tok or a.label == tok:
                            found = a
                if found is None:
                    raise HTTPError(404, f"Unable to find assessor {tok}")
                sc.assessor = found
        return sc

    # base URIs -------------------------------------------------------------------------------
    def exp_base(self, scope: Scope, e: Experiment) -> str:
        if scope.via_project and scope.project is not None:
            if scope.subject is not None:
                return (f"/data/projects/{scope.project.id}/subjects/{scope.subject.id}"
                        f"/experiments/{e.id}")
            return f"/data/projects/{scope.project.id}/experiments/{e.id}"
        return f"/data/experiments/{e.id}"

    def level_resources(self, scope: Scope, t: Target, selector: str | None
                        ) -> list[tuple[object, Resource, str]]:
        """(owner, resource, base URI) for the level the target names."""
        owners: list[tuple[object, list[Resource], str]] = []
        kinds = [k for k, _ in t.steps]
        last = kinds[-1]
        if last == "assessor":
            a = scope.assessor
            io_ = t.extra.get("io", "out")
            res = a.in_resources if io_ == "in" else a.resources
            base = f"{self.exp_base(scope, a.session)}/assessors/{a.id}/{io_}"
            owners.append((a, res, base))
        elif last == "scan":
            for s in scope.scans:
                owners.append((s, s.resources, f"{self.exp_base(scope, s.session)}/scans/{s.id}"))
        elif last == "experiment":
            all_ = t.action == "files" and t.resource is None and \
                req_flag(t.extra.get("all"))
            for e in scope.experiments:
                base = self.exp_base(scope, e)
                owners.append((e, e.resources, base))
                if all_:
                    for s in e.scans:
                        owners.append((s, s.resources, f"{base}/scans/{s.id}"))
                    for a in e.assessors:
                        owners.append((a, a.resources, f"{base}/assessors/{a.id}/out"))
        elif last == "subject":
            s = scope.subject
            base = (f"/data/projects/{scope.project.id}/subjects/{s.id}" if scope.via_project
                    else f"/data/subjects/{s.id}")
            owners.append((s, s.resources, base))
        elif last == "project":
            owners.append((scope.project, scope.project.resources,
                           f"/data/projects/{scope.project.id}"))
        out = []
        wanted = None if selector is None else [x.strip() for x in selector.split(",")]
        for owner, res_list, base in owners:
            for r in list(res_list):
                if wanted is None or str(r.xnat_id) in wanted or r.label in wanted or (
                        "NULL" in wanted and not r.label):
                    out.append((owner, r, base))
        return out

    # listings --------------------------------------------------------------------------------
    def _list_projects(self, req: Request, user: str) -> Response:
        rows = []
        for p in self.site.projects.values():
            if not self.can_see(user, p):
                continue
            rows.append({"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                         "description": p.description, "pi_firstname": p.pi_firstname,
                         "pi_lastname": p.pi_lastname, "URI": f"/data/projects/{p.id}",
                         "keywords": "", "alias": ",".join(p.aliases), "note": ""})
        cols = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname"]
        return self._table(req, rows, cols, total=True)

    def _subject_row(self, s: Subject, pid: str | None) -> dict:
        return {"ID": s.id, "project": s.project.id,
                "label": s.label_in(pid) if pid else s.label,
                "insert_date": s.insert_date, "insert_user": s.insert_user,
                "URI": f"/data/subjects/{s.id}", "gender": s.gender, "yob": s.yob,
                "group": "", "src": "", "last_modified": s.insert_date}

    SUBJECT_COLS = ["ID", "project", "label", "insert_date", "insert_user"]

    def _list_subjects_project(self, req: Request, user: str, scope: Scope) -> Response:
        p = scope.project
        rows = [self._subject_row(s, p.id) for s in p.subjects]
        return self._table(req, rows, self.SUBJECT_COLS, total=True, paging=True)

    def _list_subjects_global(self, req: Request, user: str) -> Response:
        rows = [self._subject_row(s, None) for s in list(self.site.subjects.values())
                if self.can_read_subject(user, s)]
        return self._table(req, rows, self.SUBJECT_COLS, total=True, paging=True)

    def _experiment_row(self, e: Experiment, pid: str | None) -> dict:
        row = {"ID": e.id, "project": e.project.id, "date": e.date, "xsiType": e.xsi_type,
               "label": e.label_in(pid) if pid else e.label, "insert_date": e.insert_date,
               "time": e.time, "insert_user": e.insert_user, "URI": f"/data/experiments/{e.id}",
               "subject_ID": e.subject.id,
               "subject_label": e.subject.label_in(pid) if pid else e.subject.label,
               "subject_project": e.subject.project.id, "last_modified": e.insert_date,
               "note": "", "visit_id": ""}
        if e.is_assessor:
            row["session_ID"] = e.session.id
            row["session_label"] = e.session.label_in(pid) if pid else e.session.label
        else:
            row.update({"modality": e.modality, "UID": e.uid, "scanner": e.scanner_model,
                        "fieldStrength": e.field_strength, "session_type": "",
                        "session_ID": "", "session_label": ""})
        return row

    SUBJ_ASSESSOR_KEYS = {"subject_id", "subject_label", "subject_project", "modality", "uid",
                          "scanner", "fieldstrength", "session_type", "visit_id", "age"}
    IMG_ASSESSOR_KEYS = {"session_id", "session_label"}

    def _list_experiments_global(self, req: Request, user: str) -> Response:
        q = req.query
        xsi = q.get("xsiType", "")
        keys = {k.lower() for k in q if k not in RESERVED}
        cols_req = {c.strip().lower() for c in q.get("columns", "").split(",") if c.strip()}
        root = "experiment"
        if xsi and "," not in xsi:
            root = "assessor" if is_assessor_type(xsi) else "subject_assessor"
        elif (keys | cols_req) & self.IMG_ASSESSOR_KEYS:
            root = "assessor"
        elif (keys | cols_req) & self.SUBJ_ASSESSOR_KEYS:
            root = "subject_assessor"
        project = q.get("project")
        rows = []
        for e in list(self.site.experiments.values()):
            if root == "subject_assessor" and e.is_assessor:
                continue
            if root == "assessor" and not e.is_assessor:
                continue
            if xsi and "," not in xsi and e.xsi_type.lower() != xsi.lower():
                continue
            if project is not None and not any(_like(project, pid) for pid in e.labels):
                continue
            if not self.can_read_experiment(user, e):
                continue
            rows.append(self._experiment_row(e, None))
        cols = ["ID", "project", "date", "xsiType", "label", "insert_date"]
        if root == "subject_assessor":
            cols += ["subject_ID", "subject_label"]
        elif root == "assessor":
            cols += ["session_ID", "session_label"]
        return self._table(req, rows, cols, total=True, title="Matching experiments",
                           paging=True, skip_filters={"project"})

    def _list_experiments_project(self, req: Request, user: str, scope: Scope) -> Response:
        p = scope.project if scope.project is not None else scope.subject.project
        pool = scope.subject.experiments if scope.subject is not None else p.experiments
        rows = []
        for e in pool:
            if e.is_assessor:
                continue
            if scope.project is not None and p.id not in e.labels:
                continue
            if scope.project is None and not self.can_read_experiment(req.user, e):
                continue
            xsi = req.query.get("xsiType")
            if xsi and "," not in xsi and e.xsi_type.lower() != xsi.lower():
                continue
            row = self._experiment_row(e, p.id)
            row["xnat:subjectassessordata/id"] = e.id
            rows.append(row)
        cols = ["ID", "project", "date", "xsiType", "label", "insert_date",
                "xnat:subjectassessordata/id"]
        return self._table(req, rows, cols, total=True, paging=True)

    def _list_scans(self, req: Request, scope: Scope) -> Response:
        rows = []
        for e in scope.experiments:
            for s in e.scans:
                rows.append({"xnat_imagescandata_id": str(s.xnat_id), "ID": s.id, "type": s.type,
                             "quality": s.quality, "xsiType": s.xsi_type, "note": s.note,
                             "series_description": s.series_description,
                             "URI": f"/data/experiments/{e.id}/scans/{s.id}",
                             "UID": s.uid, "frames": str(s.frames) if s.frames else "",
                             "modality": e.modality, "scanner": e.scanner_model,
                             "fieldStrength": e.field_strength})
        cols = ["xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                "series_description"]
        return self._table(req, rows, cols, total=True)

    def _list_assessors(self, req: Request, scope: Scope) -> Response:
        rows = []
        pid = scope.project.id if scope.project else None
        for e in scope.experiments:
            for a in e.assessors:
                row = self._experiment_row(a, pid)
                row["xnat:imageassessordata/id"] = a.id
                row["URI"] = f"/data/experiments/{a.id}"
                rows.append(row)
        cols = ["ID", "project", "date", "xsiType", "label", "insert_date", "session_ID",
                "session_label", "xnat:imageassessordata/id"]
        return self._table(req, rows, cols, total=True)

    def _list_resources(self, req: Request, pairs) -> Response:
        rows = []
        for owner, r, _base in pairs:
            count, size = r.stats()
            rows.append({"xnat_abstractresource_id": str(r.xnat_id), "label": r.label,
                         "element_name": r.element_name, "category": r.category,
                         "cat_id": r.cat_id, "cat_desc": r.cat_desc, "format": r.fmt,
                         "content": r.content, "tags": r.tags, "file_count": str(count),
                         "file_size": str(size)})
        cols = ["xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                "cat_desc", "format", "content", "tags", "file_count", "file_size"]
        return self._table(req, rows, cols, total=True, title="Resources", all_columns=True)

    # files ---------------------------------------------------------------------------------
    def _file_pairs(self, scope: Scope, t: Target):
        pairs = self.level_resources(scope, t, t.resource)
        if t.resource is not None and not pairs:
            raise HTTPError(404, "Unable to find the specified resource.")
        return pairs

    def iter_file_rows(self, req: Request, pairs, t: Target) -> Iterator[tuple]:
        prefix = t.path + "/" if t.path_is_dir and t.path else None
        fmt_f = req.query.get("file_format")
        cont_f = req.query.get("file_content")
        for owner, r, base in pairs:
            for e in r.entries():
                if prefix is not None and not e.path.startswith(prefix):
                    continue
                if fmt_f is not None and not _like(fmt_f, e.fmt or "NULL"):
                    continue
                if cont_f is not None and not _like(cont_f, e.content or "NULL"):
                    continue
                yield owner, r, base, e

    def _files(self, req: Request, scope: Scope, t: Target) -> Response:
        pairs = self._file_pairs(scope, t)
        fmt = req.fmt
        if fmt in ("zip", "tar", "tar.gz", "tgz", "application/zip"):
            return self._zip(req, scope, t, pairs, kind=fmt)
        drop = bool(self.faults.drop_digests) or not self.checksums
        rows = []
        for owner, r, base, e in self.iter_file_rows(req, pairs, t):
            rows.append({"Name": e.name, "Size": str(e.size),
                         "URI": f"{base}/resources/{r.xnat_id}/files/{e.path}",
                         "collection": r.label, "file_tags": e.tags, "file_format": e.fmt,
                         "file_content": e.content, "cat_ID": str(r.xnat_id),
                         "digest": "" if drop else e.digest()})
        cols = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
                "cat_ID", "digest"]
        return self._table(req, rows, cols, total=False, title="Files",
                           columns_meta=[{"key": "URI", "serverRoot": self.context_path}], all_columns=True)

    def _find_file(self, scope: Scope, t: Target) -> tuple[Resource, FileEntry, object]:
        pairs = self._file_pairs(scope, t)
        for owner, r, base in pairs:
            e = r.get(t.path)
            if e is not None:
                return r, e, owner
        raise HTTPError(404, "Unable to find file.")

    def _file(self, req: Request, scope: Scope, t: Target) -> Response:
        try:
            r, e, owner = self._find_file(scope, t)
        except HTTPError as exc:
            if exc.status == 404 and req_flag(req.query.get("accept-not-found")):
                return Response(204, b"", "text/plain")
            raise
        if req.fmt == "zip":
            return self._zip(req, scope, t, [(owner, r, "")], only=e)
        headers = [("Last-Modified", http_date(e.mtime)), ("Cache-Control", "must-revalidate")]
        resp = Response(200, b"", content_type_for(e.name), headers,
                        stream=e.blob, length=e.size)
        rng = req.headers.get("Range") if self.honor_range else None
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else e.size - 1
                else:
                    start = max(0, e.size - int(m.group(2)))
                    end = e.size - 1
                end = min(end, e.size - 1)
                if start > end or start >= e.size:
                    return Response(416, b"", "text/plain",
                                    [("Content-Range", f"bytes */{e.size}")])
                resp.status = 206
                resp.offset = start
                resp.length = end - start + 1
                resp.headers.append(("Content-Range", f"bytes {start}-{end}/{e.size}"))
            resp.headers.append(("Accept-Ranges", "bytes"))
        if req.method == "GET":
            resp.fault = self.faults.download_fault()
            if resp.fault == "fail":
                return Response(500, status_page(500, "Internal Server Error"),
                                "text/html;charset=UTF-8")
        return resp

    def _zip_name(self, scope: Scope, owner, r: Resource, e: FileEntry) -> str:
        pid = scope.project.id if scope.project else None

        def lab(x):
            return x.label_in(pid) if pid else x.label
        if isinstance(owner, Scan):
            typ = re.sub(r"\W", "_", owner.type)
            sdir = f"{owner.id}-{typ}" if owner.type else owner.id
            return f"{lab(owner.session)}/scans/{sdir}/resources/{r.label}/files/{e.path}"
        if isinstance(owner, Experiment):
            if owner.is_assessor:
                return (f"{lab(owner.session)}/assessors/{owner.label}/out/resources/{r.label}"
                        f"/files/{e.path}")
            return f"{lab(owner)}/resources/{r.label}/files/{e.path}"
        if isinstance(owner, Subject):
            return f"{lab(owner)}/resources/{r.label}/files/{e.path}"
        return f"{owner.id}/resources/{r.label}/files/{e.path}"

    def _zip(self, req: Request, scope: Scope, t: Target, pairs, only: FileEntry | None = None,
             kind: str = "zip") -> Response:
        if only is not None:
            items = [(pairs[0][0], pairs[0][1], only)]
        else:
            items = [(o, r, e) for o, r, _b, e in self.iter_file_rows(req, pairs, t)]
        if not items:
            raise HTTPError(404, "No matching files.")
        if scope.assessor is not None:
            archive = scope.assessor.label
        elif scope.experiments:
            e0 = scope.experiments[0]
            archive = e0.label_in(scope.project.id) if scope.project else e0.label
        elif scope.subject is not None:
            archive = scope.subject.label
        else:
            archive = scope.project.id
        try:
            level = int(req.query.get("compression", "6"))
        except ValueError:
            level = 6
        names = [(self._zip_name(scope, o, r, e), e) for o, r, e in items]
        if kind in ("tar", "tar.gz", "tgz"):
            gz = kind != "tar"
            ext = "tar.gz" if gz else "tar"
            headers = [("Content-Disposition", f'attachment; filename="{archive}.{ext}"')]
            return Response(200, b"", "application/x-gzip" if gz else "application/x-tar",
                            headers, stream=TarStream(names, gz), length=None)
        headers = [("Content-Disposition", f'attachment; filename="{archive}.zip"')]
        return Response(200, b"", "application/zip", headers,
                        stream=ZipStream(names, level), length=None)

    # items ---------------------------------------------------------------------------------
    def _project_item(self, p: Project) -> list[dict]:
        return [{"meta": {"xsi:type": "xnat:projectData", "isHistory": False},
                 "data_fields": {"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                                 "description": p.description,
                                 "PI/firstname": p.pi_firstname, "PI/lastname": p.pi_lastname},
                 "children": [{"field": "resources/resource", "items": [
                     self._resource_item(r) for r in p.resources]}]}]

    def _resource_item(self, r: Resource) -> dict:
        return {"meta": {"xsi:type": "xnat:resourceCatalog", "isHistory": False},
                "data_fields": {"xnat_abstractresource_id": r.xnat_id, "label": r.label,
                                "format": r.fmt, "content": r.content},
                "children": []}

    def _subject_item(self, scope: Scope) -> list[dict]:
        s = scope.subject
        pid = scope.project.id if scope.project else s.project.id
        shares = [{"meta": {"xsi:type": "xnat:projectParticipant", "isHistory": False},
                   "data_fields": {"label": lab, "project": p}, "children": []}
                  for p, lab in s.labels.items() if p != s.project.id]
        exps = [{"meta": {"xsi:type": e.xsi_type, "isHistory": False},
                 "data_fields": {"ID": e.id, "label": e.label_in(pid), "project": e.project.id,
                                 "date": e.date}, "children": []} for e in s.experiments]
        df = {"ID": s.id, "id": s.id, "label": s.label_in(pid), "project": s.project.id,
              "insert_date": s.insert_date}
        return [{"meta": {"xsi:type": "xnat:subjectData", "isHistory": False},
                 "data_fields": df,
                 "children": [
                     {"field": "demographics", "items": [
                         {"meta": {"xsi:type": "xnat:demographicData", "isHistory": False},
                          "data_fields": {"gender": s.gender,
                                          **({"yob": int(s.yob)} if s.yob else {})},
                          "children": []}]},
                     {"field": "sharing/share", "items": shares},
                     {"field": "experiments/experiment", "items": exps},
                     {"field": "resources/resource",
                      "items": [self._resource_item(r) for r in s.resources]}]}]

    def _scan_item(self, s: Scan) -> dict:
        df = {"ID": s.id, "type": s.type, "series_description": s.series_description,
              "quality": s.quality, "note": s.note, "xnat_imagescandata_id": s.xnat_id,
              "image_session_ID": s.session.id, "UID": s.uid}
        if s.frames:
            df["frames"] = s.frames
        return {"meta": {"xsi:type": s.xsi_type, "isHistory": False}, "data_fields": df,
                "children": [{"field": "file",
                              "items": [self._resource_item(r) for r in s.resources]}]}

    def _experiment_item(self, scope: Scope, e: Experiment) -> dict:
        pid = scope.project.id if scope.project else e.project.id
        df = {"ID": e.id, "id": e.id, "label": e.label_in(pid), "project": e.project.id,
              "date": e.date, "insert_date": e.insert_date}
        children = []
        if e.is_assessor:
            df["imageSession_ID"] = e.session.id
            children.append({"field": "out/file",
                             "items": [self._resource_item(r) for r in e.resources]})
        else:
            df.update({"subject_ID": e.subject.id, "time": e.time, "modality": e.modality,
                       "UID": e.uid, "scanner/manufacturer": e.scanner_manufacturer,
                       "scanner/model": e.scanner_model})
            if e.field_strength:
                df["fieldStrength"] = e.field_strength
            children.append({"field": "scans/scan", "items": [self._scan_item(s) for s in e.scans]})
            children.append({"field": "resources/resource",
                             "items": [self._resource_item(r) for r in e.resources]})
            if e.assessors:
                children.append({"field": "assessors/assessor", "items": [
                    {"meta": {"xsi:type": a.xsi_type, "isHistory": False},
                     "data_fields": {"ID": a.id, "label": a.label}, "children": []}
                    for a in e.assessors]})
        shares = [{"meta": {"xsi:type": "xnat:experimentData_share", "isHistory": False},
                   "data_fields": {"label": lab, "project": p}, "children": []}
                  for p, lab in e.labels.items() if p != e.project.id]
        children.append({"field": "sharing/share", "items": shares})
        return {"meta": {"xsi:type": e.xsi_type, "isHistory": False,
                         "start_date": e.insert_date}, "data_fields": df, "children": children}

    def _item(self, req: Request, items, xsi_type: str) -> Response:
        if isinstance(items, dict):
            items = [items]
        fmt = req.fmt
        if fmt == "json":
            return Response(200, json.dumps({"items": items}).encode(),
                            "application/json;charset=UTF-8")
        if fmt == "html":
            body = "<html><body>" + "".join(
                f"<h3>{xml_escape(str(it['data_fields'].get('ID', '')))}</h3>"
                for it in items) + "</body></html>"
            return Response(200, body.encode(), "text/html;charset=UTF-8")
        return Response(200, items_xml(items).encode(), "text/xml;charset=UTF-8")

    def _catalog_xml(self, r: Resource) -> Response:
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               f'<cat:Catalog ID="{r.xnat_id}" xmlns:cat="http://nrg.wustl.edu/catalog" '
               f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
               "<cat:entries>"]
        for e in r.entries():
            dg = e.digest()
            dga = f" digest={quoteattr(dg)}" if dg else ""
            out.append(f"<cat:entry URI={quoteattr(e.path)} ID={quoteattr(e.path)} "
                       f"name={quoteattr(e.name)}{dga} xsi:type=\"cat:entry\"/>")
        out.append("</cat:entries>")
        out.append("</cat:Catalog>")
        return Response(200, ("\n".join(out) + "\n").encode(), "text/xml;charset=UTF-8")

    # tables --------------------------------------------------------------------------------
    def _table(self, req: Request, rows: list[dict], default_cols: list[str], *, total: bool,
               title: str | None = None, columns_meta: list | None = None, paging: bool = False,
               all_columns: bool = False, skip_filters: set[str] = frozenset()) -> Response:
        q = req.query
        # columns
        if "columns" in q and q["columns"] not in ("", "DEFAULT") and not all_columns:
            wanted = [c.strip() for c in q["columns"].split(",") if c.strip()]
            cols = ["ID"] if rows and "ID" in rows[0] else []
            known = set(rows[0]) if rows else set()
            for c in wanted:
                if c in ("URI",) or c in cols:
                    continue
                if c in known or not rows:
                    cols.append(c)
        else:
            cols = list(default_cols)
        # filters: any column alias as a query key
        for k, v in q.items():
            if k in RESERVED or k in skip_filters:
                continue
            if rows and k in rows[0]:
                rows = [r for r in rows if _like(v, str(r.get(k, "")))]
        # sorting
        if "sortBy" in q:
            keys = [k for k in q["sortBy"].split(",") if k]
            rev = q.get("sortOrder", "ASC").upper() == "DESC"
            rows = sorted(rows, key=lambda r: [str(r.get(k, "")) for k in keys], reverse=rev)
        offset_given = "offset" in q
        if self.version_mode == "legacy":
            paging = offset_given = False           # limit/offset arrived with XNAT 1.8.9
        if paging and ("limit" in q or offset_given):
            try:
                off = int(q.get("offset", "0") or 0)
            except ValueError:
                off = 0
            lim = q.get("limit", "*")
            rows = rows[off:] if lim in ("*", "") else rows[off:off + int(lim)]
        out_cols = cols + (["URI"] if rows and "URI" in rows[0] and "URI" not in cols else [])
        if not rows and "URI" not in out_cols and "URI" in default_cols:
            pass
        if all_columns and rows and list(rows[0]) == out_cols:
            result = rows            # rows built with exactly these string columns
        else:
            result = [{c: str(r.get(c, "")) for c in out_cols} for r in rows]
        fmt = req.fmt or ("html" if self.version_mode == "legacy" else "")
        if fmt == "json":
            rs: dict = {}
            if columns_meta is not None:
                rs["Columns"] = columns_meta
            rs["Result"] = result
            if total and not (paging and offset_given):
                rs["totalRecords"] = str(len(result))
            if title:
                rs["title"] = title
            return Response(200, json.dumps({"ResultSet": rs}).encode(),
                            "application/json;charset=UTF-8")
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(out_cols)
            for r in result:
                w.writerow([r[c] for c in out_cols])
            return Response(200, buf.getvalue().encode(), "text/csv;charset=UTF-8")
        if fmt == "html":
            head = "".join(f"<th>{xml_escape(c)}</th>" for c in out_cols)
            body = "".join("<tr>" + "".join(f"<td>{xml_escape(r[c])}</td>" for c in out_cols)
                           + "</tr>" for r in result)
            page = (f"<html><head><title>{xml_escape(title or 'Results')}</title></head><body>"
                    f"<table><tr>{head}</tr>{body}</table></body></html>")
            return Response(200, page.encode(), "text/html;charset=UTF-8")
        return Response(200, table_xml(out_cols, result, title).encode(),
                        "text/xml;charset=UTF-8")


def req_flag(v: str | None) -> bool:
    return (v or "").lower() in ("true", "1", "yes")


def is_assessor_type(xsi: str) -> bool:
    x = xsi.lower()
    return "assess" in x and "session" not in x


def select_scans(e: Experiment, selector: str) -> list[Scan]:
    out: list[Scan] = []
    seen = set()

    def add(s: Scan) -> None:
        if id(s) not in seen:
            seen.add(id(s))
            out.append(s)
    for tok in selector.split(","):
        tok = tok.replace("[COMMA]", ",").replace("[SLASH]", "/").strip()
        if tok in ("ALL", "*"):
            for s in e.scans:
                add(s)
            continue
        s = e.scan(tok)
        if s is not None:
            add(s)
            continue
        for s in e.scans:
            if (tok == "NULL" and not s.type) or s.type == tok:
                add(s)
    return out


def table_xml(cols: list[str], rows: list[dict], title: str | None) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<ResultSet Result="{len(rows)}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
           + (f' title={quoteattr(title)}' if title else "") + ">",
           "<results>", "<columns>"]
    out += [f"<column>{xml_escape(c)}</column>" for c in cols]
    out += ["</columns>", "<rows>"]
    for r in rows:
        out.append("<row>" + "".join(f"<cell>{xml_escape(r[c])}</cell>" for c in cols) + "</row>")
    out += ["</rows>", "</results>", "</ResultSet>"]
    return "\n".join(out) + "\n"


def items_xml(items: list[dict]) -> str:
    def one(it: dict, depth: int) -> str:
        xsi = it.get("meta", {}).get("xsi:type", "xnat:item")
        attrs = "".join(f" {k.replace('/', '_')}={quoteattr(str(v))}"
                        for k, v in it.get("data_fields", {}).items())
        inner = "".join(one(c, depth + 1) for ch in it.get("children", []) for c in ch["items"])
        ns = ' xmlns:xnat="http://nrg.ccf.org/xnat"' if depth == 0 else ""
        return f"<{xsi}{attrs}{ns}>{inner}</{xsi}>"
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(one(i, 0) for i in items) + "\n"


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


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "XNAT-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.app.verbose:
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _serve(self) -> None:
        app: App = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        path = split.path or "/"
        ctx = app.context_path
        if ctx:
            if path == ctx or path.startswith(ctx + "/"):
                path = path[len(ctx):] or "/"
            else:
                path = "/__outside_context__" + path
        template, kind, payload = app.route(self.command, path)
        prefix = "/data/archive" if path.startswith("/data/archive") else "/data"
        req = Request(self.command, path, query, self.headers, body, prefix)
        req.base_url = "http://" + (self.headers.get("Host")
                                    or "%s:%s" % self.server.server_address[:2])
        try:
            delay = float(app.faults.delay or 0)
            if not template.endswith("{path}"):
                delay += float(app.faults.listing_delay or 0)
            if delay > 0:
                time.sleep(delay)
            err = app.faults.random_error()
            if err is not None:
                resp = Response(err, status_page(err, _STATUS_TEXT.get(err, "Server error")),
                                "text/html;charset=UTF-8")
            else:
                resp = app.handle(req, kind, payload)
        except Exception:  # a bug in the emulator: answer 500, keep serving
            traceback.print_exc()
            resp = Response(500, status_page(500, "Internal Server Error"),
                            "text/html;charset=UTF-8")
        app.counters.record(f"{self.command} {template}", resp.status)
        try:
            self._write(req, resp)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            # the client went away mid-response (a cancelled download): not an error here
            self.close_connection = True

    def _write(self, req: Request, resp: Response) -> None:
        app: App = self.server.app
        head_only = self.command == "HEAD"
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.ctype)
        for k, v in resp.headers:
            self.send_header(k, v)
        for c in req.set_cookies:
            self.send_header("Set-Cookie", c)
        if resp.stream is None:
            body = resp.body
            self.send_header("Content-Length", str(len(body)))
            self.end_headers_and(b"" if head_only else body)
            if not head_only:
                app.counters.add_bytes(len(body))
            return
        if resp.length is not None:
            blob = resp.stream
            self.send_header("Content-Length", str(resp.length))
            if head_only:
                self.end_headers_and(b"")
                return
            self._send_blob(blob, resp.length, resp.fault, resp.offset)
            return
        # streamed without a known length (zip): chunked
        self.send_header("Transfer-Encoding", "chunked")
        if head_only:
            self.end_headers_and(b"")
            return
        self.end_headers()
        sent = 0
        try:
            for chunk in resp.stream.iter_bytes():
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        finally:
            app.counters.add_bytes(sent)

    def end_headers_and(self, body: bytes) -> None:
        """Send headers and a small body in one write (avoids Nagle/delayed-ACK stalls)."""
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + body)
        self._headers_buffer = []

    def _send_blob(self, blob, length: int, fault: str | None, offset: int = 0) -> None:
        app: App = self.server.app
        limit = length
        if fault == "truncate":
            limit = length // 2
        first = True
        sent = 0
        pos = 0
        step = 1 << 16
        if app.faults.download_rate:
            step = max(1, min(step, int(app.faults.download_rate) // 10 or 1))
        while pos < limit:
            n = min(step, limit - pos)
            chunk = blob.read(offset + pos, n)
            if fault == "corrupt":
                chunk = bytes((b ^ 0x5A) for b in chunk[:64]) + chunk[64:]
            pos += n
            rate = app.faults.download_rate
            if rate and rate > 0:
                time.sleep(len(chunk) / float(rate))
            if first:
                self.end_headers_and(chunk)
                first = False
            else:
                self.wfile.write(chunk)
            sent += len(chunk)
        if first:
            self.end_headers_and(b"")
        app.counters.add_bytes(sent)
        if fault == "truncate":
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, app: App) -> None:
        self.app = app
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, Handler)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return                  # clients closing keep-alive connections, shutdowns
        super().handle_error(request, client_address)

    def track(self, conn, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Shut down open keep-alive connections (so a stopped emulator really is gone)."""
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def make_server(app: App, host: str = "127.0.0.1", port: int = 0) -> Server:
    return Server((host, port), app)
