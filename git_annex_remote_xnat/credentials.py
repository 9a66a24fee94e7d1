"""The one credential lookup shared by the special remote and the DataLad commands.

Names and places follow DataLad, so users keep the credentials they already have:

* the special name ``anonymous``: no authentication (an open XNAT site's guest account);
* environment variables ``DATALAD_CREDENTIAL_<NAME>_USER`` and ``..._PASSWORD`` (NAME upper-cased,
  every character other than A-Z and 0-9 replaced by ``_``);
* git config ``datalad.credential.<name>.user`` and ``.password`` (read with a single ``git config``
  call in the repository at hand, so a per-dataset or global setting both work);
* the keyring, service ``datalad-<name>``, fields ``user`` and ``password`` (``secret`` is accepted
  for the password, as datalad-next stores it), and ``url``, the server it was stored for;
* then ``~/.netrc`` (or the file ``$NETRC`` names), as xnatpy, xnatutils, curl and requests users
  keep their logins: the ``machine`` of the server's host, when the caller says which server.

Each field is taken from the first place that has it, so the datalad-next layout (user name in git
config, secret in the keyring) works too. Nothing here ever prompts: the special remote has no
terminal, and ``-J8`` would prompt eight times. ``keyring`` is imported only when env and git config
do not already answer, because importing it and choosing a backend is slow, and the special
remote starts once per `-J` job.

A credential goes only to its server. A clone's ``.datalad/config`` and git-annex branch come from
whoever made the dataset, and they name both the server and the credential: a keyring credential
stored with the server's URL is refused (CredentialMismatchError) to any other scheme, host or
port, and a netrc entry is bound by its machine name. Credentials without a stored server (env,
git config, keyring entries of older versions) are used as before.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .urls import masked_url

ANONYMOUS = "anonymous"
FIELDS = ("user", "password")
URL_FIELD = "url"           # keyring field: the server a stored credential belongs to
NETRC_ENV = "NETRC"         # another netrc file, as curl's and requests' users set it
DEFAULT_PORTS = {"http": 80, "https": 443}

lgr = logging.getLogger("datalad.xnat.credentials")  # shown by `datalad -l debug`

# host:port as a credential name (xnat.example.org:8443, 127.0.0.1:50123, [::1]:8080): a colon
# otherwise suggests user:password, which credential= would store in git-annex's branch.
_HOST_PORT = re.compile(r"(?:localhost|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
                        r":[0-9]{1,5}")


class CredentialError(Exception):
    """A credential cannot be stored (no usable keyring, anonymous, incomplete), or may not be
    used for the server at hand (CredentialMismatchError)."""


class CredentialMismatchError(CredentialError):
    """The keyring holds credential `name` for another server than the one asking for it.

    Raised instead of sending the password: the URL and credential name a dataset's
    configuration pairs come from whoever made the dataset. The message is one line that says
    which server asked, for which server the credential was stored, and what to do.
    """

    def __init__(self, name: str, url: str, stored_url: str) -> None:
        self.name, self.url, self.stored_url = name, url, stored_url
        asked = _server_url(url) or masked_url(url)
        super().__init__(
            f"{asked} asked for credential '{name}', but it was stored for {stored_url} and is "
            "sent to no other server; if the server moved, store the login for it again "
            "(`datalad xnat-credential --name INSTANCE` in the dataset), otherwise use another "
            "credential name (--credential NAME, or `git config "
            "remote.REMOTE.xnat-credential NAME` for the special remote)")


@dataclass(frozen=True)
class Credential:
    """A named user/password pair (an XNAT alias token works as one), or the anonymous one.

    `source` says where the values came from (``anonymous``, ``env``, ``git config``, ``keyring``,
    ``netrc`` or a ``+``-joined mix), for messages; the password never appears in `repr`. `url`
    is the server the keyring stored it for (None: not bound to one, or not from the keyring).
    """

    name: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = ""
    url: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS or (not self.user and not self.password)


def anonymous_credential() -> Credential:
    return Credential(ANONYMOUS, None, None, ANONYMOUS)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the port spelled out only when it is not the scheme's
    default: what decides whether two URLs are one server. Raises ValueError (a bad port)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, host, port


def _host_port(host: str, port: int | None) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_url(url: str) -> str | None:
    """`url` as stored with a credential and shown in messages: scheme, host, a port that is
    not the default, the context path; never a user name, password, query or fragment."""
    try:
        scheme, host, port = _origin(url)
    except ValueError:
        return None
    if not scheme or not host:
        return None
    return f"{scheme}://{_host_port(host, port)}{urlsplit(url.strip()).path.rstrip('/')}"


def _same_server(url: str, other: str) -> bool:
    try:
        mine, theirs = _origin(url), _origin(other)
    except ValueError:
        return False
    return bool(mine[1]) and mine == theirs


def default_credential_name(url: str) -> str:
    """The server's host, with its port when that is not the scheme's default
    (``xnat.example.org``, ``xnat.example.org:8443``).

    DataLad names a credential after the host; the port is added so that two XNAT servers on one
    host (a test and a production instance, say) never share a login by accident. Datasets keep
    the name they were initialised with (``credential-name`` in ``.datalad/config``).
    """
    try:
        _, host, port = _origin(url)
    except ValueError as exc:
        raise ValueError(f"cannot derive a credential name from {masked_url(url)!r}: its port "
                         "is not a number") from exc
    if not host:
        raise ValueError(f"cannot derive a credential name from {masked_url(url)!r}: it has no "
                         "host part")
    return _host_port(host, port)


def is_credential_name(name: str) -> bool:
    """Whether `name` can be a credential's name: no white space, and a colon only in
    ``host:port`` (a default name). A ``user:password`` pair given where a name belongs would
    otherwise be stored in git-annex's branch, in every clone."""
    if not name or any(c.isspace() for c in name):
        return False
    return ":" not in name or _HOST_PORT.fullmatch(name) is not None


def env_var_names(name: str) -> tuple[str, str]:
    """The two environment variables DataLad reads for credential `name`."""
    token = re.sub(r"[^A-Z0-9]", "_", name.upper())
    return f"DATALAD_CREDENTIAL_{token}_USER", f"DATALAD_CREDENTIAL_{token}_PASSWORD"


def keyring_service(name: str) -> str:
    return f"datalad-{name}"


def how_to_provide(name: str, url: str | None = None) -> str:
    """One line naming the concrete ways to supply credential `name` (for error messages).

    With the server's `url`, the ~/.netrc machine too, and why the netrc file was skipped if it
    could not be read: a user whose only login is a malformed ~/.netrc learns it here.
    """
    user_var, password_var = env_var_names(name)
    netrc_way = problem = ""
    if url is not None:
        try:
            host = _origin(url)[1]
        except ValueError:
            host = ""
        if host:
            netrc_way = (f", or put `machine {host} login USER password "
                         f"PASSWORD` in {_netrc_display()}")
            problem = _read_netrc()[1] or ""
    return (
        f"provide credential '{name}': run `datalad xnat-credential` in the dataset (it asks "
        "for your XNAT login, checks it and stores it), or "
        f"`keyring set {keyring_service(name)} user` and `keyring set {keyring_service(name)} "
        f"password`, or export {user_var} and {password_var}, or set git config "
        f"datalad.credential.{name}.user/.password{netrc_way}; `--credential anonymous` reads "
        "an open site as its guest" + (f" ({problem}, so it was skipped)" if problem else "")
    )


def _from_env(name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
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


def _from_keyring(name: str, wanted: list[str]) -> tuple[dict[str, str], str | None]:
    """The `wanted` fields of service ``datalad-<name>``, and the server URL stored with them
    (read only when a field was found: one more lookup, for the check that binds it)."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:
        return {}, None
    found: dict[str, str] = {}
    stored_url = None
    service = keyring_service(name)
    candidates = {"user": ("user",), "password": ("password", "secret")}
    try:
        for fld in wanted:
            for keyring_field in candidates[fld]:
                value = keyring.get_password(service, keyring_field)
                if value:
                    found[fld] = value
                    break
        if found:
            stored_url = keyring.get_password(service, URL_FIELD) or None
    except (KeyringError, RuntimeError, OSError, ValueError):
        # No usable backend (headless machine without keyrings.alt): the other sources decide.
        pass
    return found, stored_url


def netrc_path() -> Path:
    """The netrc file: ``$NETRC`` when set (as curl's and requests' users set it; Python's netrc
    module itself reads only ~/.netrc), else ``~/.netrc``."""
    return Path(os.environ.get(NETRC_ENV) or os.path.expanduser("~/.netrc"))


def _netrc_display() -> str:
    return str(netrc_path()) if os.environ.get(NETRC_ENV) else "~/.netrc"


def _read_netrc() -> tuple[dict[str, tuple[str, str]], str | None]:
    """{machine (lower-cased): (login, password)} of the netrc file, and a one-line problem.

    A missing file is no problem. A malformed or unreadable one is skipped, never an error: it
    may serve other programs, and the other places may still answer. The problem names the line
    only, never the token Python's parser quotes, which may be a misplaced password. The file's
    permissions are not checked (as requests, xnatpy and curl do not); ``default`` is ignored.
    """
    path = netrc_path()
    if not os.path.lexists(path):
        return {}, None
    import netrc

    try:
        parsed = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        problem = f"{_netrc_display()} is malformed (line {exc.lineno})"
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            exc.__class__.__name__
        problem = f"{_netrc_display()} cannot be read ({reason})"
    else:
        return {machine.lower(): (login or "", password or "")
                for machine, (login, _account, password) in parsed.hosts.items()}, None
    lgr.debug("%s; skipped", problem)
    return {}, problem


def _from_netrc(url: str) -> dict[str, str]:
    """Login and password of the netrc machine of `url`'s host.

    netrc has no ports: a ``machine host`` line serves every port of the host. A ``machine
    host:port`` line (xnatpy reads one, it looks the URL's netloc up) is preferred for its port.
    """
    try:
        host = _origin(url)[1]
        port = urlsplit(url.strip()).port
    except ValueError:
        return {}
    if not host:
        return {}
    machines, _problem = _read_netrc()
    for machine in ([_host_port(host, port)] if port is not None else []) + [_host_port(host, None)]:
        if machine in machines:
            login, password = machines[machine]
            return {fld: value for fld, value in (("user", login), ("password", password)) if value}
    return {}


def lookup_credential(name: str, repo: str | Path | None = None, *,
                      url: str | None = None) -> Credential | None:
    """The credential called `name` for the server `url`, or None when no place has both a user
    and a password.

    `repo` is the repository whose git config is consulted (the current directory when None).
    `url`, the server the credential is for, decides the ~/.netrc machine (its host; consulted
    last and only with a URL) and is checked against the server a keyring credential was stored
    for: CredentialMismatchError when scheme, host or port differ, so that a dataset naming
    another server never gets this server's password. Callers should always pass it.
    """
    if name == ANONYMOUS:
        return anonymous_credential()
    values: dict[str, str] = {}
    sources: list[str] = []
    stored_url: str | None = None

    def complete() -> bool:
        return all(fld in values for fld in FIELDS)

    def take(source: str, found: dict[str, str]) -> bool:
        new = {fld: value for fld, value in found.items() if fld not in values}
        if new:
            values.update(new)
            sources.append(source)
        return bool(new)

    take("env", _from_env(name))
    if not complete():
        take("git config", _from_git_config(name, repo))
    if not complete():
        found, bound_to = _from_keyring(name, [f for f in FIELDS if f not in values])
        if take("keyring", found) and bound_to:
            if url is not None and not _same_server(url, bound_to):
                raise CredentialMismatchError(name, url, bound_to)
            stored_url = bound_to
    if not complete() and url is not None:
        entry = _from_netrc(url)
        # a netrc login completes a user name found elsewhere only when it is that user's
        if entry.keys() == set(FIELDS) and (not values or values == {"user": entry["user"]}):
            take("netrc", entry)
    if complete():
        return Credential(name, values["user"], values["password"], "+".join(sources),
                          url=stored_url)
    return None


def store_credential(credential: Credential, url: str | None = None) -> None:
    """Write user and password to the keyring (service ``datalad-<name>``), for `xnat-init`,
    with the server `url` they were checked against (field ``url``, as datalad-next keeps a
    credential's realm): lookup_credential then refuses them to any other server.

    Without `url` a server stored before is removed: it would bind the new password to a server
    nobody checked it against. Raises CredentialError with a one-line reason when there is no
    usable keyring backend.
    """
    if credential.name == ANONYMOUS:
        raise CredentialError("the anonymous credential has nothing to store")
    if not credential.user or not credential.password:
        raise CredentialError(f"credential '{credential.name}' needs both a user and a password")
    server = None
    if url is not None:
        server = _server_url(url)
        if server is None:
            raise CredentialError(f"cannot store credential '{credential.name}' for "
                                  f"{masked_url(url)!r}: not a server URL")
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError as exc:
        raise CredentialError("cannot store credentials: the keyring package is not installed; "
                              "pip install keyring keyrings.alt") from exc
    service = keyring_service(credential.name)
    try:
        keyring.set_password(service, "user", credential.user)
        keyring.set_password(service, "password", credential.password)
        if server is not None:
            keyring.set_password(service, URL_FIELD, server)
        else:
            try:
                keyring.delete_password(service, URL_FIELD)
            except PasswordDeleteError:
                pass
    except (KeyringError, RuntimeError, OSError) as exc:
        user_var, password_var = env_var_names(credential.name)
        raise CredentialError(
            f"cannot store credential '{credential.name}' in the keyring ({exc.__class__.__name__}); "
            "install keyrings.alt or set PYTHON_KEYRING_BACKEND, or export "
            f"{user_var} and {password_var} instead"
        ) from exc


def keep_typed_credential(credential: Credential, url: str) -> str | None:
    """Store a credential that was typed in and worked, bound to the server `url` it worked
    for; the warning to show when it cannot be stored (None when it was): the login it was
    typed for goes on, and the next one asks again."""
    try:
        store_credential(credential, url=url)
    except CredentialError as exc:
        return f"credential not stored, so it is asked for again next time: {exc}"
    return None


def delete_credential(name: str) -> None:
    """Remove credential `name` from the keyring (a wrong password found by `xnat-init`), the
    server it was stored for too."""
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError:
        return
    for fld in ("user", "password", URL_FIELD):
        try:
            keyring.delete_password(keyring_service(name), fld)
        except (PasswordDeleteError, KeyringError, RuntimeError, OSError):
            pass
