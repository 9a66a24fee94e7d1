"""The credential lookup against the real sources: env, git config, the file keyring in $HOME,
~/.netrc; names with a port; a stored credential refused to another server. The last tests run
the commands and the special remote against emulators (and a header recorder) over HTTP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from git_annex_remote_xnat.credentials import (
    ANONYMOUS, Credential, CredentialError, CredentialMismatchError, default_credential_name,
    delete_credential, env_var_names, how_to_provide, is_credential_name, lookup_credential,
    store_credential,
)
from tests.conftest import run
from tests.test_network_faults import recorder  # noqa: F401 (a fixture)
from tests.test_xnat_commands import annex_key, datalad, init, results, update


def test_default_name_is_the_host_and_a_port_that_is_not_the_schemes():
    assert default_credential_name("https://XNAT.example.org/xnat/") == "xnat.example.org"
    assert default_credential_name("https://xnat.example.org:443") == "xnat.example.org"
    assert default_credential_name("http://xnat.example.org:80/") == "xnat.example.org"
    assert default_credential_name("https://XNAT.example.org:8443/xnat/") == \
        "xnat.example.org:8443"
    assert default_credential_name("http://xnat.example.org:443") == "xnat.example.org:443"
    assert default_credential_name("http://127.0.0.1:50123") == "127.0.0.1:50123"
    assert default_credential_name("http://[::1]:8080") == "[::1]:8080"
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


# ------------------------------------------------------------------ names with a port


def test_a_name_with_a_port_works_in_every_datalad_place(tmp_path):
    name = "xnat.example.org:8443"
    assert env_var_names(name) == ("DATALAD_CREDENTIAL_XNAT_EXAMPLE_ORG_8443_USER",
                                   "DATALAD_CREDENTIAL_XNAT_EXAMPLE_ORG_8443_PASSWORD")
    run(["git", "config", "--global", f"datalad.credential.{name}.user", "carol"])
    run(["git", "config", "--global", f"datalad.credential.{name}.password", "carol-pass"])
    cred = lookup_credential(name, repo=tmp_path)
    assert (cred.user, cred.password, cred.source) == ("carol", "carol-pass", "git config")
    assert lookup_credential("xnat.example.org", repo=tmp_path) is None  # another name
    run(["git", "config", "--global", "--remove-section", f"datalad.credential.{name}"])
    store_credential(Credential(name, "dave", "dave-pass"))
    cred = lookup_credential(name)
    assert (cred.user, cred.password, cred.source) == ("dave", "dave-pass", "keyring")


def test_a_host_and_port_is_a_name_and_a_user_password_pair_is_not():
    for name in ("xnat.example.org", "xnat.example.org:8443", "127.0.0.1:50123", "[::1]:8080",
                 "localhost:8080", "my-cred", ANONYMOUS):
        assert is_credential_name(name), name
    for pair in ("alice:alice-pass", "alice:1234", "a b", "", "alice:", "xnat.example.org:x"):
        assert not is_credential_name(pair), pair


# ------------------------------------------------------------------------------ ~/.netrc


def write_netrc(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_netrc_is_read_after_datalads_places_for_the_servers_host(isolated_home, monkeypatch):
    write_netrc(isolated_home / ".netrc",
                "machine xnat.example.org\n  login nina\n  password nina-pass\n")
    cred = lookup_credential("xnat.example.org", url="https://XNAT.example.org/xnat")
    assert (cred.user, cred.password, cred.source) == ("nina", "nina-pass", "netrc")
    assert "nina-pass" not in repr(cred)
    # netrc has no ports: the host's entry serves every port, whatever the credential's name
    assert lookup_credential("xnat.example.org:8443",
                             url="https://xnat.example.org:8443").user == "nina"
    assert lookup_credential("other.example.org", url="https://other.example.org") is None
    assert lookup_credential("xnat.example.org") is None  # no server URL: no host to look for
    user_var, password_var = env_var_names("xnat.example.org")
    monkeypatch.setenv(user_var, "erin")
    monkeypatch.setenv(password_var, "erin-pass")
    assert lookup_credential("xnat.example.org", url="https://xnat.example.org").source == "env"


def test_netrc_completes_a_user_name_only_with_that_users_password(isolated_home, tmp_path):
    write_netrc(isolated_home / ".netrc", "machine xnat.example.org login nina password nina-pass")
    run(["git", "config", "--global", "datalad.credential.site.user", "nina"])
    cred = lookup_credential("site", repo=tmp_path, url="https://xnat.example.org")
    assert (cred.user, cred.password, cred.source) == ("nina", "nina-pass", "git config+netrc")
    run(["git", "config", "--global", "datalad.credential.site.user", "oscar"])
    assert lookup_credential("site", repo=tmp_path, url="https://xnat.example.org") is None


def test_a_netrc_machine_with_the_port_is_preferred_for_that_port(isolated_home):
    write_netrc(isolated_home / ".netrc",
                "machine h.example.org login any password any-pass\n"
                "machine h.example.org:8443 login eighty password eighty-pass\n")
    assert lookup_credential("n", url="https://h.example.org:8443").user == "eighty"
    assert lookup_credential("n", url="https://h.example.org").user == "any"
    assert lookup_credential("n", url="https://h.example.org:9443").user == "any"


def test_the_netrc_default_entry_goes_to_no_server(isolated_home):
    """`default` would hand its login to whatever server a cloned dataset names."""
    write_netrc(isolated_home / ".netrc", "default login dflt password dflt-pass\n")
    assert lookup_credential("h.example.org", url="https://h.example.org") is None


def test_NETRC_names_the_file_to_read(isolated_home, tmp_path, monkeypatch):
    write_netrc(isolated_home / ".netrc", "machine h.example.org login home password home-pass\n")
    other = write_netrc(tmp_path / "netrc", "machine h.example.org login env password env-pass\n")
    monkeypatch.setenv("NETRC", str(other))
    assert lookup_credential("h.example.org", url="https://h.example.org").user == "env"


@pytest.mark.parametrize("text", ["machine h.example.org login nina s3cret-token\n",
                                  "machine h.example.org login nina password\n  s3cret-token x\n"])
def test_a_malformed_netrc_is_skipped_and_named_when_nothing_else_answers(
        isolated_home, monkeypatch, caplog, text):
    write_netrc(isolated_home / ".netrc", text)
    with caplog.at_level(logging.DEBUG):
        assert lookup_credential("h.example.org", url="https://h.example.org") is None
    assert "s3cret-token" not in caplog.text
    message = how_to_provide("h.example.org", url="https://h.example.org")
    assert "netrc" in message and "line" in message and "s3cret-token" not in message
    assert "\n" not in message
    user_var, password_var = env_var_names("h.example.org")
    monkeypatch.setenv(user_var, "erin")
    monkeypatch.setenv(password_var, "erin-pass")
    assert lookup_credential("h.example.org", url="https://h.example.org").user == "erin"


def test_the_help_names_the_netrc_machine(isolated_home):
    text = how_to_provide("xnat.example.org:8443", url="https://xnat.example.org:8443/xnat")
    assert "machine xnat.example.org" in text and "~/.netrc" in text and "\n" not in text


# ---------------------------------------------------------- a credential goes to its server


def test_a_stored_credential_goes_only_to_its_server(isolated_home):
    import keyring

    store_credential(Credential("site", "admin", "admin-pass"), url="https://xnat.example.org/xnat")
    assert keyring.get_password("datalad-site", "url") == "https://xnat.example.org/xnat"
    # the same scheme, host and port is the same server, whatever the context path
    cred = lookup_credential("site", url="https://XNAT.example.org:443/other")
    assert (cred.user, cred.password, cred.url) == ("admin", "admin-pass",
                                                    "https://xnat.example.org/xnat")
    assert lookup_credential("site").user == "admin"  # no URL asked about: nothing to compare
    assert issubclass(CredentialMismatchError, CredentialError)
    for other in ("https://evil.example.org", "http://xnat.example.org",
                  "https://xnat.example.org:8443"):
        with pytest.raises(CredentialMismatchError) as info:
            lookup_credential("site", url=other)
        message = str(info.value)
        assert "\n" not in message and "admin-pass" not in message
        assert other.split("//")[1] in message and "'site'" in message
        assert "https://xnat.example.org" in message
        assert "xnat-credential" in message and "--credential" in message


def test_a_credential_stored_without_a_server_is_used_as_before(isolated_home, monkeypatch):
    import keyring

    keyring.set_password("datalad-old", "user", "olga")  # as an older xnat-init stored it
    keyring.set_password("datalad-old", "password", "olga-pass")
    assert lookup_credential("old", url="https://anywhere.example.org").user == "olga"
    store_credential(Credential("bound", "b", "b-pass"), url="https://a.example.org")
    user_var, password_var = env_var_names("bound")
    monkeypatch.setenv(user_var, "erin")  # env vars carry no server: used as today
    monkeypatch.setenv(password_var, "erin-pass")
    assert lookup_credential("bound", url="https://b.example.org").user == "erin"


def test_storing_again_binds_anew_and_delete_forgets_the_server(isolated_home):
    import keyring

    store_credential(Credential("site", "a", "p1"), url="https://a.example.org")
    store_credential(Credential("site", "a", "p2"), url="https://b.example.org")
    assert lookup_credential("site", url="https://b.example.org").password == "p2"
    with pytest.raises(CredentialMismatchError):
        lookup_credential("site", url="https://a.example.org")
    store_credential(Credential("site", "a", "p3"))  # no server given: no stale binding kept
    assert lookup_credential("site", url="https://a.example.org").password == "p3"
    store_credential(Credential("site", "a", "p4"), url="https://a.example.org")
    delete_credential("site")
    assert keyring.get_password("datalad-site", "url") is None
    assert lookup_credential("site") is None


# --------------------------------------- the commands and the special remote, on the emulator


def test_netrc_alone_serves_init_update_query_and_get(xnat, isolated_home, tmp_path):
    import keyring

    write_netrc(isolated_home / ".netrc", "machine 127.0.0.1 login alice password alice-pass\n")
    assert not [var for var in os.environ if var.startswith("DATALAD_CREDENTIAL_")]
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    records = init(ds, xnat.url, "-p", "PUBLIC1")
    assert [r["status"] for r in records] == ["ok"], records
    summary = update(ds, "--reckless", "fast", "-c", "NIFTI")
    assert summary["status"] == "ok" and summary["added"] > 0 and summary["failed"] == 0
    assert keyring.get_password(f"datalad-{default_credential_name(xnat.url)}", "user") is None
    first, second = run(["git", "annex", "find", "--not", "--in", "here"],
                        cwd=ds).stdout.splitlines()[:2]
    run(["git", "annex", "get", first], cwd=ds)
    assert (ds / first).is_file()
    clone = tmp_path / "clone"
    datalad("clone", str(ds), str(clone))
    datalad("get", second, cwd=clone)
    assert (clone / second).is_file()
    projects = results("xnat-query-files", xnat.url)
    assert projects and all(r["status"] == "ok" for r in projects), projects


def test_two_servers_on_one_host_get_two_credentials(emulator_factory, tmp_path, monkeypatch):
    servers = [emulator_factory(preset="small", require_login=True) for _ in range(2)]
    names = []
    for emu in servers:
        alias, secret = emu.issue_alias_token("alice")  # a login of this server only
        name = f"127.0.0.1:{urlsplit(emu.url).port}"
        assert default_credential_name(emu.url) == name
        user_var, password_var = env_var_names(name)
        monkeypatch.setenv(user_var, alias)
        monkeypatch.setenv(password_var, secret)
        names.append(name)
    for emu, name in zip(servers, names):
        ds = tmp_path / name.replace(":", "_")
        datalad("create", str(ds))
        records = init(ds, emu.url, "-p", "PUBLIC1")
        assert [r["status"] for r in records] == ["ok"], records
        assert run(["git", "config", "-f", ".datalad/config", "datalad.xnat.default.credential-name"],
                   cwd=ds).stdout.strip() == name
        summary = update(ds, "--reckless", "fast", "-c", "NIFTI")
        assert summary["status"] == "ok" and summary["added"] > 0 and summary["failed"] == 0
        path = run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout.split("\n")[0]
        run(["git", "annex", "get", path], cwd=ds)
        assert (ds / path).is_file()


def test_a_credential_stored_for_one_server_is_not_sent_to_another(xnat, recorder, tmp_path):
    """A clone's committed .datalad/config (and git-annex branch) name another server with the
    credential of a real one: nothing is sent there, and one line says why."""
    name = default_credential_name(xnat.url)
    store_credential(Credential(name, "alice", "alice-pass"), url=xnat.url)
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    assert [r["status"] for r in init(ds, xnat.url, "-p", "PUBLIC1")] == ["ok"]
    assert update(ds, "--reckless", "fast", "-c", "NIFTI")["failed"] == 0
    other = recorder.url()
    run(["git", "config", "-f", ".datalad/config", "datalad.xnat.default.url", other], cwd=ds)
    datalad("save", "-m", "another server", cwd=ds)
    records = results("xnat-update", "--reckless", "fast", cwd=ds)
    problems = [r for r in records if r["status"] in ("error", "impossible")]
    assert len(problems) == 1, records
    message = problems[0]["message"]
    assert "\n" not in message and f"'{name}'" in message and other.split("//")[1] in message
    assert "xnat-credential" in message and "alice-pass" not in message
    # the special remote, its url= changed and an xnat: URL of that server registered
    path = run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout.split("\n")[0]
    key = annex_key(ds, path)
    whereis = json.loads(run(["git", "annex", "whereis", "--json", path], cwd=ds).stdout)
    url = whereis["whereis"][0]["urls"][0].replace(xnat.url.split("//")[1], other.split("//")[1])
    run(["git", "annex", "enableremote", "xnat", f"url={other}"], cwd=ds)
    run(["git", "annex", "registerurl", "--remote=xnat", key, url], cwd=ds)
    out = run(["git", "annex", "get", "--from", "xnat", path], cwd=ds, check=False)
    assert out.returncode != 0 and not (ds / path).is_file()
    assert f"'{name}'" in out.stderr and "xnat-credential" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "alice-pass" not in out.stderr
    assert all("authorization" not in headers for headers in recorder.seen), recorder.seen
