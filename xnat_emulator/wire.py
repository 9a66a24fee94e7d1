"""The request and response objects every route module speaks, and XNAT's error pages.

Route functions take a `Request` and return a `Response` (or raise `HTTPError`/`AuthRequired`,
which the dispatch in `app` turns into XNAT's answers); only `server` touches sockets.
"""

from __future__ import annotations

import email.utils
from xml.sax.saxutils import escape as xml_escape

STATUS_TEXT = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}

# the message of XNAT's (Restlet's) 404 for a URI no route matches
NO_MATCH = "The server has not found anything matching the request URI"

HTML = "text/html;charset=UTF-8"
TEXT = "text/plain;charset=UTF-8"

CONTENT_TYPES = {
    "bmp": "image/bmp", "gif": "image/gif", "html": "text/html", "htm": "text/html",
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "pdf": "application/pdf", "png": "image/png",
    "svg": "image/svg+xml", "tif": "image/tiff", "tiff": "image/tiff", "txt": "text/plain",
    "xml": "text/xml",
}

_MIME_FORMATS = {"application/json": "json", "text/json": "json", "text/xml": "xml",
                 "application/xml": "xml", "text/csv": "csv", "text/html": "html",
                 "application/zip": "zip", "application/x-tar": "tar",
                 "application/x-gzip": "tar.gz", "application/gzip": "tar.gz"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message or STATUS_TEXT.get(status, "Error")


class AuthRequired(Exception):
    """No usable identity: 401 for scripts, a login redirect for browsers."""

    def __init__(self, reason: str = "no credentials", bad_credentials: bool = False) -> None:
        super().__init__(reason)
        self.bad_credentials = bad_credentials


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
        self.cut_after: int | None = None  # a chunked stream breaks off after this many bytes


class Request:
    def __init__(self, method: str, raw_path: str, query: dict[str, str], headers,
                 body: bytes) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.body = body
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


def error_response(status: int, message: str | None = None) -> Response:
    """XNAT's HTML status page for `status` (the message defaults to the status text)."""
    if message is None:
        message = STATUS_TEXT.get(status, "Server error")
    return Response(status, status_page(status, message), HTML)


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def content_type_for(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


def req_flag(v: str | None) -> bool:
    return (v or "").lower() in ("true", "1", "yes")
