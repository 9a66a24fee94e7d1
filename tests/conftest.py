"""Shared fixtures: every test runs in an isolated HOME with a real file keyring.

Nothing here mocks git-annex, DataLad, HTTP or the keyring: tests run the real programs against
the emulator on loopback. The isolation only keeps a developer's own configuration and secrets out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from git_annex_remote_xnat.credentials import default_credential_name, env_var_names
from git_annex_remote_xnat.records import FileRecord

VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with a git identity and keyrings.alt's plaintext file keyring.

    git-annex looks its external remote up on PATH, so the venv's bin goes first even when pytest
    was started without `make`.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_CACHE_HOME", ".cache")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    for var in list(os.environ):
        if var.startswith("DATALAD_CREDENTIAL_") or var.startswith("GIT_AUTHOR_") \
                or var.startswith("GIT_COMMITTER_"):
            monkeypatch.delenv(var)
    (home / ".gitconfig").write_text(
        "[user]\n\tname = XNAT Tester\n\temail = tester@example.org\n"
        "[init]\n\tdefaultBranch = main\n"
    )
    return home


def file_record(**fields) -> FileRecord:
    """A FileRecord of scan 1 of subject SUBJ01's session SUBJ01_MR1 in P1; `fields` override."""
    defaults = dict(project="P1", subject_id="XNAT_S00001", subject_label="SUBJ01",
                    session_id="XNAT_E00001", session_label="SUBJ01_MR1", scan_id="1",
                    scan_type="T1w", level="scan", resource="DICOM", path="a/b.dcm", size=1,
                    md5=None)
    return FileRecord(**{**defaults, **fields})


def run(cmd: list[str], cwd: Path | str | None = None, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure the assertion shows stdout and stderr."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


# --- xnat_emulator fixtures ---------------------------------------------------------------------

def cred_env(url: str) -> tuple[str, str]:
    """The two DataLad environment variables of the credential xnat-init names after `url`
    (host and port: DATALAD_CREDENTIAL_127_0_0_1_<PORT>_USER and ..._PASSWORD)."""
    return env_var_names(default_credential_name(url))


class Logins:
    """The login a test exports, as DataLad environment variables, for every emulator it
    starts: each listens on its own port, so each has its own default credential name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._urls: list[str] = []
        self._login: tuple[str, str] | None = None

    def server(self, url: str) -> None:
        """A server the login is for (the emulator factory tells every emulator it starts)."""
        self._urls.append(url)
        if self._login is not None:
            self._export(url)

    def login(self, user: str, password: str) -> None:
        """Export `user` and `password` for the servers told so far and later ones."""
        self._login = (user, password)
        for url in self._urls:
            self._export(url)

    def _export(self, url: str) -> None:
        assert self._login is not None
        for var, value in zip(cred_env(url), self._login):
            self._monkeypatch.setenv(var, value)


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> Logins:
    return Logins(monkeypatch)


@pytest.fixture
def emulator_factory(logins: Logins):
    """Call with Emulator kwargs (preset, seed, files, require_login, ...); returns a started
    Emulator, told to `logins`. Every emulator made is stopped at teardown."""
    from xnat_emulator import Emulator

    made = []

    def make(**kwargs):
        emu = Emulator(**kwargs).start()
        made.append(emu)
        logins.server(emu.url)
        return emu

    yield make
    for emu in made:
        emu.stop()


@pytest.fixture
def xnat(emulator_factory):
    """A started `Emulator(preset="small", require_login=True)` (users: admin, alice, bob)."""
    return emulator_factory(preset="small", require_login=True)
