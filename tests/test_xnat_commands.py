"""End to end: datalad xnat-init / xnat-update / xnat-query-files against the emulator.

Real DataLad, git-annex, special remote, keyring and HTTP; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import cred_env, run


def datalad(*args: str, cwd: Path | str | None = None, check: bool = True):
    return run(["datalad", *args], cwd=cwd, check=check)


def results(*args: str, cwd: Path | str | None = None) -> list[dict]:
    """`datalad -f json ...` records (the command may fail: the records say how)."""
    proc = run(["datalad", "-f", "json", *args], cwd=cwd, check=False)
    records = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            records.append(json.loads(line))
    assert "Traceback" not in proc.stderr, proc.stderr
    return records


def state(ds: Path) -> tuple[str, str, str]:
    """HEAD, work-tree status and the list of annex branches: what 'untouched' compares."""
    head = run(["git", "rev-parse", "HEAD"], cwd=ds).stdout
    status = run(["git", "status", "--porcelain", "--ignored"], cwd=ds).stdout
    config = (ds / ".datalad" / "config").read_text()
    return head, status, config


@pytest.fixture
def alice(logins):
    """alice's login for every emulator of the test, under its default credential name."""
    logins.login("alice", "alice-pass")


@pytest.fixture
def ds(tmp_path) -> Path:
    path = tmp_path / "ds"
    datalad("create", str(path))
    return path


def init(ds: Path, url: str, *args: str) -> list[dict]:
    return results("xnat-init", url, *args, cwd=ds)


def update(ds: Path, *args: str) -> dict:
    records = results("xnat-update", *args, cwd=ds)
    summaries = [r for r in records if r.get("action") == "xnat_update" and r.get("type") == "dataset"]
    assert summaries, records
    return summaries[-1]


def annex_key(ds: Path, path: str) -> str:
    return os.readlink(ds / path).rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------- help


def test_help_lists_commands():
    out = datalad("--help").stdout
    for name in ("xnat-init", "xnat-update", "xnat-query-files", "xnat-query"):
        assert name in out
    assert "--pathfmt" in datalad("xnat-init", "--help").stdout
    assert "--remove-gone" in datalad("xnat-update", "--help").stdout


# ------------------------------------------------------------------------------------ query


def test_query_projects_subjects_files(xnat, alice):
    projects = {r["project"] for r in results("xnat-query-files", xnat.url)}
    assert {"PUBLIC1", "PROT1"} <= projects and "PRIV1" not in projects
    subjects = {r["subject_label"] for r in results("xnat-query", xnat.url, "-p", "PUBLIC1")}
    assert subjects == {"SUBJ01", "SUBJ02"}
    files = results("xnat-query", xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1", "-c", "MAT")
    by_name = {r["file"]: r for r in files}
    assert set(by_name) == {"bold xfm+run #1.mat", "motion.par"}
    mat = by_name["bold xfm+run #1.mat"]
    assert mat["size"] > 0 and len(mat["md5"]) == 32 and mat["resource"] == "MAT"
    assert mat["uri"].startswith("xnat://127.0.0.1:") and " " not in mat["uri"]
    assert by_name["motion.par"]["md5"] == ""
    subject_files = results("xnat-query", xnat.url, "-p", "PUBLIC1", "-s", "SUBJ02")
    assert subject_files and all(r["subject_label"] == "SUBJ02" for r in subject_files)


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:1", "127.0.0.1"),
    ("not a url", "not an XNAT server URL"),
])
def test_query_bad_url(url, words, alice, logins):
    if url.startswith("http"):
        logins.server(url)  # a credential for it: what fails is the connection
    records = results("xnat-query", url)
    assert len(records) == 1 and records[0]["status"] == "error"
    assert words in records[0]["message"]


# ------------------------------------------------------------------------------------- init


def test_init_writes_config_provider_and_remote(xnat, alice, ds):
    records = init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM", "-c", "NIFTI")
    assert [r["status"] for r in records] == ["ok"], records
    config = run(["git", "config", "-f", ".datalad/config", "--get-regexp", "datalad.xnat"],
                 cwd=ds).stdout
    assert f"datalad.xnat.default.url {xnat.url}" in config
    assert "datalad.xnat.default.project PUBLIC1" in config
    assert "datalad.xnat.default.collection DICOM" in config
    assert "datalad.xnat.default.collection NIFTI" in config
    assert "datalad.xnat.default.pathfmt {subject}/{session}/{scan}/" in config
    name = f"127.0.0.1:{xnat.url.rsplit(':', 1)[1]}"  # the host and the emulator's port
    assert f"datalad.xnat.default.credential-name {name}\n" in config
    provider = (ds / ".datalad/providers/xnat-default.cfg").read_text()
    assert "[provider:xnat-default]" in provider and "http_basic_auth" in provider
    assert f"credential = {name}\n" in provider and f"[credential:{name}]" in provider
    assert "type = user_password" in provider
    # configuration lives in git, not in the annex: a fresh clone reads it without a get
    assert not (ds / ".datalad/providers/xnat-default.cfg").is_symlink()
    assert run(["git", "annex", "find", "--include=*", ".datalad"], cwd=ds).stdout == ""
    remote_cfg = run(["git", "annex", "info", "--json", "xnat"], cwd=ds).stdout
    assert json.loads(remote_cfg)["type"] == "external"
    remote_log = run(["git", "show", "git-annex:remote.log"], cwd=ds).stdout
    assert "externaltype=xnat" in remote_log and "autoenable=true" in remote_log
    assert f"url={xnat.url}" in remote_log and "credential=127.0.0.1" in remote_log
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    assert "xnat-init" in run(["git", "log", "-1", "--format=%s"], cwd=ds).stdout

    # already initialised: a clear answer, nothing changed
    before = state(ds)
    again = init(ds, xnat.url, "-p", "PUBLIC1")
    assert len(again) == 1 and again[0]["status"] in ("notneeded", "impossible")
    assert "already initialised" in again[0]["message"]
    assert state(ds) == before
    # --force re-initialises (another pathfmt), a second instance gets its own remote
    forced = init(ds, xnat.url, "-p", "PUBLIC1", "-f", "-F", "{subject}/{scan}/{resource}/")
    assert forced[-1]["status"] == "ok"
    assert "{subject}/{scan}/{resource}/" in (ds / ".datalad/config").read_text()
    second = init(ds, xnat.url, "-p", "SHARED2", "--name", "second")
    assert second[-1]["status"] == "ok" and second[-1]["remote"] == "xnat-second"
    assert (ds / ".datalad/providers/xnat-second.cfg").exists()


def test_no_secret_anywhere(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    everything = run(["git", "log", "-p", "--all"], cwd=ds).stdout
    everything += (ds / ".git" / "config").read_text()
    everything += run(["git", "grep", "-I", "alice-pass", "$(git rev-parse git-annex)"],
                      cwd=ds, check=False).stdout
    for path in (ds / ".datalad").rglob("*"):
        if path.is_file():
            everything += path.read_text()
    assert "alice-pass" not in everything


@pytest.mark.parametrize("case", ["unreachable", "not-xnat", "wrong-password", "unknown-project",
                                  "private-project", "protected-for-bob", "no-slash",
                                  "unknown-placeholder", "unknown-subject", "no-credential",
                                  "bad-name"])
def test_init_bad_input_leaves_dataset_untouched(case, xnat, ds, monkeypatch, logins):
    logins.login("alice", "alice-pass")
    user_var, password_var = cred_env(xnat.url)
    url, args, words = xnat.url, ["-p", "PUBLIC1"], ""
    if case == "unreachable":
        url, words = "http://127.0.0.1:1", "127.0.0.1:1"
        logins.server(url)  # a credential for it: what fails is the connection
    elif case == "not-xnat":
        url, words = xnat.url + "/not/xnat", "XNAT"
    elif case == "wrong-password":
        monkeypatch.setenv(password_var, "nope")
        words = "401"
    elif case == "unknown-project":
        args, words = ["-p", "NOPE"], "NOPE"
    elif case == "private-project":
        args, words = ["-p", "PRIV1"], "PRIV1"
    elif case == "protected-for-bob":
        monkeypatch.setenv(user_var, "bob")
        monkeypatch.setenv(password_var, "bob-pass")
        args, words = ["-p", "PROT1"], "PROT1"
    elif case == "no-slash":
        args, words = ["-p", "PUBLIC1", "-F", "{subject}/{session}"], "must end with '/'"
    elif case == "unknown-placeholder":
        args, words = ["-p", "PUBLIC1", "-F", "{subject}/{visit}/"], "unknown placeholder"
    elif case == "unknown-subject":
        args, words = ["-p", "PUBLIC1", "-s", "NOBODY"], "NOBODY"
    elif case == "no-credential":
        monkeypatch.delenv(user_var)
        monkeypatch.delenv(password_var)
        words = user_var
    elif case == "bad-name":
        args, words = ["-p", "PUBLIC1", "--name", "a b"], "instance name"
    before = state(ds)
    records = init(ds, url, *args)
    errors = [r for r in records if r["status"] in ("error", "impossible")]
    assert len(errors) == 1, records
    assert words in errors[0]["message"], errors[0]["message"]
    assert state(ds) == before
    assert run(["git", "annex", "info", "--json", "xnat"], cwd=ds, check=False).returncode != 0 \
        or case == "none"


def test_init_without_project_lists_projects(xnat, alice, ds):
    records = init(ds, xnat.url)
    assert records[-1]["status"] == "error"
    assert "PUBLIC1" in records[-1]["message"] and "-p" in records[-1]["message"]


def test_anonymous_on_open_site(emulator_factory, ds):
    emu = emulator_factory(preset="small", require_login=False)
    records = init(ds, emu.url, "-p", "PUBLIC1", "--credential", "anonymous")
    assert records[-1]["status"] == "ok", records
    assert "authentication_type = none" in (ds / ".datalad/providers/xnat-default.cfg").read_text()
    summary = update(ds, "-s", "SUBJ02", "-c", "NIFTI")
    assert summary["added"] == 6 and summary["fetched"] == 6


def test_credential_from_keyring(xnat, ds):
    import keyring

    keyring.set_password("datalad-xnatcred", "user", "alice")
    keyring.set_password("datalad-xnatcred", "password", "alice-pass")
    records = init(ds, xnat.url, "-p", "PUBLIC1", "--credential", "xnatcred")
    assert records[-1]["status"] == "ok", records
    summary = update(ds, "--reckless", "fast", "-e", "SUBJ02_MR1", "-c", "DICOM")
    assert summary["added"] > 0 and summary["failed"] == 0


def test_with_datalad_next_loaded_and_its_credential(xnat, tmp_path, monkeypatch):
    """datalad-next, once loaded (`datalad.extensions.load`), patches DataLad's core (annex
    calls, credentials, result handling): init, update and get still work, and a credential
    its `datalad credentials set` stored (user in git config, `secret` in the keyring) is used."""
    monkeypatch.setenv("DATALAD_EXTENSIONS_LOAD", "next")
    loaded = run([sys.executable, "-c",
                  "import sys, datalad.coreapi; print('datalad_next' in sys.modules)"])
    assert loaded.stdout.strip() == "True"  # the setting took effect: next is loaded
    datalad("credentials", "set", "emu", "user=alice", "secret=alice-pass")
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    records = init(ds, xnat.url, "-p", "PUBLIC1", "-s", "SUBJ01", "--credential", "emu")
    assert [r["status"] for r in records] == ["ok"], records
    summary = update(ds, "--reckless", "fast")
    assert summary["status"] == "ok" and summary["added"] > 0 and summary["failed"] == 0
    mat = "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat"
    datalad("get", mat, cwd=ds)  # through the special remote
    info = next(f for f in xnat.iter_files("PUBLIC1") if f.path == "bold xfm+run #1.mat")
    assert (ds / mat).read_bytes() == info.content()
    summary = update(ds, "-J", "2")  # the default mode fetches the rest with its own client
    assert summary["status"] == "ok" and summary["fetched"] > 0 and summary["failed"] == 0
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""


# ----------------------------------------------------------------------------------- update


def test_update_registers_md5e_keys_then_gets(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    xnat.counters.reset()
    summary = update(ds, "--reckless", "fast")
    assert summary["status"] == "ok" and summary["failed"] == 0
    files = list(xnat.iter_files("PUBLIC1"))
    assert summary["added"] == len(files)  # the assessor's files too
    # few requests: listings, not one per file (nothing is downloaded)
    assert xnat.counters.total < 20, xnat.counters.snapshot()
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    assert run(["git", "rev-list", "--count", "HEAD"], cwd=ds).stdout.strip() == "3"
    mat = "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat"
    info = next(f for f in files if f.path == "bold xfm+run #1.mat")
    assert annex_key(ds, mat) == f"MD5E-s{info.size}--{info.md5}.mat"
    assert annex_key(ds, "resources/protocol/README.txt").startswith("MD5E-")
    assert (ds / "SUBJ01/resources/notes/intake.txt").is_symlink()
    assert (ds / "SUBJ01/SUBJ01_MR1/resources/BIDS/sub-01/anat/sub-01_T1w.nii.gz").is_symlink()
    # the digest-less file got a verifiable key without a download (never URL-)
    par = next(f for f in files if f.path == "motion.par" and f.session_id == "XNAT_E00001")
    assert annex_key(ds, "SUBJ01/SUBJ01_MR1/BOLD_1/motion.par").startswith(f"VURL-s{par.size}--")
    whereis = json.loads(run(["git", "annex", "whereis", "--json", mat], cwd=ds).stdout)
    assert whereis["whereis"][0]["description"] == "[xnat]"
    assert whereis["whereis"][0]["urls"][0].startswith("xnat://")
    assert not (ds / mat).exists()  # registered, not downloaded

    # a second update without --reckless fetches the content, in parallel
    summary = update(ds, "-J", "3")
    assert summary["fetched"] > 0 and summary["added"] == 0 and summary["failed"] == 0
    # every file has its content (files with one content share a key, fetched once)
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    assert (ds / mat).read_bytes() == info.content()
    # placed directly (one location-log commit on git-annex's branch), not through git annex get
    assert "content fetched from XNAT" in run(["git", "log", "--format=%s", "git-annex"],
                                              cwd=ds).stdout
    assert_annex_owns_content(ds, mat)


def assert_annex_owns_content(ds: Path, path: str) -> None:
    """Content placed by xnat-update is what git-annex itself would have: checksums verify, the
    location log says here, the object is write-protected, drop and get work."""
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)  # full checksums of everything present
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    whereis = json.loads(run(["git", "annex", "whereis", "--json", path], cwd=ds).stdout)
    assert "[here]" in [w["description"] for w in whereis["whereis"]] or any(
        w["here"] for w in whereis["whereis"])
    obj = (ds / path).resolve()
    assert not os.access(obj, os.W_OK) or os.geteuid() == 0
    assert obj.stat().st_mode & 0o222 == 0 and obj.parent.stat().st_mode & 0o222 == 0
    content = obj.read_bytes()
    run(["git", "annex", "drop", path], cwd=ds)  # needs the xnat remote to confirm its copy
    assert not (ds / path).exists()
    run(["git", "annex", "get", path], cwd=ds)
    assert (ds / path).read_bytes() == content


def test_default_update_fetches_through_git_annex_when_asked(xnat, alice, ds):
    """datalad.xnat.fetch-method=annex: content comes through `git annex get` and the special
    remote instead of being placed directly; the result is the same."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "MAT")
    run(["git", "config", "datalad.xnat.fetch-method", "annex"], cwd=ds)
    summary = update(ds)
    assert summary["fetched"] > 0 and summary["failed"] == 0
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    assert "content fetched from XNAT" not in run(["git", "log", "--format=%s", "git-annex"],
                                                  cwd=ds).stdout
    assert_annex_owns_content(ds, "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_default_update_reports_bad_downloads_and_keeps_nothing(xnat, alice, ds, processes):
    """Corrupted bodies (right length, wrong bytes) fail their files with one line each; nothing
    unverified lands in the annex, and a later update fetches what is missing. With helper
    processes (datalad.xnat.fetch-processes=2) as with threads in the update's own process.
    (Files with a digest: one without can only be checked for its size.)"""
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "NIFTI")
    run(["git", "config", "datalad.xnat.fetch-processes", processes], cwd=ds)
    update(ds, "--reckless", "fast")
    xnat.faults.corrupt_downloads = True
    records = results("xnat-update", cwd=ds)
    failed = [r for r in records if r.get("type") == "file" and r["status"] == "error"]
    assert failed and all("MD5" in r["message"] for r in failed), failed
    assert all("\n" not in r["message"] for r in failed)
    assert run(["git", "annex", "find", "--in", "here"], cwd=ds).stdout == ""
    objects = ds / ".git" / "annex" / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))
    assert not any(p.is_file() for p in (ds / ".git" / "annex" / "tmp").rglob("*"))
    xnat.faults.clear()
    summary = update(ds)
    # files with one content share a key: it may fail once or once per file, it is fetched once
    failed_keys = {os.readlink(r["path"]).rsplit("/", 1)[-1] for r in failed}
    assert summary["fetched"] == len(failed_keys) and summary["failed"] == 0
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""


def test_default_update_with_helper_processes(xnat, alice, ds):
    """Downloads in helper processes (fetchproc.py) give what git-annex itself would have; the
    secret reaches them through a pipe, not their command line."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    run(["git", "config", "datalad.xnat.fetch-processes", "2"], cwd=ds)
    summary = update(ds, "-J", "4")
    assert summary["status"] == "ok" and summary["failed"] == 0 and summary["fetched"] > 0
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    assert "content fetched from XNAT" in run(["git", "log", "--format=%s", "git-annex"],
                                              cwd=ds).stdout
    assert_annex_owns_content(ds, "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat")
    assert not any(p.is_file() for p in (ds / ".git" / "annex" / "tmp").rglob("*"))


def test_bad_fetch_processes_setting(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "MAT")
    run(["git", "config", "datalad.xnat.fetch-processes", "many"], cwd=ds)
    before = state(ds)
    records = results("xnat-update", cwd=ds)
    errors = [r for r in records if r["status"] == "error"]
    assert len(errors) == 1 and "fetch-processes" in errors[0]["message"], records
    assert "\n" not in errors[0]["message"]
    assert state(ds) == before


@pytest.mark.parametrize("processes", ["1", "2"])
def test_default_update_keeps_no_content_when_registration_fails(xnat, alice, ds, processes):
    """Downloads start while the registration commits; when the commit fails, what they placed
    is removed again: the dataset is left as it was."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "MAT")
    run(["git", "config", "datalad.xnat.fetch-processes", processes], cwd=ds)
    update(ds, "--reckless", "fast")
    mat = "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat"
    xnat.change_file("bold xfm+run #1.mat", b"changed content", resource="MAT",
                     session="XNAT_E00001", scan="BOLD_1")
    (ds / mat).unlink()
    (ds / mat).write_text("my local edit")  # the update would overwrite it: refused
    before = state(ds)
    records = results("xnat-update", "-J", "2", cwd=ds)
    errors = [r for r in records if r["status"] == "error"]
    assert errors and "local changes" in errors[0]["message"], records
    assert state(ds) == before and (ds / mat).read_text() == "my local edit"
    assert run(["git", "annex", "find", "--in", "here"], cwd=ds).stdout == ""
    objects = ds / ".git" / "annex" / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))


def file_gets(xnat) -> int:
    """File downloads the emulator answered so far (routes ending in a file path)."""
    return sum(n for route, n in xnat.counters.snapshot()["by_route"].items()
               if route.endswith("/{path}"))


def listings(xnat) -> int:
    """Listing requests the emulator answered so far (GETs that are not file downloads)."""
    return sum(n for route, n in xnat.counters.snapshot()["by_route"].items()
               if route.startswith("GET ") and not route.endswith("/{path}")
               and "?format=" not in route)


def test_default_update_downloads_while_the_listing_runs(xnat, alice, ds):
    """Wanted files go to the downloads as the listing finds them: with slow listings, files
    are downloaded before the listing's last request is answered."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    run(["git", "config", "datalad.xnat.fetch-processes", "1"], cwd=ds)
    xnat.faults.listing_delay = 0.2
    xnat.counters.reset()
    seen: list[tuple[int, int]] = []   # (listings answered, file downloads answered)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append((listings(xnat), file_gets(xnat)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = update(ds, "-J", "1")
    finally:
        done.set()
        watcher.join()
    assert summary["status"] == "ok" and summary["failed"] == 0 and summary["fetched"] > 0
    listed_before_first_download = next(listed for listed, gets in seen if gets)
    assert listed_before_first_download < listings(xnat), seen
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    run(["git", "annex", "fsck", "--fast", "--quiet"], cwd=ds)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_default_update_keeps_no_content_when_the_listing_finds_a_problem(xnat, alice, ds,
                                                                          processes):
    """Downloads start while the listing runs; a problem found at its end (two files for one
    path) stops the run, and what they placed is removed again."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    run(["git", "config", "datalad.xnat.fetch-processes", processes], cwd=ds)
    xnat.add_file("same.dcm", b"a", resource="DICOM", session="XNAT_E00001", scan="2")
    xnat.add_file("same.dcm", b"b", resource="OTHER", session="XNAT_E00001", scan="2")
    xnat.faults.listing_delay = 0.2
    xnat.counters.reset()
    before = state(ds)
    records = results("xnat-update", "-J", "1", cwd=ds)
    errors = [r for r in records if r["status"] == "error"]
    assert errors and any("same.dcm" in r["message"] for r in errors), records
    assert file_gets(xnat) > 0  # downloads had started
    assert state(ds) == before
    assert run(["git", "annex", "find", "--in", "here"], cwd=ds).stdout == ""
    annex = ds / ".git" / "annex"
    assert not any(p.is_file() for folder in ("objects", "tmp") for p in (annex / folder).rglob("*"))


def test_incremental_updates(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM", "-c", "MAT")
    first = update(ds, "--reckless", "fast")
    assert first["added"] > 0
    head = run(["git", "rev-parse", "HEAD"], cwd=ds).stdout

    # nothing changed on the server: no commit, few requests
    xnat.counters.reset()
    same = update(ds, "--reckless", "fast")
    assert (same["added"], same["changed"], same["gone"], same["commits"]) == (0, 0, 0, 0)
    assert same["unchanged"] == first["added"]
    assert run(["git", "rev-parse", "HEAD"], cwd=ds).stdout == head
    assert xnat.counters.total < 15

    mat = "SUBJ01/SUBJ01_MR1/BOLD_1/bold xfm+run #1.mat"
    old_key = annex_key(ds, mat)
    xnat.add_file("new/nested.dcm", b"new file", resource="DICOM", session="XNAT_E00002", scan="2")
    xnat.change_file("bold xfm+run #1.mat", b"changed content", resource="MAT",
                     session="XNAT_E00001", scan="BOLD_1")
    gone = next(f for f in xnat.iter_files("PUBLIC1") if f.resource == "DICOM"
                and f.session_id == "XNAT_E00002" and f.scan_id == "1")
    xnat.delete_file(gone.path, resource="DICOM", session="XNAT_E00002", scan="1")
    gone_path = f"SUBJ02/SUBJ02_MR1/1/{gone.path}"

    # --ifexists skip keeps the old version
    skipped = update(ds, "--reckless", "fast", "--ifexists", "skip")
    assert skipped["added"] == 1 and skipped["skipped"] == 1 and skipped["gone"] == 1
    assert annex_key(ds, mat) == old_key
    assert (ds / "SUBJ02/SUBJ02_MR1/2/new/nested.dcm").is_symlink()
    assert (ds / gone_path).is_symlink()  # reported, kept
    message = run(["git", "log", "-1", "--format=%B"], cwd=ds).stdout
    assert "1 added" in message and "gone" in message

    changed = update(ds, "--reckless", "fast")
    assert changed["changed"] == 1 and changed["added"] == 0 and changed["gone"] == 1
    assert annex_key(ds, mat) == \
        f"MD5E-s15--{hashlib.md5(b'changed content').hexdigest()}.mat"
    assert (ds / gone_path).is_symlink()

    removed = update(ds, "--reckless", "fast", "--remove-gone")
    assert removed["removed"] == 1
    assert not os.path.lexists(ds / gone_path)
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    # the changed file's content comes through the special remote and verifies
    run(["datalad", "get", mat], cwd=ds)
    assert (ds / mat).read_bytes() == b"changed content"


def test_gone_detection_respects_the_scope(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM")
    update(ds, "--reckless", "fast")
    subject_only = update(ds, "--reckless", "fast", "-s", "SUBJ01")
    assert subject_only["gone"] == 0 and subject_only["added"] == 0
    one_collection = update(ds, "--reckless", "fast", "-c", "NIFTI")
    assert one_collection["gone"] == 0 and one_collection["added"] > 0


def test_user_files_are_never_gone(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1", "-c", "MAT")
    (ds / "notes.txt").write_text("mine")
    datalad("save", "-m", "my notes", cwd=ds)
    summary = update(ds, "--reckless", "fast", "--remove-gone")
    assert summary["gone"] == 0 and (ds / "notes.txt").exists()


def test_collisions_and_refused_paths_change_nothing(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    xnat.add_file("same.dcm", b"a", resource="DICOM", session="XNAT_E00001", scan="2")
    xnat.add_file("same.dcm", b"b", resource="OTHER", session="XNAT_E00001", scan="2")
    before = state(ds)
    records = results("xnat-update", "--reckless", "fast", cwd=ds)
    errors = [r for r in records if r["status"] == "error"]
    assert errors and any("{resource}" in r["message"] and "same.dcm" in r["message"]
                          for r in errors), records
    assert state(ds) == before



def test_one_unsafe_name_is_skipped_and_the_rest_registered(xnat, alice, ds):
    """A file whose path would leave its folder (or write into .git) is skipped with an error
    that names it; every other file is registered, and the update's status is an error."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    listed = [r for r in results("xnat-query-files", xnat.url, "-p", "PUBLIC1", "-e",
                                 "SUBJ01_MR1") if r.get("type") == "xnat-file"]
    xnat.add_file("../../escape.txt", b"out", resource="DICOM", session="XNAT_E00001", scan="1")
    xnat.add_file(".git/config", b"evil", resource="EVIL", session="XNAT_E00001", scan="2")
    records = results("xnat-update", "--reckless", "fast", cwd=ds)
    errors = [r["message"] for r in records if r["status"] == "error"]
    assert any("../../escape.txt" in m and "rename it on the server" in m for m in errors), errors
    assert any(".git/config" in m for m in errors), errors
    summary = [r for r in records if r.get("type") == "dataset"][-1]
    assert summary["status"] == "error" and summary["added"] == len(listed) > 0
    assert summary["failed"] == 2
    assert not (ds.parent / "escape.txt").exists() and not (ds / "escape.txt").exists()
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    assert run(["git", "config", "-f", str(ds / ".git" / "config"), "--get",
                "core.bare"], cwd=ds).stdout.strip() == "false"


def test_update_bad_inputs(xnat, alice, ds, tmp_path, monkeypatch):
    # not initialised
    records = results("xnat-update", cwd=ds)
    assert records[-1]["status"] == "impossible" and "xnat-init" in records[-1]["message"]
    init(ds, xnat.url, "-p", "PUBLIC1")
    before = state(ds)
    monkeypatch.setenv(cred_env(xnat.url)[1], "wrong")
    records = results("xnat-update", "--reckless", "fast", cwd=ds)
    assert len(records) == 1 and records[0]["status"] == "error" and "401" in records[0]["message"]
    assert state(ds) == before
    monkeypatch.setenv(cred_env(xnat.url)[1], "alice-pass")
    records = results("xnat-update", "--reckless", "fast", "-p", "NOPE", cwd=ds)
    assert records[-1]["status"] == "error" and "NOPE" in records[-1]["message"]
    assert state(ds) == before


def test_lock_stops_a_second_update(xnat, alice, ds):
    import fasteners

    init(ds, xnat.url, "-p", "PUBLIC1")
    lock = fasteners.InterProcessLock(str(ds / ".git" / "xnat-update.lck"))
    assert lock.acquire(blocking=False)
    try:
        records = results("xnat-update", "--reckless", "fast", cwd=ds)
        assert records[-1]["status"] == "impossible"
        assert "another xnat-update" in records[-1]["message"]
    finally:
        lock.release()
    assert update(ds, "--reckless", "fast")["added"] > 0


def test_subdatasets_clone_and_get_recursive(xnat, alice, ds, tmp_path):
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", "{subject}//{session}/{scan}/", "-c", "NIFTI",
         "-c", "notes")
    summary = update(ds, "--reckless", "fast")
    assert summary["added"] == 13, summary  # 2 sessions x 3 scans x 2 NIFTI + notes
    subs = {r["path"] for r in results("subdatasets", cwd=ds)}
    assert subs == {str(ds / "SUBJ01"), str(ds / "SUBJ02")}
    for sub in ("SUBJ01", "SUBJ02"):
        assert run(["git", "status", "--porcelain"], cwd=ds / sub).stdout == ""
        # one commit for the creation, one for the update
        assert run(["git", "rev-list", "--count", "HEAD"], cwd=ds / sub).stdout.strip() == "2"
        assert "datalad.xnat.default.url" in run(
            ["git", "config", "-f", ".datalad/config", "--list"], cwd=ds / sub).stdout
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    assert (ds / "SUBJ01/resources/notes/intake.txt").is_symlink()

    # a new session file lands in the existing subdataset, one commit each
    xnat.add_file("late.nii.gz", b"late", resource="NIFTI", session="XNAT_E00002", scan="2")
    more = update(ds, "--reckless", "fast")
    assert more["added"] == 1
    assert run(["git", "rev-list", "--count", "HEAD"], cwd=ds / "SUBJ02").stdout.strip() == "3"
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""

    clone = tmp_path / "clone"
    datalad("clone", str(ds), str(clone))
    datalad("get", "-r", "-J", "2", ".", cwd=clone)
    target = clone / "SUBJ02/SUBJ02_MR1/2/late.nii.gz"
    assert target.read_bytes() == b"late"
    files = [f for f in xnat.iter_files("PUBLIC1") if f.resource == "NIFTI"
             and f.session_id == "XNAT_E00001" and f.scan_id == "2"]
    for f in files:
        assert (clone / "SUBJ01/SUBJ01_MR1/2" / f.path).read_bytes() == f.content()


# ------------------------------------------------------------------------ terminal prompts


def _in_terminal(cmd: list[str], cwd: Path, answers: list[tuple[str, str]],
                 timeout: float = 60.0) -> str:
    """Run `cmd` on a pseudo-terminal; when the output shows each prompt, type its answer."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(cwd)
        os.execvp(cmd[0], cmd)
    output = b""
    pending = list(answers)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                output += data
            if pending and pending[0][0].encode() in output.split(b"\x00")[-1]:
                prompt, reply = pending.pop(0)
                output += b"\x00"  # the next prompt must come after this point
                os.write(fd, reply.encode() + b"\r")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", output.decode(errors="replace"))


def test_prompt_picker_and_keyring(xnat, ds):
    out = _in_terminal(["datalad", "xnat-init", xnat.url], ds,
                       [("User name", "alice"), ("Password", "alice-pass"),
                        ("Project to track", "PROT1")])
    assert "xnat_init(ok)" in out, out
    assert "PUBLIC1" in out  # the picker listed the readable projects
    assert "alice-pass" not in out  # the password was not echoed
    assert "project = PROT1" in (ds / ".datalad/config").read_text()
    import keyring

    from git_annex_remote_xnat.credentials import default_credential_name

    service = f"datalad-{default_credential_name(xnat.url)}"  # 127.0.0.1:<port>
    assert keyring.get_password(service, "user") == "alice"
    assert keyring.get_password(service, "password") == "alice-pass"
    assert keyring.get_password(service, "url") == xnat.url  # it goes to this server only
    # stored, so an update needs no prompt
    assert update(ds, "--reckless", "fast")["added"] == 3
    # force-ask asks again even though the keyring has it; a wrong password is asked again
    out = _in_terminal(["datalad", "-c", "datalad.credentials.force-ask=1", "xnat-init", "-f",
                        xnat.url, "-p", "PUBLIC1"], ds,
                       [("User name", "bob"), ("Password", "wrong"),
                        ("User name", "alice"), ("Password", "alice-pass")])
    assert "xnat_init(ok)" in out, out
    assert "project = PUBLIC1" in (ds / ".datalad/config").read_text()


def test_rerun_after_interrupted_subdataset_creation(xnat, alice, ds):
    """An update interrupted after creating a subdataset, before registering anything: the next
    run adopts it (registers it in the superdataset, configures it) and ends clean."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", "{subject}//{session}/{scan}/", "-c", "NIFTI")
    datalad("create", str(ds / "SUBJ01"))  # standalone, as the interrupted run left it
    summary = update(ds, "--reckless", "fast")
    assert summary["added"] == 12 and summary["failed"] == 0, summary
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    assert "SUBJ01" in (ds / ".gitmodules").read_text()
    assert "datalad.xnat.default.url" in run(
        ["git", "config", "-f", ".datalad/config", "--list"], cwd=ds / "SUBJ01").stdout
    assert run(["git", "status", "--porcelain"], cwd=ds / "SUBJ01").stdout == ""


def test_python_api_takes_a_string_or_a_list_and_auto(xnat, alice, ds):
    """From Python, a repeatable option takes one string or a list, and jobs takes 'auto'."""
    from datalad.api import xnat_init, xnat_update

    def collections() -> list[str]:
        return run(["git", "config", "-f", str(ds / ".datalad" / "config"), "--get-all",
                    "datalad.xnat.default.collection"], cwd=ds).stdout.split()

    quiet = dict(result_renderer="disabled", return_type="list")
    xnat_init(xnat.url, dataset=str(ds), project="PUBLIC1", collection="NIFTI", **quiet)
    assert collections() == ["NIFTI"]
    xnat_init(xnat.url, dataset=str(ds), project="PUBLIC1", collection=["DICOM", "NIFTI"],
              force=True, **quiet)
    assert collections() == ["DICOM", "NIFTI"]
    records = xnat_update(dataset=str(ds), reckless="fast", jobs="auto", collection="NIFTI",
                          **quiet)
    summary = [r for r in records if r.get("type") == "dataset"][-1]
    assert summary["status"] == "ok" and summary["added"] > 0, records
