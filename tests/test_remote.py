"""git-annex-remote-xnat driven by the real git-annex against the emulator (no mocks).

Files are enumerated with XnatClient, registered under MD5E keys with `git annex fromkey` and
`registerurl` (what `datalad xnat-update` does), then fetched, checked and cloned.
"""

from __future__ import annotations

import hashlib
import os
import sys
import re
import subprocess
from pathlib import Path

import pytest

from git_annex_remote_xnat.client import XnatClient
from git_annex_remote_xnat.credentials import Credential, env_var_names, store_credential
from git_annex_remote_xnat.keys import md5e_key, parse_key
from git_annex_remote_xnat.urls import file_url
from tests.conftest import run

PASSWORD = "alice-pass"


def set_env_credential(monkeypatch, name="emu", user="alice", password=PASSWORD):
    user_var, password_var = env_var_names(name)
    monkeypatch.setenv(user_var, user)
    monkeypatch.setenv(password_var, password)


def annex(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["git", "annex", *args], cwd=repo, check=check)


def work_path(record) -> str:
    owner = record.session_label or record.subject_label or record.project
    scan = f"scans/{record.scan_id}/" if record.scan_id else ""
    return f"{owner}/{scan}{record.resource}/{record.path}"


def make_dataset(tmp_path: Path, emu, credential: str = "emu", name: str = "ds") -> Path:
    repo = tmp_path / name
    run(["git", "init", "-q", str(repo)])
    annex(repo, "init", "-q", "test")
    annex(repo, "initremote", "xnat", "type=external", "externaltype=xnat", f"url={emu.url}",
          f"credential={credential}", "encryption=none", "autoenable=true")
    return repo


def register(repo: Path, emu, limit: int | None = None, **filters) -> dict[str, object]:
    """Register PUBLIC1's files with digests; {work path: record}."""
    with XnatClient(emu.url, Credential("emu", "admin", "admin-pass")) as client:
        records = [r for r in client.iter_files("PUBLIC1", **filters) if r.md5]
    records = records[:limit] if limit else records
    table = {work_path(r): r for r in records}
    keys = [(md5e_key(r.size, r.md5, r.path), path, file_url(emu.url, r))
            for path, r in table.items()]
    run(["git", "annex", "fromkey", "--force", "--batch"], cwd=repo,
        input="".join(f"{key} {path}\n" for key, path, _ in keys))
    run(["git", "annex", "registerurl", "--batch", "--remote=xnat"], cwd=repo,
        input="".join(f"{key} {url}\n" for key, _, url in keys))
    run(["git", "commit", "-q", "-m", "register"], cwd=repo)
    return table


def assert_content(repo: Path, table: dict) -> None:
    for path, record in table.items():
        assert hashlib.md5((repo / path).read_bytes()).hexdigest() == record.md5, path


def assert_no_content(repo: Path) -> None:
    assert annex(repo, "find", "--in=here").stdout.strip() == ""
    objects = repo / ".git" / "annex" / "objects"
    assert not objects.exists() or not [p for p in objects.rglob("*") if p.is_file()]


def assert_no_secret(repo: Path, secret: str = PASSWORD) -> None:
    history = run(["git", "log", "-p", "--all"], cwd=repo).stdout
    assert secret not in history
    for path in (repo / ".git").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret.encode() not in path.read_bytes(), path


def test_parse_key():
    assert parse_key("MD5E-s1024--0123456789abcdef0123456789ABCDEF.nii.gz") == (
        1024, "0123456789abcdef0123456789abcdef")
    assert parse_key("MD5-s5--0123456789abcdef0123456789abcdef") == (
        5, "0123456789abcdef0123456789abcdef")
    assert parse_key("VURL-s10--xnat://h/x") == (10, None)
    assert parse_key("SHA256E-s3--aaaa.txt") == (3, None)


def test_initremote_validates_without_network(tmp_path):
    repo = tmp_path / "ds"
    run(["git", "init", "-q", str(repo)])
    annex(repo, "init", "-q")
    base = ["initremote", "x", "type=external", "externaltype=xnat", "encryption=none"]
    out = annex(repo, *base, check=False)
    assert out.returncode != 0 and "url= is required" in out.stderr
    out = annex(repo, *base, "url=http://127.0.0.1:9", "password=s3cret", check=False)
    assert out.returncode != 0 and "s3cret" not in run(["git", "log", "-p", "--all"], cwd=repo).stdout
    out = annex(repo, "initremote", "x", "type=external", "externaltype=xnat",
                "url=http://127.0.0.1:9", "encryption=shared", check=False)
    assert out.returncode != 0
    # an unreachable server is fine: initremote also runs at autoenable in a fresh clone
    annex(repo, *base, "url=http://127.0.0.1:9/xnat/", "credential=site")
    annex(repo, "enableremote", "x")  # idempotent
    info = annex(repo, "info", "x").stdout
    assert "http://127.0.0.1:9/xnat" in info and "site" in info
    out = annex(repo, *base[:-1], "url=http://u:p@127.0.0.1:9", "encryption=none", check=False)
    assert out.returncode != 0


def test_get_fsck_drop_and_parallel(tmp_path, xnat, monkeypatch):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat)
    assert len(table) > 50
    annex(repo, "get", "-J4", ".")
    assert_content(repo, table)
    annex(repo, "fsck", "--from", "xnat", "-J2", "-q")
    some = next(iter(table))
    annex(repo, "drop", some)  # CHECKPRESENT proves the copy on XNAT
    assert not (repo / some).exists()
    annex(repo, "get", some)
    out = annex(repo, "whereis", some).stdout
    assert out.count("xnat://") == 1, "no WHEREIS echo of the URL"
    assert_no_secret(repo)


def test_store_and_remove_are_refused(tmp_path, xnat, monkeypatch):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    (repo / "local.txt").write_text("local\n")
    annex(repo, "add", "local.txt")
    out = annex(repo, "copy", "--to", "xnat", "local.txt", check=False)
    assert out.returncode != 0 and "read-only" in out.stderr
    table = register(repo, xnat, limit=1)
    path = next(iter(table))
    out = annex(repo, "drop", "--from", "xnat", "--force", path, check=False)
    assert out.returncode != 0 and "read-only" in out.stderr
    assert "xnat" in annex(repo, "whereis", path).stdout


def test_testremote_readonly(tmp_path, xnat, monkeypatch):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, experiments=["XNAT_E00002"], resources=["DICOM"], limit=2)
    paths = list(table)
    annex(repo, "get", *paths)
    run(["git", "config", "remote.xnat.annex-readonly", "true"], cwd=repo)
    out = annex(repo, "testremote", "xnat", "--fast", *(f"--test-readonly={p}" for p in paths))
    assert re.search(r"All \d+ tests passed", out.stdout + out.stderr)


def test_clone_autoenables_and_gets(tmp_path, xnat, monkeypatch):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, experiments=["XNAT_E00001"], resources=["NIFTI", "MAT"])
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)])
    out = annex(clone, "init", "clone")
    assert "Auto enabling special remote xnat" in out.stdout + out.stderr
    annex(clone, "get", "--from", "xnat", "-J2", ".")
    assert_content(clone, table)
    assert any(" " in p and "+" in p and "#" in p for p in table), "the awkward name is covered"
    assert_no_secret(clone)


def test_credential_sources(tmp_path, xnat, monkeypatch):
    """env, git config, the file keyring in $HOME, a per-clone override; then anonymous."""
    repo = make_dataset(tmp_path, xnat, credential="emu")
    table = register(repo, xnat, experiments=["XNAT_E00002"], resources=["DICOM"], limit=1)
    path = next(iter(table))

    def get_and_drop() -> None:
        annex(repo, "get", path)
        annex(repo, "drop", path)

    set_env_credential(monkeypatch)
    get_and_drop()
    for var in env_var_names("emu"):
        monkeypatch.delenv(var)
    run(["git", "config", "datalad.credential.emu.user", "bob"], cwd=repo)
    run(["git", "config", "datalad.credential.emu.password", "bob-pass"], cwd=repo)
    get_and_drop()
    run(["git", "config", "--unset", "datalad.credential.emu.user"], cwd=repo)
    run(["git", "config", "--unset", "datalad.credential.emu.password"], cwd=repo)
    store_credential(Credential("emu", "admin", "admin-pass"))
    get_and_drop()
    store_credential(Credential("other", "alice", PASSWORD))
    run(["git", "config", "remote.xnat.xnat-credential", "other"], cwd=repo)
    get_and_drop()
    for secret in ("bob-pass", "admin-pass"):
        assert secret not in run(["git", "log", "-p", "--all"], cwd=repo).stdout


def test_anonymous_on_open_site(tmp_path, emulator_factory):
    open_site = emulator_factory(require_login=False)
    repo = make_dataset(tmp_path, open_site, credential="anonymous")
    table = register(repo, open_site, experiments=["XNAT_E00001"], resources=["SNAPSHOTS"])
    annex(repo, "get", ".")
    assert_content(repo, table)


def test_missing_and_wrong_credentials_are_clear(tmp_path, xnat, monkeypatch):
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, limit=1)
    path = next(iter(table))
    out = annex(repo, "get", path, check=False)
    assert out.returncode != 0
    assert "no credential 'emu'" in out.stderr and "DATALAD_CREDENTIAL_EMU_USER" in out.stderr
    assert "keyring set datalad-emu user" in out.stderr
    set_env_credential(monkeypatch, password="wrong-pass")
    out = annex(repo, "get", path, check=False)
    assert out.returncode != 0 and "401" in out.stderr and "user 'alice'" in out.stderr
    assert "git config remote.xnat.xnat-credential" in out.stderr
    assert "wrong-pass" not in out.stderr
    assert_no_content(repo)


def test_expiring_sessions_and_5xx_bursts(tmp_path, xnat, monkeypatch):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, resources=["DICOM", "NIFTI"])
    xnat.faults.expire_sessions_after = 2
    xnat.faults.error_rate = 0.2
    xnat.counters.reset()
    annex(repo, "get", "-J2", ".")
    assert_content(repo, table)
    assert xnat.counters.by_status.get(401, 0) > 0 and xnat.counters.by_status.get(503, 0) > 0


@pytest.mark.parametrize("fault", ["truncate_downloads", "corrupt_downloads"])
def test_broken_bodies_never_enter_the_annex(tmp_path, xnat, monkeypatch, fault):
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, experiments=["XNAT_E00001"], resources=["DICOM"], limit=1)
    setattr(xnat.faults, fault, True)
    out = annex(repo, "get", ".", check=False)
    assert out.returncode != 0 and "nothing was kept" in out.stderr
    assert_no_content(repo)
    setattr(xnat.faults, fault, False)
    annex(repo, "get", ".")
    assert_content(repo, table)


def test_login_page_is_never_content(tmp_path, emulator_factory, monkeypatch):
    closed = emulator_factory(require_login=True)
    closed.faults.login_page_instead_of_401 = True
    repo = make_dataset(tmp_path, closed, credential="anonymous")
    register(repo, closed, experiments=["XNAT_E00001"], resources=["DICOM"], limit=2)
    out = annex(repo, "get", ".", check=False)
    assert out.returncode != 0 and "HTML" in out.stderr
    assert_no_content(repo)
    # with a real credential, an expired session answered by the login page is renewed
    run(["git", "config", "remote.xnat.xnat-credential", "emu"], cwd=repo)
    set_env_credential(monkeypatch)
    closed.faults.expire_sessions_after = 2
    annex(repo, "get", ".")
    annex(repo, "fsck", "-q")


def test_remote_starts_fast_without_heavy_imports():
    code = ("import sys, git_annex_remote_xnat.remote\n"
            "print(sorted(m for m in ('requests', 'keyring', 'datalad') if m in sys.modules))")
    out = run([sys.executable, "-c", code]).stdout.strip()
    assert out == "[]"


def test_addurl_uses_checkurl(tmp_path, xnat, monkeypatch):
    """addurl --fast makes a verifiable key from CHECKURL's size; plain addurl downloads."""
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    with XnatClient(xnat.url, Credential("emu", "alice", PASSWORD)) as client:
        records = [r for r in client.iter_files("PUBLIC1", experiments=["XNAT_E00001"],
                                                resources=["MAT"])]
    no_digest = next(r for r in records if r.md5 is None)
    awkward = next(r for r in records if " " in r.path)
    annex(repo, "addurl", "--fast", "--file", "motion.par", file_url(xnat.url, no_digest))
    key = annex(repo, "lookupkey", "motion.par").stdout.strip()
    assert key.startswith("VURL-s%d-" % no_digest.size)
    annex(repo, "get", "motion.par")
    assert (repo / "motion.par").stat().st_size == no_digest.size
    annex(repo, "addurl", file_url(xnat.url, awkward))
    added = [p for p in repo.iterdir() if p.name.endswith(".mat")]
    assert len(added) == 1 and added[0].stat().st_size == awkward.size
    missing = file_url(xnat.url, awkward).replace(".mat", ".nope")
    out = annex(repo, "addurl", "--fast", "--file", "nope", missing, check=False)
    assert out.returncode != 0 and "404" in out.stderr


def speak(lines: list[str], env: dict | None = None) -> list[str]:
    """Talk the external special remote protocol to the installed program directly."""
    proc = subprocess.run(["git-annex-remote-xnat"], input="".join(f"{line}\n" for line in lines),
                          capture_output=True, text=True, env=env, timeout=60)
    return proc.stdout.splitlines()


def test_too_old_git_annex_is_refused(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git-annex").write_text("#!/bin/sh\necho 10.20230126-3\n")
    (fake / "git-annex").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = speak(["EXTENSIONS INFO", "INITREMOTE"], env)
    assert out[2].startswith("INITREMOTE-FAILURE git-annex 10.20230126-3 is too old")
    out = speak(["EXTENSIONS INFO", "PREPARE"], env)
    assert out[2].startswith("PREPARE-FAILURE git-annex 10.20230126-3 is too old")


def test_protocol_is_clean_and_claimurl_never_raises():
    out = speak(["EXTENSIONS INFO GETGITREMOTENAME UNAVAILABLERESPONSE", "PREPARE",
                 "VALUE http://127.0.0.1:9", "VALUE anonymous",
                 "CLAIMURL xnat://127.0.0.1:9/experiments/E/scans/1/resources/R/files/a.dcm",
                 "CLAIMURL xnat://127.0.0.1:99/experiments/E/scans/1/resources/R/files/a.dcm",
                 "CLAIMURL https://127.0.0.1:9/data/experiments/E", "CLAIMURL \x00%%",
                 "GETAVAILABILITY", "TRANSFER STORE MD5-s1--0 f", "REMOVE MD5-s1--0"])
    assert out == ["VERSION 1", "EXTENSIONS", "GETCONFIG url", "GETCONFIG credential",
                   "PREPARE-SUCCESS", "CLAIMURL-SUCCESS", "CLAIMURL-FAILURE", "CLAIMURL-FAILURE",
                   "CLAIMURL-FAILURE", "AVAILABILITY GLOBAL",
                   "TRANSFER-FAILURE STORE MD5-s1--0 " + out[10].split(" ", 3)[3],
                   "REMOVE-FAILURE MD5-s1--0 " + out[11].split(" ", 2)[2]]
    assert "read-only" in out[10] and "read-only" in out[11]


def test_two_servers_in_one_dataset(tmp_path, xnat, emulator_factory, monkeypatch):
    """Each remote claims only its own server's URLs, so both sets of files come back."""
    set_env_credential(monkeypatch)
    other = emulator_factory(preset="small", seed=7, require_login=False)
    repo = make_dataset(tmp_path, xnat)
    annex(repo, "initremote", "xnat2", "type=external", "externaltype=xnat", f"url={other.url}",
          "credential=anonymous", "encryption=none")
    first = register(repo, xnat, experiments=["XNAT_E00001"], resources=["NIFTI"])
    with XnatClient(other.url) as client:
        records = [r for r in client.iter_files("PUBLIC1", experiments=["XNAT_E00002"],
                                                resources=["NIFTI"]) if r.md5]
    keys = [(md5e_key(r.size, r.md5, r.path), "second/" + work_path(r), file_url(other.url, r))
            for r in records]
    run(["git", "annex", "fromkey", "--force", "--batch"], cwd=repo,
        input="".join(f"{k} {p}\n" for k, p, _ in keys))
    run(["git", "annex", "registerurl", "--batch"], cwd=repo,
        input="".join(f"{k} {u}\n" for k, _, u in keys))
    whereis = annex(repo, "whereis", keys[0][1]).stdout
    assert "xnat2" in whereis and f"[xnat]" not in whereis
    annex(repo, "get", "-J2", ".")
    assert_content(repo, first)
    assert all(hashlib.md5((repo / p).read_bytes()).hexdigest() == r.md5
               for (_, p, _), r in zip(keys, records))


def test_local_errors_fail_the_key_not_the_process(xnat, tmp_path):
    with XnatClient(xnat.url, Credential("emu", "alice", PASSWORD)) as client:
        record = next(r for r in client.iter_files("PUBLIC1", experiments=["XNAT_E00001"]) if r.md5)
    key = md5e_key(record.size, record.md5, record.path)
    user_var, password_var = env_var_names("emu")
    env = dict(os.environ, **{user_var: "alice", password_var: PASSWORD})
    out = speak(["EXTENSIONS INFO", "PREPARE", f"VALUE {xnat.url}", "VALUE emu",
                 f"TRANSFER RETRIEVE {key} {tmp_path}/missing/dir/file",
                 f"VALUE {tmp_path}/git",  # GETGITDIR, at the first transfer (sharing.py)
                 f"VALUE {file_url(xnat.url, record)}", "VALUE",
                 f"TRANSFER RETRIEVE {key} {tmp_path}/ok",
                 f"VALUE {file_url(xnat.url, record)}", "VALUE"], env)
    assert out[5] == "GETGITDIR", out
    assert out[7].startswith(f"TRANSFER-FAILURE RETRIEVE {key} local file error:"), out
    assert out[-1] == f"TRANSFER-SUCCESS RETRIEVE {key}"
    assert any(line.startswith("PROGRESS ") for line in out)
    assert hashlib.md5((tmp_path / "ok").read_bytes()).hexdigest() == record.md5
    assert not (tmp_path / "git" / "annex" / "tmp" / "xnat-archives").exists()


def test_checkpresent_is_three_valued(tmp_path, xnat, monkeypatch):
    """present on proof, absent on 404, unknown otherwise (checkpresentkey exits 0, 1, 100)."""
    set_env_credential(monkeypatch)
    repo = make_dataset(tmp_path, xnat)
    table = register(repo, xnat, experiments=["XNAT_E00002"], resources=["DICOM"], limit=3)
    (kept, kept_rec), (gone, gone_rec), (changed, changed_rec) = table.items()

    def checkpresent(record) -> subprocess.CompletedProcess:
        return annex(repo, "checkpresentkey", md5e_key(record.size, record.md5, record.path),
                     "xnat", check=False)

    xnat.delete_file(gone_rec.path, resource="DICOM", session="XNAT_E00002",
                     scan=gone_rec.scan_id)
    xnat.change_file(changed_rec.path, b"new content", resource="DICOM", session="XNAT_E00002",
                     scan=changed_rec.scan_id)
    assert checkpresent(kept_rec).returncode == 0
    assert checkpresent(gone_rec).returncode == 1
    out = checkpresent(changed_rec)
    assert out.returncode == 100 and "changed on the server" in out.stderr + out.stdout
    xnat.faults.error_status = 500  # not retried, so the test stays fast
    xnat.faults.error_rate = 1.0
    assert checkpresent(kept_rec).returncode == 100
