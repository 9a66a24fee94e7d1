"""The HTTP layer: an HTTP/1.1 keep-alive server whose handler turns bytes into a `Request`,
asks the `App` for the `Response`, and writes it back.

`make_server(app, host, port, tls)` returns the `ThreadingHTTPServer`; with `tls`, an
`ssl.SSLContext`, it speaks HTTPS (the handshake runs in the connection's own thread).
Besides framing (bodies with Content-Length, streams with a known length, chunked archives),
the handler applies the faults that act on the wire: delays and random errors before
dispatch, the download rate, truncation and corruption while a file's body is sent, and the
break-off of a truncated archive (`Response.cut_after`). It counts every request by its
route template (`paths.counter_key`: an archive's with its `?format=`) and the bytes it sent.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .app import App
from .faults import Endless
from .paths import counter_key, route
from .wire import Request, Response, error_response


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
        template, kind, payload = route(path)
        req = Request(self.command, path, query, self.headers, body)
        req.base_url = self.server.scheme + "://" + (self.headers.get("Host")
                                    or "%s:%s" % self.server.server_address[:2])
        if app.faults.silences(template.endswith("{path}")):
            self._stay_silent()
            return
        try:
            delay = float(app.faults.delay or 0)
            if not template.endswith("{path}"):
                delay += float(app.faults.listing_delay or 0)
            if delay > 0:
                time.sleep(delay)
            err = app.faults.random_error()
            if app.faults.redirect_to:
                resp = Response(302, headers=[
                    ("Location", str(app.faults.redirect_to).rstrip("/") + self.path)])
            elif err is not None:
                resp = error_response(err)
            else:
                resp = app.handle(req, kind, payload)
        except Exception:  # a bug in the emulator: answer 500, keep serving
            traceback.print_exc()
            resp = error_response(500)
        if resp.status >= 500 and app.faults.endless_errors:
            resp = Response(resp.status, b"", resp.ctype, resp.headers, stream=Endless(
                resp.body, b"<p>Internal error</p>\n", app.faults.endless_errors))
        app.counters.record(counter_key(self.command, template, kind, req.fmt), resp.status)
        try:
            self._write(req, resp)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            # the client went away mid-response (a cancelled download): not an error here
            self.close_connection = True

    def _stay_silent(self) -> None:
        """Answer nothing while the `silent` fault lasts; then drop the connection."""
        while self.server.app.faults.silent and not self.server.closing.is_set():
            time.sleep(0.05)
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
        cut = resp.cut_after
        try:
            for chunk in resp.stream.iter_bytes():
                if not chunk:
                    continue
                if cut is not None and sent + len(chunk) >= cut:
                    # the truncate_archives fault: a chunk announced whole, sent in part,
                    # then the connection drops (no terminating chunk)
                    part = chunk[:cut - sent]
                    self.wfile.write(b"%x\r\n%s" % (len(chunk), part))
                    sent += len(part)
                    self._break_connection()
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        finally:
            app.counters.add_bytes(sent)

    def _break_connection(self) -> None:
        """End the response here: flush what was written and shut the connection down."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

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
            self._break_connection()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, app: App, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self.closing = threading.Event()  # set when the server stops: silent handlers end
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address) -> None:
        """Serve one connection, in its own thread: the TLS handshake first when serving
        HTTPS, so a client that refuses the certificate holds up nobody else."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        try:
            super().finish_request(request, client_address)
        finally:  # the plain socket the server closes was detached by the wrapping
            request.close()

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
        self.closing.set()
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def make_server(app: App, host: str = "127.0.0.1", port: int = 0,
                tls: ssl.SSLContext | None = None) -> Server:
    return Server((host, port), app, tls)
