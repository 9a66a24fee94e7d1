"""Site routes: the home page, the version a client probes for, and XNAT's build info.

These answer what the site is rather than what it holds; `version_mode` decides between
XNAT 1.8 (buildInfo, no `/data/version`) and XNAT 1.6 (the reverse).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .auth_routes import authenticate, login_redirect
from .wire import HTML, NO_MATCH, TEXT, AuthRequired, HTTPError, Request, Response

if TYPE_CHECKING:
    from .app import App

LEGACY_VERSION = "1.6.5"

BUILD_INFO = {
    "version": "1.8.10", "buildNumber": "emulator", "buildDate": "Mon Jan 15 10:00:00 UTC 2024",
    "sha": "0000000000", "isDirty": "false", "commit": "0", "tag": "1.8.10",
    "shaFull": "0000000000000000000000000000000000000000", "branch": "emulator",
    "timestamp": "1705312800000",
}


def root(app: "App", req: Request) -> Response:
    """`/`: the home page with who is logged in; without an identity, the login redirect."""
    try:
        user = authenticate(app, req)
    except AuthRequired:
        return login_redirect(app, req)
    if user == "guest":
        who = '<span id="user_info">Logged in as: <span style="color:red;">Guest</span></span>'
    else:
        who = f'<span id="user_info">Logged in as: <a href="/app/template/XDATScreen_UpdateUser.vm">{user}</a></span>'
    page = ("<!DOCTYPE html>\n<html>\n<head><title>XNAT</title></head>\n<body>\n"
            f"<div id=\"header\">{who}</div>\n<h1>XNAT emulator</h1>\n</body>\n</html>\n")
    return Response(200, page.encode(), HTML)


def build_info(app: "App", req: Request, user: str, payload) -> Response:
    if app.legacy:
        return Response(404, b"", "text/plain")
    return Response(200, json.dumps(BUILD_INFO).encode(), "application/json")


def version(app: "App", req: Request, user: str, payload) -> Response:
    if app.legacy:
        return Response(200, LEGACY_VERSION.encode(), TEXT)
    raise HTTPError(404, NO_MATCH)
