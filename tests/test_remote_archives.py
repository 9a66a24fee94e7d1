"""`git annex get` takes many small files of a resource from one zip, shared by the -J jobs.

Real DataLad (xnat-init, xnat-update --reckless fast, clone), real git-annex with its -J remote
processes, real HTTP against the emulator. An archive answer is counted where the emulator
builds it (`file_routes.archive`, wrapped here), by the path asked for: in this emulator its route
key is the files listing's, which the remote also asks for (`GET .../resources/{R}/files`), and
a route key (even one with its `?format=`) would not tell the resources apart.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import pytest

from git_annex_remote_xnat.keys import object_relpath
from git_annex_remote_xnat.zipstream import (ARCHIVE_MAX_MEAN_BYTES, ARCHIVE_MIN_FILES,
                                             ROUND_TRIP_ENV, worth_an_archive)
from tests.conftest import run
from tests.test_xnat_commands import alice, datalad, ds, init, update  # noqa: F401 - fixtures

RESOURCE = "SLICES"
# (session, scan) -> files of its SLICES resource: four resources of 3 files or more, one of two
SCANS = {("XNAT_E00001", "101"): 12, ("XNAT_E00001", "102"): 10, ("XNAT_E00001", "103"): 12,
         ("XNAT_E00001", "104"): 2, ("XNAT_E00002", "105"): 8}
FILES = sum(SCANS.values())


def content(session: str, scan: str, n: int) -> bytes:
    """Incompressible, distinct, 1.5-2.5 KiB: a small DICOM file's size."""
    seed = f"{session}/{scan}/{n}".encode()
    size = 1536 + (n * 97) % 1024
    out = b""
    while len(out) < size:
        out += hashlib.sha256(seed + len(out).to_bytes(4, "big")).digest()
    return out[:size]


def member(scan: str, n: int) -> str:
    """Scan 103's files are in two folders, a/ and b/, the others flat."""
    return f"{'ab'[n % 2]}/slice{n:03d}.dcm" if scan == "103" else f"slice{n:03d}.dcm"


class ArchiveCount:
    """Archive answers of the emulator by requested path (`file_routes.archive` wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from xnat_emulator import file_routes

        self.by_path: Counter = Counter()
        real = file_routes.archive

        def counted(app, req, *args, **kwargs):
            self.by_path[req.raw_path] += 1
            return real(app, req, *args, **kwargs)

        monkeypatch.setattr(file_routes, "archive", counted)

    @property
    def total(self) -> int:
        return sum(self.by_path.values())


def file_gets(xnat) -> int:
    return sum(n for route, n in xnat.counters.snapshot()["by_route"].items()
               if route.startswith("GET ") and route.endswith("/{path}"))


@pytest.fixture
def clone(xnat, alice, ds, tmp_path) -> Path:  # noqa: F811 - alice and ds are fixtures
    """A clone of a dataset of PUBLIC1's SLICES resources (SCANS), registered without content."""
    for (session, scan), count in SCANS.items():
        for n in range(count):
            xnat.add_file(member(scan, n), content(session, scan, n), resource=RESOURCE,
                          session=session, scan=scan, scan_type="T2w")
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", RESOURCE)
    assert update(ds, "--reckless", "fast")["added"] == FILES
    path = tmp_path / "clone"
    datalad("clone", str(ds), str(path))
    assert len(missing(path)) == FILES
    xnat.counters.reset()
    # a server where a request costs what an archive saves (zipstream.ARCHIVE_MIN_ROUND_TRIP)
    xnat.faults.delay = 0.01
    return path


def missing(repo: Path) -> list[str]:
    return run(["git", "annex", "find", "--not", "--in", "here"], cwd=repo).stdout.split()


def scan_dir(repo: Path, scan: str) -> str:
    """The dataset folder of a scan (the default pathfmt: subject/session/scan)."""
    found = [p for p in repo.glob(f"*/*/{scan}") if p.is_dir() and ".git" not in p.parts]
    assert len(found) == 1, found
    return found[0].relative_to(repo).as_posix()


def nothing_left(repo: Path) -> None:
    """No run directory, and no content but that of the keys here, anywhere in .git/annex."""
    runs = repo / ".git" / "annex" / "tmp" / "xnat-archives"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))
    absent = run(["git", "annex", "find", "--not", "--in", "here", "--format", "${key}\n"],
                 cwd=repo).stdout.split()
    for key in absent:
        assert not (repo / object_relpath(key)).exists(), key
    stray = [p for p in (repo / ".git" / "annex").rglob("*")
             if p.is_file() and any(p.name.startswith(key) for key in absent)]
    assert stray == []


# ------------------------------------------------------------------------------- the policy


def test_the_policy():
    small = 2048
    assert worth_an_archive(3, 3 * small, 3, 3 * small)
    assert not worth_an_archive(ARCHIVE_MIN_FILES - 1, 2 * small, 2, 2 * small)
    assert not worth_an_archive(4, 4 * ARCHIVE_MAX_MEAN_BYTES + 4, 4, 4 * ARCHIVE_MAX_MEAN_BYTES)
    assert worth_an_archive(4, 4 * ARCHIVE_MAX_MEAN_BYTES, 4, 4 * ARCHIVE_MAX_MEAN_BYTES)
    assert worth_an_archive(5, 500, 10, 1000)       # half the resource's bytes
    assert not worth_an_archive(5, 499, 10, 1000)   # less: most of the archive is read past


# ------------------------------------------------------------------------- git annex get


def test_get_J8_takes_each_resource_as_one_archive(xnat, clone, monkeypatch):
    archives = ArchiveCount(monkeypatch)
    started = time.monotonic()
    run(["git", "annex", "get", "-J8", "."], cwd=clone)
    took = time.monotonic() - started
    assert missing(clone) == []
    run(["git", "annex", "fsck", "--quiet"], cwd=clone)
    # one archive per resource of 3 files or more, none of the two-file one
    big = {scan for (_s, scan), count in SCANS.items() if count >= ARCHIVE_MIN_FILES}
    assert archives.total == len(big), archives.by_path
    assert all(n == 1 for n in archives.by_path.values()), archives.by_path
    assert not any("/scans/104/" in path for path in archives.by_path), archives.by_path
    # the first ask of each resource alone, the two-file resource's files alone; the rest zipped
    gets = file_gets(xnat)
    assert gets <= len(big) + 2, xnat.counters.snapshot()
    # each process logs in and out (POST/DELETE /data/JSESSION); the other requests are the
    # files alone, one listing per resource and the archives
    data = sum(n for route, n in xnat.counters.snapshot()["by_route"].items()
               if "/data/JSESSION" not in route)
    assert data < FILES / 2, xnat.counters.snapshot()
    print(f"\nget -J8: {FILES} files, {xnat.counters.total} requests, {data} of them for data "
          f"({gets} file GETs, {archives.total} archives), {took:.1f} s")
    nothing_left(clone)


def test_a_key_an_archive_brought_is_taken_without_asking_its_url(xnat, clone):
    """A job whose key another job's archive placed takes it before asking git-annex for the
    key's URLs (GETURLS: git-annex reads the key's web log for it), so most keys of a zipped
    resource cost no URL lookup; the content is verified all the same (fsck)."""
    out = run(["git", "annex", "get", "-J2", "--debug", "."], cwd=clone)
    assert missing(clone) == []
    run(["git", "annex", "fsck", "--quiet"], cwd=clone)
    lookups = sum("--> GETURLS " in line for line in (out.stdout + out.stderr).splitlines())
    assert 0 < lookups < FILES / 2, lookups
    nothing_left(clone)


def test_one_file_is_one_request_and_no_archive(xnat, clone, monkeypatch):
    archives = ArchiveCount(monkeypatch)
    one = sorted((clone / scan_dir(clone, "101")).glob("slice*.dcm"))[0]
    run(["git", "annex", "get", str(one.relative_to(clone))], cwd=clone)
    assert one.read_bytes() == content("XNAT_E00001", "101", int(one.stem[5:]))
    assert archives.total == 0
    assert file_gets(xnat) == 1, xnat.counters.snapshot()
    assert len(missing(clone)) == FILES - 1
    nothing_left(clone)


def test_a_folder_gets_only_its_files_and_leaves_nothing(xnat, clone, monkeypatch):
    """Scan 103's resource spans a/ and b/: getting a/ fetches its archive, which holds b/'s
    files too; those are not kept anywhere."""
    archives = ArchiveCount(monkeypatch)
    folder = scan_dir(clone, "103") + "/a"
    run(["git", "annex", "get", folder], cwd=clone)
    assert archives.total == 1, archives.by_path
    left = missing(clone)
    assert len(left) == FILES - 6
    assert not any(path.startswith(folder + "/") for path in left)
    assert sum(path.startswith(scan_dir(clone, "103") + "/b/") for path in left) == 6
    nothing_left(clone)
    run(["git", "annex", "fsck", "--quiet"], cwd=clone)


def test_always_archives_from_the_first_ask(xnat, clone, monkeypatch):
    archives = ArchiveCount(monkeypatch)
    run(["git", "config", "datalad.xnat.fetch-archives", "always"], cwd=clone)
    one = sorted((clone / scan_dir(clone, "102")).glob("slice*.dcm"))[0]
    run(["git", "annex", "get", str(one.relative_to(clone))], cwd=clone)
    assert archives.total == 1 and file_gets(xnat) == 0, xnat.counters.snapshot()
    assert len(missing(clone)) == FILES - 1
    nothing_left(clone)


def test_auto_gets_singly_from_a_server_that_answers_at_once(xnat, clone, monkeypatch):
    """Requests cheaper than the archive threshold (no delay, loopback; the threshold raised to
    a second so that a loaded machine's waits stay under it): no archive."""
    xnat.faults.delay = 0.0
    monkeypatch.setenv(ROUND_TRIP_ENV, "1")
    archives = ArchiveCount(monkeypatch)
    run(["git", "annex", "get", "-J8", "."], cwd=clone)
    assert missing(clone) == []
    assert archives.total == 0
    assert file_gets(xnat) == FILES, xnat.counters.snapshot()
    nothing_left(clone)


def test_never_requests_no_archive(xnat, clone, monkeypatch):
    archives = ArchiveCount(monkeypatch)
    run(["git", "config", "datalad.xnat.fetch-archives", "never"], cwd=clone)
    run(["git", "annex", "get", "-J8", "."], cwd=clone)
    assert missing(clone) == []
    assert archives.total == 0
    assert file_gets(xnat) == FILES, xnat.counters.snapshot()
    nothing_left(clone)


@pytest.mark.parametrize("named", ["datalad.xnat.fetch-archives", ROUND_TRIP_ENV])
def test_a_bad_setting_is_named(clone, monkeypatch, named):
    if named == ROUND_TRIP_ENV:
        monkeypatch.setenv(ROUND_TRIP_ENV, "fast")
    else:
        run(["git", "config", named, "sometimes"], cwd=clone)
    got = run(["git", "annex", "get", "."], cwd=clone, check=False)
    assert got.returncode != 0
    assert named in got.stdout + got.stderr
    assert len(missing(clone)) == FILES


# ------------------------------------------------------------------------ broken archives


@pytest.mark.parametrize("fault,value", [("truncate_archives", True),
                                         ("corrupt_archives", True), ("refuse_archives", 500)])
def test_a_broken_archive_still_gets_every_file_verified(xnat, clone, monkeypatch, fault, value):
    """Members the archive did not deliver intact are downloaded alone; a refused archive is
    asked for once (not retried as a file is: its files have their own retries)."""
    archives = ArchiveCount(monkeypatch)
    setattr(xnat.faults, fault, value)
    run(["git", "annex", "get", "-J8", "."], cwd=clone)
    assert missing(clone) == []
    run(["git", "annex", "fsck", "--quiet"], cwd=clone)  # every file's MD5
    assert archives.total >= 1  # the archives were asked for, and failed
    if fault == "refuse_archives":
        assert set(archives.by_path.values()) == {1}, archives.by_path
    assert file_gets(xnat) > len(SCANS) + 2, xnat.counters.snapshot()
    nothing_left(clone)


def test_a_killed_runs_leftovers_are_removed_by_the_next_run(xnat, clone):
    """A run killed outright leaves its directory (content included); the next run's first
    transfer removes it, since that run's git-annex is gone."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    leftover = clone / ".git" / "annex" / "tmp" / "xnat-archives" / str(gone.pid) / "0123abcd"
    leftover.mkdir(parents=True)
    (leftover / "MD5E-s3--900150983cd24fb0d6963f7d28e17f72.dcm").write_bytes(b"abc")
    (leftover / "lock").touch()
    one = sorted((clone / scan_dir(clone, "105")).glob("slice*.dcm"))[0]
    run(["git", "annex", "get", str(one.relative_to(clone))], cwd=clone)
    assert not leftover.parent.exists()
    nothing_left(clone)
