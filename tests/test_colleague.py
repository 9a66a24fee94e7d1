"""A colleague's clone works with nothing but their own XNAT login.

The dataset is made with a credential from the environment; the clone runs in the same fresh
HOME with that environment gone and an empty keyring, as on another person's machine. Real
DataLad, git-annex, special remote, keyring (keyrings.alt's file keyring) and HTTP; prompts are
answered on a real pseudo-terminal.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from git_annex_remote_xnat.credentials import default_credential_name, env_var_names
from tests.conftest import run
from tests.test_xnat_commands import _in_terminal, datalad, init, update


@pytest.fixture
def clone(xnat, tmp_path, monkeypatch) -> Path:
    """A clone of a dataset tracking PUBLIC1's NIFTI files, registered without content, in a
    HOME that has no credential for the server (the maker's was in the environment)."""
    user_var, password_var = env_var_names(default_credential_name(xnat.url))
    monkeypatch.setenv(user_var, "alice")
    monkeypatch.setenv(password_var, "alice-pass")
    origin = tmp_path / "origin"
    datalad("create", str(origin))
    init(origin, xnat.url, "-p", "PUBLIC1", "-c", "NIFTI")
    assert update(origin, "--reckless", "fast")["added"] > 4
    monkeypatch.delenv(user_var)
    monkeypatch.delenv(password_var)
    path = tmp_path / "clone"
    datalad("clone", str(origin), str(path))
    return path


def missing(ds: Path) -> list[str]:
    return run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout.split()


def without_terminal(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in a session of its own: no controlling terminal, as in a batch job."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, start_new_session=True,
                          stdin=subprocess.DEVNULL)


def secrets_on_disk(roots: list[Path], secret: str) -> list[Path]:
    """Files under `roots` that hold `secret`, as text or base64 (how the file keyring keeps
    it)."""
    encoded = [secret.encode(), base64.b64encode(secret.encode()).rstrip(b"=")]
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(word in data for word in encoded):
                    found.append(path)
    return found


def test_get_in_a_clone_asks_once_on_the_terminal(xnat, clone):
    out = _in_terminal(["datalad", "get", "-J", "4", "."], clone,
                       [("User name", "alice"), ("Password", "alice-pass")], timeout=120)
    assert out.count("User name") == 1, out
    assert "alice-pass" not in out
    assert missing(clone) == [], out
    run(["git", "annex", "fsck", "--quiet"], cwd=clone)
    # stored: a get after a drop asks nothing
    run(["git", "annex", "drop", "--force", "."], cwd=clone)
    out = _in_terminal(["git", "annex", "get", "-J", "4", "."], clone, [], timeout=120)
    assert "User name" not in out, out
    assert missing(clone) == []


def test_a_wrong_password_is_asked_again(xnat, clone):
    out = _in_terminal(["git", "annex", "get", "."], clone,
                       [("User name", "alice"), ("Password", "wrong"),
                        ("User name", "alice"), ("Password", "alice-pass")], timeout=120)
    assert out.count("User name") == 2 and "refused user 'alice'" in out, out
    assert missing(clone) == [], out


def test_without_a_terminal_one_line_names_the_command_that_works(xnat, clone):
    got = without_terminal(["git", "annex", "get", "-J", "3", "."], clone)
    assert got.returncode != 0
    text = got.stdout + got.stderr
    assert text.count("datalad xnat-credential") == 1, text
    assert "xnat-init" not in text, text
    assert "Traceback" not in text
    # the command named works in the clone: it asks, checks and stores
    out = _in_terminal(["datalad", "xnat-credential"], clone,
                       [("User name", "alice"), ("Password", "alice-pass")])
    assert "xnat_credential(ok)" in out, out
    got = without_terminal(["git", "annex", "get", "-J", "3", "."], clone)
    assert got.returncode == 0, got.stderr
    assert missing(clone) == []


def test_a_token_is_stored_instead_of_the_password(xnat, clone, tmp_path):
    out = _in_terminal(["datalad", "xnat-credential", "--token"], clone,
                       [("User name", "alice"), ("Password", "alice-pass")])
    assert "xnat_credential(ok)" in out and "alias token" in out, out
    assert secrets_on_disk([Path(os.environ["HOME"]), tmp_path], "alice-pass") == []
    got = without_terminal(["git", "annex", "get", "."], clone)
    assert got.returncode == 0, got.stderr
    assert missing(clone) == []
    # revoked (or expired): one line that names the command renewing it
    for token in list(xnat.app.auth.tokens.values()):
        xnat.app.auth.invalidate_token(token.alias)
    run(["git", "annex", "drop", "--force", "."], cwd=clone)
    got = without_terminal(["git", "annex", "get", "."], clone)
    assert got.returncode != 0
    assert "xnat-credential --token" in got.stdout + got.stderr, got.stdout + got.stderr


def test_query_asks_in_a_terminal(xnat, tmp_path):
    out = _in_terminal(["datalad", "xnat-query-files", xnat.url], tmp_path,
                       [("User name", "alice"), ("Password", "alice-pass")])
    assert "PUBLIC1" in out, out
    assert "alice-pass" not in out


def test_credential_command_outside_an_instance_says_what_to_do(tmp_path):
    ds = tmp_path / "plain"
    datalad("create", str(ds))
    got = datalad("xnat-credential", cwd=ds, check=False)
    assert got.returncode != 0
    assert "xnat-init" in got.stdout + got.stderr and "Traceback" not in got.stderr


def test_a_remote_enabled_by_hand_says_the_one_command_and_then_works(xnat, clone, tmp_path,
                                                                       monkeypatch):
    """git-annex 10.20261026 makes a special remote enabled by hand unusable until it is
    verified; its own message names `git annex verifyremote`, after which the get works."""
    user_var, password_var = env_var_names(default_credential_name(xnat.url))
    monkeypatch.setenv(user_var, "alice")
    monkeypatch.setenv(password_var, "alice-pass")
    by_hand = tmp_path / "by-hand"
    run(["git", "clone", "-q", str(clone), str(by_hand)])
    run(["git", "annex", "init", "-q", "--no-autoenable"], cwd=by_hand)
    enabled = run(["git", "annex", "enableremote", "xnat"], cwd=by_hand)
    path = run(["git", "annex", "find", "--not", "--in", "here"], cwd=by_hand).stdout.split()[0]
    got = run(["git", "annex", "get", path], cwd=by_hand, check=False)
    if got.returncode != 0:  # a git-annex with the verification gate
        assert "git-annex verifyremote xnat" in got.stdout + got.stderr
        safe = next(line.split("run:", 1)[1].split() for line in
                    (enabled.stdout + enabled.stderr).splitlines() if "--safe" in line)
        run(safe, cwd=by_hand)
        run(["git", "annex", "get", path], cwd=by_hand)
    assert (by_hand / path).is_file()


def test_a_clone_pushes_once_the_enabled_remote_is_verified(xnat, clone, tmp_path):
    """git-annex 10.20261026 lets an autoenabled special remote fetch at once, but refuses
    every push (and copy to another remote) until it is verified: the README's recipe
    (`git annex verifyremote xnat`, then the `--safe` command it prints) makes the push work."""
    published = tmp_path / "published.git"
    run(["git", "init", "-q", "--bare", str(published)])
    run(["git", "remote", "add", "lab", str(published)], cwd=clone)
    pushed = run(["git", "push", "lab", "HEAD:refs/heads/main"], cwd=clone, check=False)
    if pushed.returncode != 0:  # a git-annex with the verification gate
        assert "verifyremote xnat" in pushed.stdout + pushed.stderr
        shown = run(["git", "annex", "verifyremote", "xnat"], cwd=clone, input="")
        assert xnat.url in shown.stdout and "password" not in shown.stdout.lower()
        safe = next(line.split("run:", 1)[1].split() for line in shown.stdout.splitlines()
                    if "--safe" in line)
        run(safe, cwd=clone)
        run(["git", "push", "lab", "HEAD:refs/heads/main"], cwd=clone)
    assert run(["git", "rev-parse", "HEAD"], cwd=clone).stdout == \
        run(["git", "--git-dir", str(published), "rev-parse", "main"]).stdout


def test_a_server_that_is_not_xnat_is_named_so(tmp_path):
    """A plain web server refuses XNAT's login POST (501): that is the wrong URL, not a server
    to try again later."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = datalad("xnat-query-files", "--credential", "anonymous",
                      f"http://127.0.0.1:{server.server_address[1]}", cwd=tmp_path, check=False)
    finally:
        server.shutdown()
    text = got.stdout + got.stderr
    assert got.returncode != 0
    assert "no XNAT REST API there" in text and "try again later" not in text, text


def test_update_in_a_clone_asks_in_a_terminal_and_stores(xnat, clone):
    out = _in_terminal(["datalad", "xnat-update", "--reckless", "fast"], clone,
                       [("User name", "alice"), ("Password", "alice-pass")], timeout=120)
    assert "xnat_update(ok)" in out or "xnat_update(notneeded)" in out, out
    assert "alice-pass" not in out
    got = without_terminal(["git", "annex", "get", "."], clone)  # stored: no one to ask
    assert got.returncode == 0, got.stderr
