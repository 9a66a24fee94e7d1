"""What can go wrong talking to XNAT, as exceptions whose str() is one line, and the one test
for XNAT's favourite way of going wrong quietly: a 2xx answer that is its HTML login page.

Kept free of HTTP machinery so any caller can import the error types without the transport.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from ..messages import one_line


class XnatError(Exception):
    """Base of all client errors; str() is always one line (git-annex and DataLad show it as is)."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None):
        super().__init__(one_line(message))
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


class TLSError(ServerUnreachableError):
    """The TLS handshake failed, most often on a certificate that is not trusted here."""


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


# How far into a body the login page's marks are looked for.
_SNIFF = 65536


def is_login_page(content_type: str, path: str, head: bytes = b"") -> bool:
    """Whether a 2xx answer to `path` is an HTML page where data was asked for.

    XNAT (or a proxy in front of it) answers a request whose session expired, or that it takes
    for a browser's, with 200 and its login page; stored as a file or parsed as a listing, that
    page would be wrong data, so it must be caught before anything is kept. Nothing a client
    asks for is HTML unless `path` names an .html/.htm file. An HTML Content-Type decides; a
    body (`head`, its first bytes, when already read) that starts like an HTML document counts
    only when it mentions a login, because a file may be HTML inside whatever its name says.
    """
    if unquote(path.split("?", 1)[0]).lower().endswith((".html", ".htm")):
        return False
    if "text/html" in content_type.lower():
        return True
    start = head[:256].lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html")) and b"login" in head[:_SNIFF].lower()


def login_page_error(status: int, method: str, url: str, hint: str) -> AuthenticationError:
    """The error for an answer `is_login_page` recognised; `hint` says how to log in."""
    return AuthenticationError(
        f"HTTP {status} for {method} {safe_url(url)} is an HTML page (a login page?) instead of "
        f"what was asked for; {hint}", status, url)
