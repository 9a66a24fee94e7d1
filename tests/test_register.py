"""Bulk registration against real git and git-annex (no server needed: nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run
from git_annex_remote_xnat.keys import hashdir_lower, hashdir_mixed, md5e_key
from xnat_init.layout import path_hash
from xnat_init.update.gitannex import (
    RegistrationError,
    TrackedTree,
    commit_tree_changes,
    key_urls,
    register_keys,
    symlink_fingerprint,
    tracked_keys,
)
from xnat_init.update.spool import Entry as Change
from xnat_init.update.spool import EntrySpool

SERVER = "http://127.0.0.1:9"


def make_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "ds"
    run(["git", "init", "-q", str(repo)])
    run(["git", "annex", "init", "-q"], cwd=repo)
    run(["git", "annex", "initremote", "xnat", "type=external", "externaltype=xnat",
         f"url={SERVER}", "credential=anonymous", "encryption=none", "autoenable=true"], cwd=repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=repo)
    uuid = run(["git", "config", "remote.xnat.annex-uuid"], cwd=repo).stdout.strip()
    return repo, uuid


def key_for(name: str, content: bytes) -> str:
    return md5e_key(len(content), hashlib.md5(content).hexdigest(), name)


def url_for(path: str) -> str:
    return f"xnat://127.0.0.1:9/experiments/E1/scans/1/resources/DICOM/files/{path.replace(' ', '%20')}"


def register_files(repo: Path, uuid: str, files: dict[str, bytes],
                   method: str = "fast-import") -> list[Change]:
    """Register {path: content} in git-annex's branch the way xnat-update does (no commit)."""
    changes = [Change(path, key_for(path, content), url_for(path)) for path, content in files.items()]
    spool = EntrySpool()
    for change in changes:
        spool.add(change, register=True, want=False)
    register_keys(repo, spool.sorted_keys(), uuid, "xnat", method=method)
    spool.close()
    return changes


def test_hashdirs_match_git_annex(tmp_path):
    repo, _ = make_repo(tmp_path)
    keys = [key_for(f"f{i}.dcm", str(i).encode()) for i in range(50)] + \
        ["MD5E-s0--d41d8cd98f00b204e9800998ecf8427e", "MD5E-s3--acbd18db4cc2f85cedef654fccc4a4d8.é.gz"]
    out = run(["git", "annex", "examinekey", "--batch",
               "--format=${hashdirmixed} ${hashdirlower}\n"], cwd=repo,
              input="".join(k + "\n" for k in keys)).stdout.splitlines()
    assert out == [f"{hashdir_mixed(k)} {hashdir_lower(k)}" for k in keys]


@pytest.mark.parametrize("method", ["fast-import", "batch"])
def test_register_then_whereis_and_update(tmp_path, method):
    repo, uuid = make_repo(tmp_path)
    run(["git", "config", "datalad.xnat.register-method", method], cwd=repo)
    files = {"a/b.dcm": b"one", "a/c d.nii.gz": b"two", "top.txt": b"three", "dup.txt": b"three",
             'we"ird\\name.json': b"four"}
    changes = register_files(repo, uuid, files, method)
    new = commit_tree_changes(repo, changes, [], {}, "register")
    assert new
    assert run(["git", "status", "--porcelain"], cwd=repo).stdout == ""
    for change in changes:
        assert (repo / change.path).is_symlink()
    whereis = json.loads(run(["git", "annex", "whereis", "--json", "a/c d.nii.gz"], cwd=repo).stdout)
    assert [w["uuid"] for w in whereis["whereis"]] == [uuid]
    assert whereis["whereis"][0]["urls"] == [url_for("a/c d.nii.gz")]
    # two paths with one content: one key, both URLs
    three = key_for("top.txt", b"three")
    assert sorted(key_urls(repo, [three])[three]) == sorted([url_for("top.txt"), url_for("dup.txt")])

    # the tracked tree knows each file by fingerprint
    tree = TrackedTree.read(repo, run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip())
    index = tree.lookup(path_hash("a/b.dcm"))
    assert index is not None
    assert tree.blobs[index] == symlink_fingerprint(key_for("a/b.dcm", b"one"), "a/b.dcm")
    found = dict(tracked_keys(repo, "HEAD", {path_hash("top.txt")}))
    assert found == {"top.txt": three}

    # a second registration: a change, a removal; existing logs are appended to, not replaced
    changed = Change("a/b.dcm", key_for("a/b.dcm", b"ONE"), url_for("a/b.dcm"))
    spool = EntrySpool()
    spool.add(changed, register=True, want=False)
    register_keys(repo, spool.sorted_keys(), uuid, "xnat", method=method)
    spool.close()
    commit_tree_changes(repo, [changed], ["top.txt"], {}, "update")
    assert not (repo / "top.txt").exists()
    assert run(["git", "status", "--porcelain"], cwd=repo).stdout == ""
    assert run(["git", "log", "--format=%s", "-1"], cwd=repo).stdout.strip() == "update"
    assert key_urls(repo, [changed.key])[changed.key] == [url_for("a/b.dcm")]
    # git-annex's own writes after ours keep ours
    other = key_for("z.txt", b"zzz")
    run(["git", "annex", "registerurl", other, url_for("z.txt")], cwd=repo)
    assert key_urls(repo, [changed.key])[changed.key] == [url_for("a/b.dcm")]
    assert key_urls(repo, [other])[other] == [url_for("z.txt")]


def test_nothing_to_commit_and_local_change_refused(tmp_path):
    repo, uuid = make_repo(tmp_path)
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout
    assert commit_tree_changes(repo, [], [], {}, "nothing") is None
    assert run(["git", "rev-parse", "HEAD"], cwd=repo).stdout == head
    change = Change("x.txt", key_for("x.txt", b"x"), url_for("x.txt"))
    commit_tree_changes(repo, [change], [], {}, "first")
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout
    # a local uncommitted change to a path the update would rewrite: refused, nothing changed
    (repo / "x.txt").unlink()
    (repo / "x.txt").write_text("mine")
    with pytest.raises(RegistrationError, match="local changes"):
        commit_tree_changes(repo, [Change("x.txt", key_for("x.txt", b"y"), url_for("x.txt"))],
                            [], {}, "second")
    assert run(["git", "rev-parse", "HEAD"], cwd=repo).stdout == head
    assert (repo / "x.txt").read_text() == "mine"


def test_annex_branch_written_in_chunks(tmp_path, monkeypatch):
    """Registration across several fast-import chunks (one per ANNEX_CHUNK_KEYS keys) loses no
    key and no URL, and records location and URL of a key in one chunk even when it has two
    URLs (the spool keeps a key's pairs together)."""
    import xnat_init.update.gitannex as register

    monkeypatch.setattr(register, "ANNEX_CHUNK_KEYS", 3)
    repo, uuid = make_repo(tmp_path)
    before = int(run(["git", "rev-list", "--count", "git-annex"], cwd=repo).stdout)
    files = {f"f{i:02d}.dcm": str(i).encode() for i in range(10)}
    files["copy.dcm"] = b"4"  # same content as f04.dcm: one key, two URLs
    changes = register_files(repo, uuid, files)
    commit_tree_changes(repo, changes, [], {}, "register")
    keys = {c.key for c in changes}
    assert len(keys) == 10
    after = int(run(["git", "rev-list", "--count", "git-annex"], cwd=repo).stdout)
    assert after - before == 4  # ceil(10 / 3) chunks, one commit each
    urls = key_urls(repo, keys)
    for change in changes:
        assert change.url in urls[change.key]
    missing = run(["git", "annex", "find", "--not", "--in", "xnat"], cwd=repo).stdout
    assert missing == ""


def test_few_known_keys_then_many_new_ones_do_not_deadlock(tmp_path, monkeypatch):
    """A chunk that starts with keys in folders the branch has (their logs are read) and goes on
    with more new keys than are read ahead (no logs to read) finishes. Before the fix the
    reader waited for an answer whose question sat unsent in a buffer while the feeder waited
    for room: 100,000 files hung at the start of the second chunk."""
    import threading

    import xnat_init.update.gitannex as register

    monkeypatch.setattr(register, "PENDING_KEYS", 3)
    repo, uuid = make_repo(tmp_path)
    names = sorted((f"f{i}.dcm" for i in range(400)),
                   key=lambda name: hashdir_lower(key_for(name, name.encode())))
    first = names[0]
    folder = hashdir_lower(key_for(first, first.encode())).split("/")[0]
    later = [n for n in names[1:] if hashdir_lower(key_for(n, n.encode())).split("/")[0] != folder]
    register_files(repo, uuid, {first: first.encode()})
    files = {name: name.encode() for name in [first] + later[:40]}
    done: list[list[Change]] = []
    worker = threading.Thread(target=lambda: done.append(register_files(repo, uuid, files)),
                              daemon=True)
    worker.start()
    worker.join(timeout=120)  # a deadlock detector, not a time limit: it takes well under 1 s
    assert done, "registration hung"
    assert set(key_urls(repo, [c.key for c in done[0]])) == {c.key for c in done[0]}
    assert run(["git", "annex", "find", "--not", "--in", "xnat"], cwd=repo).stdout == ""


def test_tree_built_in_steps_is_one_commit(tmp_path, monkeypatch):
    """A tree written in several fast-import steps still lands as one commit on HEAD, with the
    removals, and nothing changed gives no commit."""
    import xnat_init.update.gitannex as register

    monkeypatch.setattr(register, "TREE_CHUNK_CHANGES", 4)
    repo, _ = make_repo(tmp_path)
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    changes = [Change(f"s{i % 3}/f{i}.dcm", key_for(f"f{i}.dcm", str(i).encode()),
                      url_for(f"f{i}.dcm")) for i in range(11)]
    new = commit_tree_changes(repo, changes, [], {}, "eleven files")
    assert run(["git", "rev-parse", f"{new}^"], cwd=repo).stdout.strip() == head
    assert run(["git", "log", "-1", "--format=%s"], cwd=repo).stdout.strip() == "eleven files"
    assert len(run(["git", "ls-files"], cwd=repo).stdout.splitlines()) == 11
    assert run(["git", "for-each-ref", "refs/xnat-update"], cwd=repo).stdout == ""
    again = commit_tree_changes(repo, changes[1:6], ["s0/f0.dcm"], {}, "one removed")
    assert run(["git", "rev-parse", f"{again}^"], cwd=repo).stdout.strip() == new
    assert not (repo / "s0/f0.dcm").exists() and (repo / "s1/f1.dcm").is_symlink()
    assert commit_tree_changes(repo, changes[1:5], [], {}, "same") is None
    assert run(["git", "status", "--porcelain"], cwd=repo).stdout == ""


@pytest.fixture
def sigint_disposition():
    """Sets SIGINT's handler for a test and restores it after: a test run started in the
    background (`make test &`) inherits SIGINT ignored."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, before)


def test_interrupt_waits_for_the_branch_and_work_tree_to_agree(tmp_path, sigint_disposition):
    """Ctrl-C during the step that moves the branch and then the work tree takes effect after
    it: the git commands in it are not stopped, and KeyboardInterrupt comes at its end."""
    import os
    import signal

    from xnat_init.update.gitannex import git, interrupts_deferred

    sigint_disposition(signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt
    repo, _ = make_repo(tmp_path)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends to this process
            steps.append(git(repo, "rev-parse", "HEAD", shielded=True).returncode)
            steps.append("after")
    assert steps == [0, "after"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_deferred_stays_ignored_where_sigint_was_ignored(sigint_disposition):
    """A process that ignores SIGINT (started with nohup or `&`) is not interrupted by the
    deferral: the SIGINT it received in the block is dropped, as it would have been."""
    import os
    import signal

    from xnat_init.update.gitannex import interrupts_deferred

    sigint_disposition(signal.SIG_IGN)
    steps = []
    with interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("in block")
    steps.append("after")
    assert steps == ["in block", "after"]
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
