"""Fetching many small files of one resource as one zip (issue 16), in xnat-update's default mode.

Real DataLad, git-annex and HTTP against the emulator; the emulator counts its requests.
"""

from __future__ import annotations

import hashlib

import pytest

from git_annex_remote_xnat.zipstream import ROUND_TRIP_ENV
from tests.conftest import run
from tests.test_xnat_commands import alice, ds, init, update  # noqa: F401 (fixtures)

SCANS = {"7": 12, "8": 9}           # scan -> files (small: one archive each)
SESSION = "SUBJ01_MR1"


def content(scan: str, number: int) -> bytes:
    return hashlib.sha256(f"{scan}/{number}".encode()).digest() * (200 + number)


def add_scans(xnat) -> dict[str, bytes]:
    """Two scans of many small DICOM files; their paths in the dataset and contents."""
    files = {}
    for scan, count in SCANS.items():
        for number in range(count):
            name = f"1.2.{scan}.{number}.dcm"
            xnat.add_file(name, content(scan, number), resource="DICOM", session=SESSION,
                          scan=scan, scan_type="T1w")
            files[f"SUBJ01/{SESSION}/{scan}/{name}"] = content(scan, number)
    return files


def resources(xnat) -> dict[tuple[str, str], int]:
    """(scan, resource) -> files of the selection (session SUBJ01_MR1, T1w scans)."""
    found: dict[tuple[str, str], int] = {}
    for f in xnat.iter_files("PUBLIC1"):
        if f.level == "scan" and f.session_label == SESSION and f.scan_type == "T1w":
            found[(f.scan_id, f.resource)] = found.get((f.scan_id, f.resource), 0) + 1
    return found


def requests_of(xnat, action) -> dict[str, int]:
    """The emulator's requests during `action()`, by route."""
    before = dict(xnat.counters.snapshot()["by_route"])
    action()
    after = xnat.counters.snapshot()["by_route"]
    return {route: n - before.get(route, 0) for route, n in after.items()
            if n > before.get(route, 0)}


def file_gets(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if route.endswith("/{path}"))


def archive_gets(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if route.endswith("/files?format=zip"))


# seconds per response: a server where a request costs what `auto` saves with an archive
# (zipstream.ARCHIVE_MIN_ROUND_TRIP); a real XNAT's are tens of milliseconds
DEAR = 0.01


def prepared(xnat, ds, processes: str = "1", delay: float = DEAR) -> dict[str, bytes]:
    files = add_scans(xnat)
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", SESSION, "--scan-type", "T1w")
    run(["git", "config", "datalad.xnat.fetch-processes", processes], cwd=ds)
    update(ds, "--reckless", "fast")
    xnat.faults.delay = delay
    return files


def assert_all_verified(ds, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert (ds / path).read_bytes() == data
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    assert not any(p.is_file() for p in (ds / ".git" / "annex" / "tmp").rglob("*"))


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_resource_of_small_files_comes_as_one_archive(xnat, alice, ds, processes):
    """One zip per resource of 3 or more small files, each member verified; a resource of
    fewer files comes a file at a time. In the update's process and in helper processes."""
    files = prepared(xnat, ds, processes)
    counts: dict = {}
    summary = {}
    counts = requests_of(xnat, lambda: summary.update(update(ds, "-J", "4")))
    listed = resources(xnat)
    assert summary["failed"] == 0 and summary["fetched"] == sum(listed.values()), summary
    assert archive_gets(counts) == sum(1 for n in listed.values() if n >= 3), counts
    assert file_gets(counts) == sum(n for n in listed.values() if n < 3), counts
    assert_all_verified(ds, files)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_auto_fetches_singly_from_a_server_that_answers_at_once(xnat, alice, ds, processes,
                                                               monkeypatch):
    """Requests that cost less than the archive threshold (the emulator without a delay, on
    loopback; the threshold raised to a second so that a loaded machine's waits stay under
    it) save less than the server spends building a zip: every file comes alone."""
    monkeypatch.setenv(ROUND_TRIP_ENV, "1")
    files = prepared(xnat, ds, processes, delay=0.0)
    summary = {}
    counts = requests_of(xnat, lambda: summary.update(update(ds, "-J", "4")))
    assert summary["failed"] == 0, summary
    assert archive_gets(counts) == 0 and file_gets(counts) == sum(resources(xnat).values()), \
        counts
    assert_all_verified(ds, files)


def test_never_fetches_archives_when_told_so(xnat, alice, ds):
    prepared(xnat, ds)
    run(["git", "config", "datalad.xnat.fetch-archives", "never"], cwd=ds)
    counts = requests_of(xnat, lambda: update(ds, "-J", "4"))
    assert archive_gets(counts) == 0 and file_gets(counts) == sum(resources(xnat).values())


@pytest.mark.parametrize("bad", ["setting", "round trip"])
def test_a_bad_archive_setting_is_one_line_and_changes_nothing(xnat, alice, ds, bad,
                                                               monkeypatch):
    prepared(xnat, ds)
    if bad == "setting":
        run(["git", "config", "datalad.xnat.fetch-archives", "sometimes"], cwd=ds)
    else:
        monkeypatch.setenv(ROUND_TRIP_ENV, "5ms")
    from tests.test_xnat_commands import results, state
    before = state(ds)
    errors = [r for r in results("xnat-update", cwd=ds) if r["status"] == "error"]
    named = "fetch-archives" if bad == "setting" else ROUND_TRIP_ENV
    assert len(errors) == 1 and named in errors[0]["message"], errors
    assert "\n" not in errors[0]["message"]
    assert state(ds) == before


@pytest.mark.parametrize("fault", ["corrupt_archives", "truncate_archives"])
def test_a_broken_archive_costs_single_downloads_never_a_bad_file(xnat, alice, ds, fault):
    """A member that is not what was listed, or an archive that breaks off: no bad or partial
    file is kept, and what the archive did not deliver whole is fetched alone, verified."""
    files = prepared(xnat, ds)
    setattr(xnat.faults, fault, True)
    summary = {}
    counts = requests_of(xnat, lambda: summary.update(update(ds, "-J", "4")))
    assert summary["failed"] == 0, summary
    assert archive_gets(counts) >= 1 and file_gets(counts) > sum(
        n for n in resources(xnat).values() if n < 3), counts
    assert_all_verified(ds, files)


def test_a_refused_archive_is_asked_once_then_its_files_come_alone(xnat, alice, ds):
    """A server whose archive service fails (503 to every zip): each archive is asked for
    once, not retried like a file (the files' own downloads have the retries), and every file
    comes alone, verified."""
    files = prepared(xnat, ds)
    xnat.faults.refuse_archives = 503
    summary = {}
    counts = requests_of(xnat, lambda: summary.update(update(ds, "-J", "4")))
    listed = resources(xnat)
    assert summary["failed"] == 0, summary
    assert archive_gets(counts) == sum(1 for n in listed.values() if n >= 3), counts
    assert file_gets(counts) == sum(listed.values()), counts
    assert_all_verified(ds, files)


def test_an_archive_of_a_resource_partly_here_is_read_whole(xnat, alice, ds):
    """The archive holds every file of its resource, also those present already: it is read
    up to the resource's listed bytes, not only the wanted ones' (else it looked too long
    after the present file and the wanted files after it came alone)."""
    files = prepared(xnat, ds)
    big = {}
    for number in range(6):
        name = f"1.2.9.{number}.dcm"
        # 512 KiB each, the first (present already, first in the archive) 2 MiB
        data = hashlib.sha256(f"9/{number}".encode()).digest() * (16 * 1024)
        data *= 4 if number == 0 else 1
        xnat.add_file(name, data, resource="DICOM", session=SESSION, scan="9", scan_type="T1w")
        big[f"SUBJ01/{SESSION}/9/{name}"] = data
    update(ds, "--reckless", "fast")
    first = sorted(big)[0]
    run(["git", "annex", "get", first], cwd=ds)
    counts = requests_of(xnat, lambda: update(ds, "-J", "4"))
    listed = resources(xnat)
    assert archive_gets(counts) == sum(1 for n in listed.values() if n >= 3), counts
    assert file_gets(counts) == sum(n for n in listed.values() if n < 3), counts
    assert_all_verified(ds, {**files, **big})
