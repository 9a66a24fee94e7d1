"""Nothing the server sends is unbounded: a file body stops one byte past the listed size, a
listing or a login answer past its cap, and a huge valid listing is parsed as it arrives.
Redirects and a wrong Content-Length are named as what they are.

Real HTTP over loopback against the emulator's faults, real DataLad and git-annex; nothing is
mocked. Memory is judged from a child process's peak RSS, never from time.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from benchmarks.listing_memory import big_session_emulator, measure
from git_annex_remote_xnat import urls
from git_annex_remote_xnat.client import NotXnatError, XnatClient, XnatError
from git_annex_remote_xnat.credentials import Credential
from tests.conftest import run
from tests.test_network_faults import recorder  # noqa: F401 (a fixture)
from tests.test_xnat_commands import datalad, init, results, update

ALICE = Credential("emu", "alice", "alice-pass", "test")
MIB = 1 << 20
MAX_LISTING_ENV = "GIT_ANNEX_REMOTE_XNAT_MAX_LISTING_BYTES"


@pytest.fixture
def alice_env(logins):
    logins.login("alice", "alice-pass")


@pytest.fixture
def small_files(emulator_factory):
    """Project BENCH of 3 files of 64 bytes, closed site (the same content: one key)."""
    return emulator_factory(preset="files", files=3, file_size=64, require_login=True)


def leftovers(ds: Path) -> list[Path]:
    """Partial downloads anywhere in the dataset, git-annex's temporary objects included."""
    found = [p for p in ds.rglob("*") if p.is_file() and p.name.endswith(".part")]
    tmp = ds / ".git" / "annex" / "tmp"
    if tmp.exists():
        found += [p for p in tmp.rglob("*") if p.is_file()]
    return found


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_line_without_traceback(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert "Errno" not in message, message


# ------------------------------------------------------------ 1: a file body past its size


def test_an_oversized_body_stops_one_byte_past_the_size_in_update_and_get(
        small_files, alice_env, tmp_path):
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, small_files.url, "-p", "BENCH")
    small_files.faults.endless_downloads = 256 * MIB  # far more than 64 bytes, but finite
    small_files.counters.reset()
    records = results("xnat-update", cwd=ds)
    failures = [r for r in records if r["status"] == "error" and "added" not in r]
    summary = [r for r in records if "added" in r][-1]
    assert summary["added"] == 3 and summary["status"] == "error", summary
    assert failures, records
    for failure in failures:
        one_line_without_traceback(failure["message"])
        assert "more than the 64 bytes" in failure["message"], failure["message"]
        assert "changed on the server" not in failure["message"]
    assert leftovers(ds) == []
    # the server could send 768 MiB; the client stopped each body after 65 bytes
    assert small_files.counters.bytes_sent < 64 * MIB, small_files.counters.bytes_sent

    path = next(p for p in run(["git", "annex", "find", "--not", "--in", "here"],
                               cwd=ds).stdout.splitlines())
    got = run(["git", "annex", "get", path], cwd=ds, check=False)
    assert got.returncode != 0
    words = [line for line in (got.stdout + got.stderr).splitlines() if "64 bytes" in line]
    assert words and "more than the 64 bytes" in words[0], (got.stdout, got.stderr)
    one_line_without_traceback(words[0])
    assert leftovers(ds) == []

    small_files.faults.endless_downloads = False
    run(["git", "annex", "get", path], cwd=ds)
    assert (ds / path).stat().st_size == 64


def test_an_endless_body_stops_too(small_files, tmp_path):
    small_files.faults.endless_downloads = True
    with XnatClient(small_files.url, ALICE, backoff_factor=0.01) as client:
        record = next(iter(client.iter_files("BENCH")))
        path = urls.rest_path(urls.file_url(client.base_url, record), client.base_url)
        with pytest.raises(XnatError, match="more than the 64 bytes") as info:
            client.download(path, tmp_path / "f", size=64, md5=record.md5)
    one_line_without_traceback(str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_an_error_page_that_never_ends_does_not_hold_up_its_retry(small_files, tmp_path):
    """A retried 500 whose page never ends: urllib3 reads an answer it retries to its end to
    reuse the connection, so the retry (and the run) waited for ever. At most a page is read."""
    with XnatClient(small_files.url, ALICE, backoff_factor=0.01) as client:
        record = next(iter(client.iter_files("BENCH")))
        path = urls.rest_path(urls.file_url(client.base_url, record), client.base_url)
        small_files.faults.fail_every_nth_download = 1
        small_files.faults.endless_errors = 64 * MIB  # finite, so that an unbounded client ends
        small_files.counters.reset()
        with pytest.raises(XnatError, match="500") as info:
            client.download(path, tmp_path / "f", size=64, md5=record.md5)
        one_line_without_traceback(str(info.value))
        # every attempt was answered by a 64 MiB page; each was left soon (what the server
        # wrote ahead into socket buffers counts too), so all of them sent less than one page
        assert small_files.counters.by_route, "no request reached the server"
        attempts = sum(n for route, n in small_files.counters.by_route.items()
                       if "{path}" in str(route))
        assert attempts > 1, small_files.counters.by_route
        assert small_files.counters.bytes_sent < 64 * MIB, small_files.counters.bytes_sent
        small_files.faults.clear()
        assert client.download(path, tmp_path / "f", size=64, md5=record.md5) == 64


# --------------------------------------------------- 2: listings and login answers have a cap


def test_an_endless_listing_is_one_line_naming_the_setting(small_files, monkeypatch):
    monkeypatch.setenv(MAX_LISTING_ENV, "4M")
    client = XnatClient(small_files.url, ALICE, backoff_factor=0.01)
    client.login()
    small_files.faults.endless_listings = 1 << 30  # finite, so that a client without a cap ends
    before = peak_rss_mib()
    with pytest.raises(XnatError) as info:
        list(client.iter_files("BENCH"))
    message = str(info.value)
    one_line_without_traceback(message)
    assert MAX_LISTING_ENV in message and "4 MiB" in message, message
    # a generous bound: the whole endless body would grow without one
    assert peak_rss_mib() - before < 200
    small_files.faults.endless_listings = False
    assert len(list(client.iter_files("BENCH"))) == 3
    client.close()


def test_an_endless_listing_is_one_error_of_xnat_query(small_files, alice_env,
                                                                    monkeypatch):
    monkeypatch.setenv(MAX_LISTING_ENV, "2M")
    small_files.faults.endless_listings = 256 * MIB
    records = results("xnat-query-files", small_files.url, "-p", "BENCH")
    assert len(records) == 1 and records[0]["status"] == "error", records
    one_line_without_traceback(records[0]["message"])
    assert MAX_LISTING_ENV in records[0]["message"], records[0]["message"]


def test_a_bad_listing_cap_setting_is_one_clear_line(small_files, monkeypatch):
    monkeypatch.setenv(MAX_LISTING_ENV, "lots")
    with pytest.raises(XnatError, match=MAX_LISTING_ENV):
        XnatClient(small_files.url, ALICE).projects()


def test_an_endless_login_answer_is_refused_in_one_line(small_files):
    small_files.faults.endless_login = 512 * MIB  # finite, so that a client without a cap ends
    before = peak_rss_mib()
    with pytest.raises(NotXnatError) as info:
        XnatClient(small_files.url, ALICE, backoff_factor=0.01).login()
    one_line_without_traceback(str(info.value))
    assert "session id" in str(info.value)
    assert peak_rss_mib() - before < 200
    assert small_files.counters.bytes_sent < 64 * MIB


# ------------------------------------------------------ 3: a huge valid listing, as a stream


def test_a_huge_listing_is_parsed_in_flat_memory():
    """Peak RSS of a child listing 20,000 and 200,000 rows of one session: the same within a
    generous margin (without streaming the larger took about 300 MiB more)."""
    peaks = {}
    for rows in (20_000, 200_000):
        emu = big_session_emulator(rows)
        try:
            report = measure(emu.url)
        finally:
            emu.stop()
        assert report["records"] == rows + 1, report
        peaks[rows] = report["peak_rss_kib"] / 1024
    assert peaks[200_000] - peaks[20_000] < 60, peaks


def test_streamed_rows_keep_their_order():
    emu = big_session_emulator(30_000, require_login=False)
    try:
        with XnatClient(emu.url) as client:
            paths = [r.path for r in client.iter_files("BENCH") if r.scan_id == "9"]
    finally:
        emu.stop()
    series = next(r for r in emu.site.experiments.values()).scans[-1].resources[0].source
    assert paths == [series.name(i) for i in range(30_000)]


# ------------------------------------------------------------------------ 4: words


def test_a_wrong_content_length_is_not_a_changed_file(small_files, alice_env, tmp_path):
    """The server announces more bytes than it sends and closes: the body is the file (size and
    MD5 match), so it is kept, by the client, xnat-update and git annex get."""
    small_files.faults.wrong_content_length = 100
    with XnatClient(small_files.url, ALICE, backoff_factor=0.01) as client:
        record = next(iter(client.iter_files("BENCH")))
        path = urls.rest_path(urls.file_url(client.base_url, record), client.base_url)
        assert client.download(path, tmp_path / "f", size=64, md5=record.md5) == 64
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, small_files.url, "-p", "BENCH")
    summary = update(ds)
    assert summary["status"] == "ok" and summary["failed"] == 0, summary
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    run(["git", "annex", "drop", "--force", "."], cwd=ds)
    run(["git", "annex", "get", "."], cwd=ds)
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)


def test_a_wrong_length_that_does_not_match_is_named(small_files, tmp_path):
    small_files.faults.wrong_content_length = 100
    with XnatClient(small_files.url, ALICE, backoff_factor=0.01) as client:
        record = next(iter(client.iter_files("BENCH")))
        path = urls.rest_path(urls.file_url(client.base_url, record), client.base_url)
        with pytest.raises(XnatError) as info:  # the key says 32 bytes: neither length fits
            client.download(path, tmp_path / "f", size=32, md5=None)
    message = str(info.value)
    assert "Content-Length" in message and "164" in message, message
    assert "changed on the server" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_redirected_download_says_so(small_files, recorder, tmp_path):
    with XnatClient(small_files.url, ALICE, backoff_factor=0.01) as client:
        record = next(iter(client.iter_files("BENCH")))
        path = urls.rest_path(urls.file_url(client.base_url, record), client.base_url)
        small_files.faults.redirect_to = recorder.url()
        with pytest.raises(XnatError) as elsewhere:
            client.download(path, tmp_path / "f", size=64, md5=record.md5)
        small_files.faults.redirect_to = small_files.url  # a loop
        with pytest.raises(XnatError) as loop:
            client.download(path, tmp_path / "f", size=64, md5=record.md5)
    for info in (elsewhere, loop):
        message = str(info.value)
        one_line_without_traceback(message)
        assert "redirect" in message and "changed on the server" not in message, message
    assert recorder.url() in str(elsewhere.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_failure_while_placing_is_named_in_words(small_files, alice_env,
                                                               tmp_path):
    """Content that cannot be placed in the annex (here a file stands where its object folder
    belongs) fails that file with the system's words and the path, not Python's "[Errno N]"."""
    from git_annex_remote_xnat.keys import md5e_key, object_relpath

    with XnatClient(small_files.url, ALICE) as client:
        record = next(iter(client.iter_files("BENCH")))
    key = md5e_key(record.size, record.md5, record.path)
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, small_files.url, "-p", "BENCH")
    blocker = ds / Path(object_relpath(key)).parent.parent.parent  # .git/annex/objects/Xy/Zw
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    records = results("xnat-update", cwd=ds)
    failures = [r for r in records if r["status"] == "error" and "added" not in r]
    assert failures, records
    for failure in failures:
        one_line_without_traceback(failure["message"])
        assert "Not a directory" in failure["message"] and str(blocker) in failure["message"]
    blocker.unlink()
    assert update(ds)["fetched"] == 1
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)


def test_names_with_lone_surrogates_survive_any_chunking():
    """XNAT escapes names that are not UTF-8 as lone surrogates, which ijson's C parser refuses;
    the rows must come out as Python's json reads them, however the body is cut into chunks."""
    from git_annex_remote_xnat.client.resultset import iter_rows

    names = ["a\udcffb", "x\U0001F600", "\\udcff literal", "lone\ud800.txt", "\ud800\udc00",
             "q\\", "end\udc00\udc01", "\\\\\udcff", "\ud83d", "\ud83d\ud83d\ude00"]
    body = json.dumps({"ResultSet": {"Result": [{"Name": n, "URI": "/f/" + n}
                                                for n in names]}}).encode()
    expected = json.loads(body)["ResultSet"]["Result"]
    for size in range(1, 40):
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert list(iter_rows(chunks, 1 << 20, "http://x")) == expected, size
