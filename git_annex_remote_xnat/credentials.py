"""The one credential lookup shared by the special remote and the DataLad commands.

Names and places follow DataLad, so users keep the credentials they already have:

* the special name ``anonymous``: no authentication (an open XNAT site's guest account);
* environment variables ``DATALAD_CREDENTIAL_<NAME>_USER`` and ``..._PASSWORD`` (NAME upper-cased,
  every character other than A-Z and 0-9 replaced by ``_``);
* git config ``datalad.credential.<name>.user`` and ``.password`` (read with a single ``git config``
  call in the repository at hand, so a per-dataset or global setting both work);
* the keyring, service ``datalad-<name>``, fields ``user`` and ``password`` (``secret`` is accepted
  for the password, as datalad-next stores it).

Each field is taken from the first place that has it, so the datalad-next layout (user name in git
config, secret in the keyring) works too. Nothing here ever prompts: the special remote has no
terminal, and ``-J8`` would prompt eight times. ``keyring`` is imported only when env and git config
do not already answer, because importing it and choosing a backend is slow, and the special
remote starts once per `-J` job.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ANONYMOUS = "anonymous"
FIELDS = ("user", "password")


class CredentialError(Exception):
    """A credential cannot be stored (no usable keyring, anonymous, incomplete)."""


@dataclass(frozen=True)
class Credential:
    """A named user/password pair (an XNAT alias token works as one), or the anonymous one.

    `source` says where the values came from (``anonymous``, ``env``, ``git config``, ``keyring``
    or a ``+``-joined mix), for messages; the password never appears in `repr`.
    """

    name: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = ""

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS or (not self.user and not self.password)


def anonymous_credential() -> Credential:
    return Credential(ANONYMOUS, None, None, ANONYMOUS)


def default_credential_name(url: str) -> str:
    """The host part of the server URL, the name DataLad would use (``xnat.example.org``)."""
    host = urlsplit(url.strip()).hostname
    if not host:
        raise ValueError(f"cannot derive a credential name from {url!r}: it has no host part")
    return host.lower()


def env_var_names(name: str) -> tuple[str, str]:
    """The two environment variables DataLad reads for credential `name`."""
    token = re.sub(r"[^A-Z0-9]", "_", name.upper())
    return f"DATALAD_CREDENTIAL_{token}_USER", f"DATALAD_CREDENTIAL_{token}_PASSWORD"


def keyring_service(name: str) -> str:
    return f"datalad-{name}"


def how_to_provide(name: str) -> str:
    """One line naming the concrete ways to supply credential `name` (for error messages)."""
    user_var, password_var = env_var_names(name)
    return (
        f"provide credential '{name}': run `datalad xnat-init` (it asks and stores it), or "
        f"`keyring set {keyring_service(name)} user` and `keyring set {keyring_service(name)} "
        f"password`, or export {user_var} and {password_var}, or set git config "
        f"datalad.credential.{name}.user/.password; use credential=anonymous for an open site"
    )


def _from_env(name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    import os

    environ = os.environ if environ is None else environ
    found = {}
    for fld, var in zip(FIELDS, env_var_names(name)):
        value = environ.get(var)
        if value:
            found[fld] = value
    return found


def _from_git_config(name: str, repo: str | Path | None) -> dict[str, str]:
    """Both fields with one `git config` call; keys print lower-cased except the subsection."""
    pattern = r"^datalad\.credential\." + re.escape(name) + r"\.(user|password)$"
    cmd = ["git"]
    if repo is not None:
        cmd += ["-C", str(repo)]
    cmd += ["config", "-z", "--get-regexp", pattern]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for entry in proc.stdout.split("\0"):
        key, _, value = entry.partition("\n")
        if key and value:
            found[key.rsplit(".", 1)[-1]] = value  # the last one wins, as with git config --get
    return found


def _from_keyring(name: str, wanted: list[str]) -> dict[str, str]:
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:
        return {}
    found: dict[str, str] = {}
    service = keyring_service(name)
    candidates = {"user": ("user",), "password": ("password", "secret")}
    try:
        for fld in wanted:
            for keyring_field in candidates[fld]:
                value = keyring.get_password(service, keyring_field)
                if value:
                    found[fld] = value
                    break
    except (KeyringError, RuntimeError, OSError, ValueError):
        # No usable backend (headless machine without keyrings.alt): the other sources decide.
        pass
    return found


def lookup_credential(name: str, repo: str | Path | None = None) -> Credential | None:
    """The credential called `name`, or None when no source has both a user and a password.

    `repo` is the repository whose git config is consulted (the current directory when None).
    """
    if name == ANONYMOUS:
        return anonymous_credential()
    values: dict[str, str] = {}
    sources: list[str] = []
    for source, getter in (("env", lambda: _from_env(name)),
                           ("git config", lambda: _from_git_config(name, repo)),
                           ("keyring", lambda: _from_keyring(name, [f for f in FIELDS
                                                                    if f not in values]))):
        new = {fld: value for fld, value in getter().items() if fld not in values}
        if new:
            values.update(new)
            sources.append(source)
        if all(fld in values for fld in FIELDS):
            return Credential(name, values["user"], values["password"], "+".join(sources))
    return None


def store_credential(credential: Credential) -> None:
    """Write user and password to the keyring (service ``datalad-<name>``), for `xnat-init`.

    Raises CredentialError with a one-line reason when there is no usable keyring backend.
    """
    if credential.name == ANONYMOUS:
        raise CredentialError("the anonymous credential has nothing to store")
    if not credential.user or not credential.password:
        raise CredentialError(f"credential '{credential.name}' needs both a user and a password")
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError as exc:
        raise CredentialError("cannot store credentials: the keyring package is not installed; "
                              "pip install keyring keyrings.alt") from exc
    service = keyring_service(credential.name)
    try:
        keyring.set_password(service, "user", credential.user)
        keyring.set_password(service, "password", credential.password)
    except (KeyringError, RuntimeError, OSError) as exc:
        user_var, password_var = env_var_names(credential.name)
        raise CredentialError(
            f"cannot store credential '{credential.name}' in the keyring ({exc.__class__.__name__}); "
            "install keyrings.alt or set PYTHON_KEYRING_BACKEND, or export "
            f"{user_var} and {password_var} instead"
        ) from exc


def delete_credential(name: str) -> None:
    """Remove credential `name` from the keyring (a wrong password found by `xnat-init`)."""
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError:
        return
    for fld in ("user", "password"):
        try:
            keyring.delete_password(keyring_service(name), fld)
        except (PasswordDeleteError, KeyringError, RuntimeError, OSError):
            pass
