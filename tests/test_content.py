"""Placing content into the annex directly (xnat_init.update.placement), checked against real git-annex.

The end-to-end path (xnat-update against the emulator, then fsck, whereis, drop, get) is in
test_xnat_commands.py; here: that our placement is git-annex's, and when we leave it to git-annex.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from tests.conftest import run
from xnat_init.config import DatasetSettings
from xnat_init.update.placement import (
    AnnexPlacer,
    BackgroundFetch,
    Source,
    WantedStream,
    direct_fetch_refusal,
    object_path,
)
from xnat_init.update.spool import Entry


class LocalSource(Source):
    """A local copy for a download (the HTTP side is tested against the emulator elsewhere),
    one file at a time; `download(name, dest, size, md5)` gets the file's name."""

    def __init__(self, download) -> None:
        super().__init__(None, "http://xnat.example.org", "never")
        self._copy = download

    def download(self, url: str, dest: Path, size: int, md5: str) -> None:
        self._copy(url.rsplit("/", 1)[-1], dest, size, md5)


def Wanted(path: str, key: str, name: str) -> Entry:
    """A wanted file whose xnat: URL ends in `name`."""
    return Entry(path, key, f"xnat://xnat.example.org/projects/P/resources/R/files/{name}")
from git_annex_remote_xnat.keys import md5e_key, parse_key


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "ds"
    run(["git", "init", "-q", str(repo)])
    run(["git", "annex", "init", "-q"], cwd=repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=repo)
    return repo


def test_object_path_is_git_annexes(tmp_path):
    repo = make_repo(tmp_path)
    for name, data in (("a.dcm", b"x"), ("weird name+#.nii.gz", b"y" * 100), ("noext", b"")):
        key = md5e_key(len(data), hashlib.md5(data).hexdigest(), name)
        theirs = run(["git", "annex", "examinekey", key, "--format=${objectpath}\n"],
                     cwd=repo).stdout.strip()
        assert object_path(repo, key) == repo / theirs
        assert parse_key(key) == (len(data), hashlib.md5(data).hexdigest())
    assert parse_key("URL--http&c%%example") == (None, None)


@pytest.mark.parametrize("setting, value, reason", [
    (None, None, None),
    ("core.sharedRepository", "group", "core.sharedrepository"),
    ("annex.crippledfilesystem", "true", "annex.crippledfilesystem"),
    ("annex.tune.objecthashlower", "true", "annex.tune.objecthashlower"),
    ("datalad.xnat.fetch-method", "annex", "fetch-method=annex"),
    ("core.sharedRepository", "false", None),
])
def test_refusals(tmp_path, setting, value, reason):
    repo = make_repo(tmp_path)
    if setting:
        run(["git", "config", setting, value], cwd=repo)
    refusal = direct_fetch_refusal(repo, DatasetSettings.read(repo))
    if reason is None:
        assert refusal is None
    else:
        assert refusal and reason in refusal


def test_uninitialised_and_journal(tmp_path):
    plain = tmp_path / "plain"
    run(["git", "init", "-q", str(plain)])
    assert "not initialised" in direct_fetch_refusal(plain, DatasetSettings.read(plain))
    repo = make_repo(tmp_path)
    journal = repo / ".git" / "annex" / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    (journal / "uuid.log").write_text("pending\n")
    assert "journal" in direct_fetch_refusal(repo, DatasetSettings.read(repo))


def test_placer_places_records_and_reports(tmp_path):
    """A fake download (a local copy: the HTTP side is tested with the emulator elsewhere) shows
    what the placer does with good, corrupt and duplicate keys."""
    repo = make_repo(tmp_path)
    good, bad = b"good content", b"bad content"
    key_good = md5e_key(len(good), hashlib.md5(good).hexdigest(), "g.dcm")
    key_bad = md5e_key(len(bad), hashlib.md5(bad).hexdigest(), "b.dcm")
    for path, key in (("g.dcm", key_good), ("b.dcm", key_bad), ("g2.dcm", key_good)):
        os.symlink(os.path.relpath(object_path(repo, key), repo), repo / path)
    run(["git", "add", "."], cwd=repo)
    run(["git", "commit", "-q", "-m", "links"], cwd=repo)
    calls = []

    def download(url: str, dest: Path, size: int, md5: str) -> None:
        calls.append(url)
        if url == "bad":
            raise RuntimeError("delivered content with MD5 0000, expected " + md5)
        dest.write_bytes(good)

    placer = AnnexPlacer(repo, LocalSource(download), 2, DatasetSettings.read(repo).annex_uuid)
    wanted = [Wanted("g.dcm", key_good, "good"), Wanted("b.dcm", key_bad, "bad"),
              Wanted("g2.dcm", key_good, "good")]
    outcomes = {o.wanted.path: o for o in placer.fetch_all(wanted)}
    assert outcomes["g.dcm"].error is None and outcomes["g.dcm"].size == len(good)
    assert "MD5" in outcomes["b.dcm"].error
    assert calls.count("good") == 1  # a key wanted twice is fetched once
    assert not object_path(repo, key_bad).exists()
    assert not any(p.is_file() for p in (repo / ".git/annex/tmp").rglob("*"))
    # git-annex agrees: content here, checksum right, location log written
    run(["git", "annex", "fsck", "--quiet", "g.dcm", "g2.dcm"], cwd=repo)
    found = run(["git", "annex", "find", "--in", "here", "--json"], cwd=repo).stdout
    assert sorted(json.loads(line)["file"] for line in found.splitlines()) == ["g.dcm", "g2.dcm"]
    # a second pass finds the content present and downloads nothing
    assert list(AnnexPlacer(repo, LocalSource(download), 2, DatasetSettings.read(repo).annex_uuid).fetch_all(wanted[:1])) == []
    assert calls.count("good") == 1


def test_background_fetch_records_only_when_told_and_can_discard(tmp_path):
    """Downloads started early (xnat-update: while the registration commits) place content but
    write nothing on git-annex's branch until record(); discard() leaves no trace."""
    contents = {name: name.encode() * 3 for name in ("a.dcm", "b.dcm", "c.dcm")}
    keys = {name: md5e_key(len(data), hashlib.md5(data).hexdigest(), name)
            for name, data in contents.items()}
    repos = {}
    for tag in ("kept", "dropped"):
        repo = make_repo(tmp_path / tag)
        for name, key in keys.items():
            os.symlink(os.path.relpath(object_path(repo, key), repo), repo / name)
        run(["git", "add", "."], cwd=repo)
        run(["git", "commit", "-q", "-m", "links"], cwd=repo)
        repos[tag] = repo

    def download(url: str, dest: Path, size: int, md5: str) -> None:
        dest.write_bytes(contents[url])

    def plan(repo):
        wanted = [Wanted(name, key, name) for name, key in keys.items()]
        return [("", AnnexPlacer(repo, LocalSource(download), 2, DatasetSettings.read(repo).annex_uuid), iter(wanted))]

    def here(repo):
        """Files whose location log says "here" (`find --in here` would look at the objects)."""
        found = run(["git", "annex", "whereis", "--json"], cwd=repo,
                    check=False).stdout.splitlines()  # exit 1: some have 0 copies
        return [record["file"] for record in map(json.loads, found)
                if any(w.get("here") for w in record["whereis"])]

    kept = BackgroundFetch(plan(repos["kept"]))
    outcomes = [fetched for _, fetched in kept.outcomes()]
    assert sorted(o.wanted.path for o in outcomes if o.error is None) == sorted(contents)
    assert kept.covered == {""}
    assert here(repos["kept"]) == []  # placed, not yet recorded
    kept.record()
    assert sorted(here(repos["kept"])) == sorted(contents)
    run(["git", "annex", "fsck", "--quiet"], cwd=repos["kept"])

    dropped = BackgroundFetch(plan(repos["dropped"]))
    list(dropped.outcomes())
    dropped.discard()
    assert here(repos["dropped"]) == []
    assert run(["git", "annex", "find", "--in", "here"], cwd=repos["dropped"]).stdout == ""
    objects = repos["dropped"] / ".git" / "annex" / "objects"
    assert not any(p.is_file() for p in objects.rglob("*"))


def test_wanted_stream_hands_over_then_reads_the_spool_past_its_limit():
    """The listing hands wanted files over as it finds them; past the stream's limit the
    downloads read the rest from the spool (same files, same order), each file once."""
    wanted = [Wanted(f"f{n}", f"K{n}", f"u{n}") for n in range(7)]
    stream = WantedStream(limit=3)
    counted: list[int] = []
    waiter = threading.Thread(target=lambda: counted.append(stream.wait_for(5)))
    waiter.start()
    for item in wanted[:4]:
        stream.put(item)
    waiter.join(0.2)
    assert waiter.is_alive()  # 3 handed over (the limit), 5 asked for: still waiting
    for item in wanted[4:]:
        stream.put(item)
    stream.close(later=["next"])
    waiter.join(5)
    assert counted == [5]  # 7 in all: at least the 5 asked for
    assert list(stream.items(lambda: iter(wanted))) == wanted
    assert stream.later() == ["next"]

    small = WantedStream()
    small.put(wanted[0])
    small.close()
    assert small.wait_for(500) == 1
    assert list(small.items(lambda: iter(wanted))) == wanted[:1]


def test_wanted_stream_cancel_releases_every_waiter():
    """A run that stops before its listing is done (error, Ctrl-C) must not leave the download
    thread waiting for input that never comes."""
    stream = WantedStream()
    stream.put(Wanted("f", "K", "u"))
    got: list = []

    def consume():
        got.append(stream.wait_for(500))
        got.append(list(stream.items(lambda: iter([]))))
        got.append(stream.later())

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(0.2)
    assert consumer.is_alive()
    stream.cancel()
    consumer.join(5)
    assert not consumer.is_alive() and got == [0, [], []]
