"""Authentication on the wire: who a request is (JSESSIONID cookie, Basic, guest), the answers
for requests without an identity (401, or a login redirect for browsers), and the auth
routes: JSESSION, services/auth, /data/auth, alias tokens, and the admin's kill of a user's
sessions.

The session and token store itself is `auth.Auth`; this module speaks its HTTP side.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from .faults import Endless
from .paths import LOGIN_PATH
from .wire import HTML, TEXT, AuthRequired, HTTPError, Request, Response, error_response

if TYPE_CHECKING:
    from .app import App

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


# -- identity ---------------------------------------------------------------------------------

def authenticate(app: "App", req: Request, allow_guest: bool = True) -> str:
    """The user a request acts as: a live JSESSIONID first, then Basic, then guest (open site)."""
    cookie_sid = None
    cookie_header = req.headers.get("Cookie")
    if cookie_header:
        for part in cookie_header.split(";"):
            k, _, v = part.strip().partition("=")
            if k == "JSESSIONID":
                cookie_sid = v.strip().strip('"')
    dead_cookie = False
    if cookie_sid:
        s = app.auth.use_session(cookie_sid, int(app.faults.expire_sessions_after or 0))
        if s is not None:
            req.session_id = s.id
            _expiration_cookie(app, req)
            return s.user
        dead_cookie = True
    authz = req.headers.get("Authorization") or ""
    if authz[:6].lower() == "basic ":
        try:
            raw = base64.b64decode(authz[6:].strip()).decode("utf-8")
        except Exception:
            raise AuthRequired("garbled credentials", bad_credentials=True)
        user, _, password = raw.partition(":")
        who = app.auth.check_password(user, password)
        if who is None:
            raise AuthRequired("bad credentials", bad_credentials=True)
        _start_session(app, req, who)
        return who
    if dead_cookie:
        raise AuthRequired("invalid session")
    if app.require_login or not allow_guest:
        raise AuthRequired("no credentials")
    return "guest"


def _start_session(app: "App", req: Request, user: str) -> None:
    """A new session for `user`, bound to the request and set as cookies in its answer."""
    s = app.auth.new_session(user)
    if s is None:
        raise AuthRequired("too many sessions", bad_credentials=True)
    req.session_id = s.id
    req.new_session = True
    req.set_cookies.append(f"JSESSIONID={s.id}; Path={app.context_path or '/'}; HttpOnly")
    _expiration_cookie(app, req)


def _expiration_cookie(app: "App", req: Request) -> None:
    now_ms = int(time.time() * 1000)
    tmo_ms = int(app.auth.session_timeout * 1000)
    req.set_cookies.append(
        f'SESSION_EXPIRATION_TIME="{now_ms},{tmo_ms}"; Path={app.context_path or "/"}')


def ensure_session(app: "App", req: Request, user: str) -> str:
    """The session id for JSESSION/auth endpoints, creating one when the request had none."""
    if req.session_id is None:
        _start_session(app, req, user)
    return req.session_id


# -- answers without an identity ----------------------------------------------------------------

def login_redirect(app: "App", req: Request) -> Response:
    return Response(302, b"", "text/plain",
                    [("Location", req.base_url + app.context_path + LOGIN_PATH)])


def login_page(app: "App", req: Request) -> Response:
    return Response(200, LOGIN_PAGE, HTML)


def unauthorized(app: "App", req: Request, browser: bool, exc: AuthRequired) -> Response:
    if app.faults.login_page_instead_of_401:
        return Response(200, LOGIN_PAGE, HTML)
    if browser:
        if exc.bad_credentials:
            return Response(401, LOGIN_PAGE, HTML,
                            [("WWW-Authenticate", f'Basic realm="{app.site.site_id}"')])
        return login_redirect(app, req)
    resp = error_response(401)
    resp.headers.append(("WWW-Authenticate", f'Basic realm="{app.site.site_id}"'))
    return resp


# -- routes -------------------------------------------------------------------------------------

def services_auth(app: "App", req: Request) -> Response:
    """`PUT|POST /data/services/auth` with a form: a session for those credentials."""
    if req.method not in ("PUT", "POST"):
        raise HTTPError(405, "Method Not Allowed")
    form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
    user = form.get("username") or form.get("j_username") or ""
    password = form.get("password") or form.get("j_password") or ""
    who = app.auth.check_password(user, password) if user else None
    if who is None:
        return error_response(401, "Authentication failed.")
    sid = ensure_session(app, req, who)
    return Response(200, sid.encode(), TEXT)


def jsession(app: "App", req: Request, user: str, payload) -> Response:
    m = req.method
    if m in ("GET", "POST", "HEAD"):
        sid = ensure_session(app, req, user)
        body = sid
        if req.query.get("CSRF") == "true":
            body += f"; XNAT_CSRF={sid.lower()}"
        if m == "POST" and app.faults.endless_login:
            return Response(200, b"", TEXT, stream=Endless(body.encode(), b"\n" + body.encode(),
                                                           app.faults.endless_login))
        return Response(200, body.encode(), TEXT)
    if m == "DELETE":
        if req.session_id:
            app.auth.drop_session(req.session_id)
            req.set_cookies = [c for c in req.set_cookies
                               if not c.startswith("SESSION_EXPIRATION_TIME")]
        return Response(200, b"", TEXT)
    raise HTTPError(405, "Method Not Allowed")


def data_auth(app: "App", req: Request, user: str, payload) -> Response:
    """`GET /data/auth`: who the request is logged in as."""
    if req.method not in ("GET", "HEAD"):
        raise HTTPError(405, "Method Not Allowed")
    body = f"User '{user}' is logged in"
    if req.query.get("CSRF") == "true":
        body += f"; XNAT_CSRF={req.session_id or 'guest'}"
    return Response(200, body.encode(), TEXT)


def kill_user_sessions(app: "App", req: Request, user: str, target: str) -> Response:
    """`DELETE /xapi/users/active/{u}` (admin): invalidate every session of a user."""
    if not app.is_admin(user):
        return Response(403, b"", "text/plain")
    if req.method == "DELETE":
        killed = app.auth.drop_user_sessions(target)
        return Response(200, json.dumps(killed).encode(), "application/json")
    if req.method in ("GET", "HEAD"):
        ids = [s.id for s in list(app.auth.sessions.values()) if s.user == target]
        return Response(200, json.dumps({"sessions": ids, "count": len(ids)}).encode(),
                        "application/json")
    return Response(405, b"", "text/plain")


def token_issue(app: "App", req: Request, user: str, payload) -> Response:
    """`/data/services/tokens/issue[/user/{u}]`: an alias token for oneself (admins: anyone)."""
    if user == "guest":
        raise HTTPError(403, "Guest users cannot issue alias tokens.")
    target_user = user
    if payload is not None:
        if not app.is_admin(user):
            raise HTTPError(403, "Only administrators can issue tokens for other users.")
        if payload not in app.auth.users:
            raise HTTPError(404, f"User {payload} not found.")
        target_user = payload
    tok = app.auth.issue_token(target_user)
    body = tok.entity()
    if app.legacy:
        body = {"alias": tok.alias, "secret": tok.secret,
                "estimatedExpirationTime": time.strftime(
                    "%Y%m%d_%H%M%S", time.localtime(tok.expires_ms / 1000))}
    return Response(200, json.dumps(body).encode(), "application/json")


def token_show(app: "App", req: Request, user: str, payload) -> Response:
    toks = [t.entity() for t in list(app.auth.tokens.values()) if t.user == user and t.enabled]
    return Response(200, json.dumps(toks).encode(), "application/json")


def _token(app: "App", alias: str):
    tok = app.auth.token(alias)
    if tok is None:
        raise HTTPError(404, f"Alias token {alias} not found.")
    return tok


def token_validate(app: "App", req: Request, user: str, payload) -> Response:
    alias, secret = payload
    tok = _token(app, alias)
    ok = tok.enabled and tok.secret == secret
    body = {"valid": tok.user} if ok else {}
    return Response(200, json.dumps(body).encode(), "application/json")


def token_invalidate(app: "App", req: Request, user: str, payload) -> Response:
    alias, secret = payload
    tok = _token(app, alias)
    if tok.secret == secret:
        app.auth.invalidate_token(alias)
    return Response(200, json.dumps({"result": "OK"}).encode(), "application/json")
