"""The credential lookup against the real sources: env, git config, the file keyring in $HOME."""

from __future__ import annotations

import subprocess
import sys

import pytest

from git_annex_remote_xnat.credentials import (
    ANONYMOUS, Credential, CredentialError, default_credential_name, env_var_names,
    how_to_provide, lookup_credential, store_credential,
)
from tests.conftest import run


def test_default_name_is_the_host():
    assert default_credential_name("https://XNAT.example.org:8443/xnat/") == "xnat.example.org"
    with pytest.raises(ValueError):
        default_credential_name("not a url")


def test_env_var_names_follow_datalad():
    assert env_var_names("xnat.example-org") == (
        "DATALAD_CREDENTIAL_XNAT_EXAMPLE_ORG_USER", "DATALAD_CREDENTIAL_XNAT_EXAMPLE_ORG_PASSWORD")


def test_anonymous_needs_no_lookup():
    cred = lookup_credential(ANONYMOUS)
    assert cred.anonymous and cred.user is None and cred.source == ANONYMOUS


def test_missing_credential_is_none():
    assert lookup_credential("nowhere.example.org") is None


def test_from_env(monkeypatch):
    user_var, password_var = env_var_names("xnat.example.org")
    monkeypatch.setenv(user_var, "alice")
    monkeypatch.setenv(password_var, "alice-pass")
    cred = lookup_credential("xnat.example.org")
    assert (cred.user, cred.password, cred.source) == ("alice", "alice-pass", "env")
    assert "alice-pass" not in repr(cred)


def test_from_git_config_of_the_repo(tmp_path):
    run(["git", "init", "-q", str(tmp_path)])
    run(["git", "-C", str(tmp_path), "config", "datalad.credential.My-Xnat.org.user", "bob"])
    run(["git", "-C", str(tmp_path), "config", "datalad.credential.My-Xnat.org.password", "bob-pass"])
    cred = lookup_credential("My-Xnat.org", repo=tmp_path)
    assert (cred.user, cred.password, cred.source) == ("bob", "bob-pass", "git config")
    assert lookup_credential("My-Xnat.org") is None  # not in the global config


def test_store_then_lookup_in_the_file_keyring(isolated_home):
    store_credential(Credential("site", "admin", "admin-pass"))
    cred = lookup_credential("site")
    assert (cred.user, cred.password, cred.source) == ("admin", "admin-pass", "keyring")
    # a real keyring file in the temporary HOME, written by keyrings.alt
    assert list(isolated_home.rglob("keyring_pass.cfg"))


def test_fields_mix_sources_like_datalad_next(tmp_path):
    """User name in git config, secret in the keyring under the field datalad-next uses."""
    import keyring

    keyring.set_password("datalad-mixed", "secret", "s3cret")
    run(["git", "config", "--global", "datalad.credential.mixed.user", "carol"])
    cred = lookup_credential("mixed", repo=tmp_path)
    assert (cred.user, cred.password, cred.source) == ("carol", "s3cret", "git config+keyring")


def test_env_wins_over_keyring(monkeypatch):
    store_credential(Credential("both", "kuser", "kpass"))
    user_var, password_var = env_var_names("both")
    monkeypatch.setenv(user_var, "euser")
    monkeypatch.setenv(password_var, "epass")
    assert lookup_credential("both").user == "euser"


def test_store_refuses_anonymous_and_incomplete():
    with pytest.raises(CredentialError):
        store_credential(Credential(ANONYMOUS))
    with pytest.raises(CredentialError):
        store_credential(Credential("x", "user", None))


def test_store_without_keyring_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    code = ("from git_annex_remote_xnat.credentials import *\n"
            "try:\n    store_credential(Credential('n', 'u', 'p'))\n"
            "except CredentialError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "DATALAD_CREDENTIAL_N_USER" in out and "\n" not in out.strip()


def test_help_text_is_concrete():
    text = how_to_provide("xnat.example.org")
    assert "keyring set datalad-xnat.example.org user" in text
    assert "DATALAD_CREDENTIAL_XNAT_EXAMPLE_ORG_PASSWORD" in text
    assert "\n" not in text


def test_import_does_not_load_keyring():
    code = ("import sys, git_annex_remote_xnat.credentials\n"
            "print('keyring' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False"
