"""The client's requests under a faulty network, end to end: transient 5xx, broken bodies and
expiring sessions (retried), TLS (refused with one line unless the CA is trusted), redirects to
another host (no secret follows) and servers that stop answering (one error, soon).

Real HTTP over loopback against the emulator, real DataLad and git-annex; nothing is mocked.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from git_annex_remote_xnat import urls
from git_annex_remote_xnat.client import (
    FileRecord, ServerUnreachableError, XnatClient, XnatError,
)
from git_annex_remote_xnat.client.session import TIMEOUT_ENV
from git_annex_remote_xnat.credentials import Credential
from tests.conftest import cred_env, run
from tests.test_xnat_commands import datalad, init, results, update

ALICE = Credential("emu", "alice", "alice-pass", "test")


def closed_site_user(monkeypatch, url: str) -> None:
    """alice's login for the server `url`, under its default credential name (host:port)."""
    user_var, password_var = cred_env(url)
    monkeypatch.setenv(user_var, "alice")
    monkeypatch.setenv(password_var, "alice-pass")


# ------------------------------------------------------------------ 1: retries under a fault mix


@pytest.mark.parametrize("archives", ["never", "auto"])
def test_first_update_completes_under_the_fault_mix(archives, emulator_factory, monkeypatch,
                                                    tmp_path):
    """XNAT's Tomcat answers 500 for transient failures; with them, broken bodies and sessions
    that expire every 50 requests, one first update with 4 jobs still gets every file: one file
    at a time (archives never), or as archives that break off or hold a corrupted member,
    whose missing files then come alone under the same faults (auto)."""
    emu = emulator_factory(preset="files", files=400, file_size=1024, require_login=True)
    closed_site_user(monkeypatch, emu.url)
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, emu.url, "-p", "BENCH")
    run(["git", "config", "datalad.xnat.fetch-archives", archives], cwd=ds)
    emu.faults.error_rate = 0.05
    emu.faults.error_status = 500
    emu.faults.truncate_downloads = 0.05
    emu.faults.corrupt_downloads = 0.05
    emu.faults.expire_sessions_after = 50
    if archives == "auto":
        emu.faults.truncate_archives = True   # every archive breaks off halfway
        emu.faults.corrupt_archives = True
    emu.counters.reset()
    summary = update(ds, "-J", "4")
    by_status = emu.counters.by_status
    emu.faults.clear()
    assert summary["status"] == "ok" and summary["failed"] == 0, summary
    assert summary["added"] == 400 and summary["fetched"] == 400, summary
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)
    assert by_status.get(500, 0) > 0 and by_status.get(401, 0) > 0, by_status


# ------------------------------------------------------------------------------------- 2: TLS

TRUST_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture
def https_xnat(emulator_factory, tmp_path, monkeypatch):
    """A closed site over HTTPS with a certificate of a CA made for this test; no trust is
    configured (the CA's PEM file is `https_xnat.ca_file`)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    emu = emulator_factory(require_login=True, tls=context)
    emu.ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(emu.ca_file))
    for var in TRUST_VARS:
        monkeypatch.delenv(var, raising=False)
    closed_site_user(monkeypatch, emu.url)
    return emu


def assert_untrusted_line(message: str) -> None:
    assert "not trusted" in message and "REQUESTS_CA_BUNDLE" in message, message
    assert "system" in message and "\n" not in message.strip() and "Traceback" not in message


def test_untrusted_certificate_is_one_clear_line_and_a_ca_bundle_fixes_it(
        https_xnat, monkeypatch, tmp_path):
    url = https_xnat.url
    assert url.startswith("https://")
    records = results("xnat-query-files", url)
    assert len(records) == 1 and records[0]["status"] == "error", records
    assert_untrusted_line(records[0]["message"])

    monkeypatch.setenv("SSL_CERT_FILE", str(https_xnat.ca_file))
    assert {r["project"] for r in results("xnat-query-files", url)} >= {"PUBLIC1", "PROT1"}
    monkeypatch.delenv("SSL_CERT_FILE")

    ds = tmp_path / "ds"
    datalad("create", str(ds))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_xnat.ca_file))
    assert [r["status"] for r in init(ds, url, "-p", "PUBLIC1", "-c", "MAT")] == ["ok"]
    assert update(ds, "--reckless", "fast")["status"] == "ok"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")

    records = results("xnat-update", cwd=ds)
    errors = [r for r in records if r["status"] == "error"]
    assert len(errors) == 1, records
    assert_untrusted_line(errors[0]["message"])

    mat = "SUBJ01/SUBJ01_MR1/BOLD_1/motion.par"
    got = run(["git", "annex", "get", mat], cwd=ds, check=False)
    assert got.returncode != 0 and "Traceback" not in got.stderr
    lines = [line for line in (got.stdout + got.stderr).splitlines() if "not trusted" in line]
    assert lines, (got.stdout, got.stderr)
    assert_untrusted_line(lines[0])

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_xnat.ca_file))
    run(["git", "annex", "get", mat], cwd=ds)
    assert (ds / mat).exists()


def test_a_trusted_certificate_for_another_host_is_refused(emulator_factory, monkeypatch,
                                                          tmp_path):
    """Trusting the CA is not enough: the certificate must name the host. (With urllib3 1.26
    the client leaves that check to urllib3 instead of ssl.)"""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("xnat.example.org").configure_cert(context)
    emu = emulator_factory(require_login=True, tls=context)
    for var in TRUST_VARS:
        monkeypatch.delenv(var, raising=False)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    closed_site_user(monkeypatch, emu.url)
    records = results("xnat-query-files", emu.url)
    assert [r["status"] for r in records] == ["error"], records
    assert "127.0.0.1" in records[0]["message"] and "TLS" in records[0]["message"], records


# ----------------------------------------------------------------- 3: redirects to another host


class HeaderRecorder(ThreadingHTTPServer):
    """A second server on another port that keeps the headers of every request it gets and
    answers each with an empty XNAT listing."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"ResultSet": {"Result": []}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}"


@pytest.fixture
def recorder():
    server = HeaderRecorder()
    yield server
    server.shutdown()
    server.server_close()


def a_file_path(client: XnatClient) -> tuple[str, FileRecord]:
    record = next(r for r in client.iter_files("PUBLIC1") if r.md5)
    return urls.rest_path(urls.file_url(client.base_url, record), client.base_url), record


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_redirect_elsewhere_carries_no_cookie_and_no_password(xnat, recorder, host, tmp_path):
    with XnatClient(xnat.url, ALICE, backoff_factor=0.01) as client:
        path, record = a_file_path(client)  # logged in: the client holds a session cookie
        xnat.faults.redirect_to = recorder.url(host)
        assert client.subjects("PUBLIC1") == []          # a listing, answered by the recorder
        with pytest.raises(XnatError):                   # a download: the wrong body
            client.download(path, tmp_path / "f", size=record.size, md5=record.md5)
        assert client.file_status(path).exists           # a HEAD
    with XnatClient(xnat.url, ALICE, backoff_factor=0.01) as client:
        with pytest.raises(XnatError):                   # the login itself redirected
            client.login()
    xnat.faults.redirect_to = ""
    assert len(recorder.seen) >= 4, recorder.seen
    for headers in recorder.seen:
        assert "cookie" not in headers and "authorization" not in headers, headers
        assert "JSESSIONID" not in str(headers) and "alice-pass" not in str(headers)


def test_the_session_cookie_stays_with_its_server(xnat, recorder):
    """The login answer sets JSESSIONID without a Domain: it belongs to the server's scheme,
    host and port, so an absolute URL elsewhere (another port here) does not get it."""
    with XnatClient(xnat.url, ALICE, backoff_factor=0.01) as client:
        client.login()
        client.session.request("GET", recorder.url() + "/data/projects").close()
        client.session.request("GET", recorder.url("localhost") + "/data/projects").close()
    assert len(recorder.seen) == 2
    assert all("cookie" not in headers for headers in recorder.seen), recorder.seen


# ------------------------------------------------------------ 4: a server that stops answering


@pytest.fixture
def short_timeouts(monkeypatch):
    """Per-request timeouts of a fraction of a second, for this process and its children."""
    monkeypatch.setenv(TIMEOUT_ENV, "0.5,0.5")


def test_a_silent_server_fails_each_request_with_one_line(xnat, short_timeouts):
    xnat.faults.silent = True
    client = XnatClient(xnat.url, ALICE, backoff_factor=0.01)
    with pytest.raises(ServerUnreachableError) as first:
        client.projects()
    message = str(first.value)
    assert "\n" not in message and "cannot reach" in message and "127.0.0.1" in message
    for _ in range(3):  # judged unreachable: nothing more is sent
        with pytest.raises(ServerUnreachableError):
            client.subjects("PUBLIC1")
    assert client.given_up is not None and "stopped answering" in str(client.given_up)
    xnat.faults.silent = False
    xnat.counters.reset()
    with pytest.raises(ServerUnreachableError, match="stopped answering"):
        client.subjects("PUBLIC1")
    assert xnat.counters.total == 0
    client.close()


def test_a_bad_timeout_setting_is_one_clear_line(xnat, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(XnatError, match=TIMEOUT_ENV):
        XnatClient(xnat.url, ALICE).projects()
    closed_site_user(monkeypatch, xnat.url)
    records = results("xnat-query-files", xnat.url)
    assert len(records) == 1 and records[0]["status"] == "error", records
    assert TIMEOUT_ENV in records[0]["message"] and "e.g. 30" in records[0]["message"]


@pytest.mark.parametrize("processes", ["1", "2"])  # downloads in threads, in helper processes
def test_update_against_a_server_gone_silent_ends_with_one_error(
        processes, emulator_factory, monkeypatch, tmp_path, short_timeouts):
    emu = emulator_factory(preset="files", files=24, file_size=512, require_login=True)
    closed_site_user(monkeypatch, emu.url)
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, emu.url, "-p", "BENCH")
    run(["git", "config", "datalad.xnat.fetch-processes", processes], cwd=ds)
    run(["git", "config", "datalad.xnat.fetch-archives", "never"], cwd=ds)  # file by file
    emu.faults.silent = "downloads"
    records = results("xnat-update", "-J", "4", cwd=ds)
    emu.faults.silent = False
    errors = [r for r in records if r["status"] == "error" and "added" not in r]
    assert len(errors) == 1, [r.get("message") for r in errors]
    assert "stopped answering" in errors[0]["message"] and "\n" not in errors[0]["message"]
    summary = [r for r in records if "added" in r][-1]
    assert summary["status"] == "error" and summary["added"] == 24
    # what could not be fetched is registered; the next run gets it
    assert update(ds)["fetched"] == 24
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
