"""git-annex-remote-xnat: a read-only, URL-claiming git-annex special remote for XNAT.

git-annex starts this program for `get`, `fsck`, `whereis`, `info`, ... (one process per `-J`
job), so startup stays cheap: `requests` and `keyring` are imported, the credential is looked up
and the XNAT session is opened only on the first request that needs the server. PREPARE does no
network and no keyring access.

Files are located by the `xnat:` URLs registered for each key (`GETURLS key xnat:`); the remote
claims only its own server's URLs, so one dataset can track several XNAT servers. Content is never
stored or removed through git-annex: STORE and REMOVE fail with a reason. Many small files of
one resource come from one zip of it, shared by the run's -J processes (sharing.py).

Configuration (`git annex initremote NAME type=external externaltype=xnat ...`):
  url=         the XNAT server, e.g. https://xnat.example.org[/context]   (required)
  credential=  the name of a credential (see credentials.py) or `anonymous`; default: the host.
               Never a secret. A clone can override it with git config remote.NAME.xnat-credential.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from annexremote import Master, ProtocolError, RemoteError, SpecialRemote

from . import __version__
from .annexversion import GitAnnexVersionError, check_git_annex_version
from .keys import file_md5, is_vurl_key, parse_key
from .messages import error_text, one_line
from .credentials import (ANONYMOUS, CredentialMismatchError, default_credential_name,
                          how_to_provide, is_credential_name, lookup_credential)
from .urls import XnatUrlError, claims, file_name, normalize_base_url, rest_path

_MD5_STATE = "md5="  # the remote's state of a VURL key: the MD5 of its first copy

if TYPE_CHECKING:  # the real import is lazy: importing requests is a large part of a start
    from .client import XnatClient
    from .sharing import ArchiveShare

URL_PREFIX = "xnat:"
# initremote parameters that would put a secret into git-annex's branch.
SECRET_LIKE = ("user", "username", "password", "passwd", "token", "secret", "alias")
READ_ONLY = ("the XNAT special remote is read-only: add files to XNAT with XNAT's own tools, "
             "then run `datalad xnat-update` to register them")
# Extension words that only git-annex newer than the floor (10.20230407) announces.
NEW_ENOUGH_EXTENSIONS = ("UNAVAILABLERESPONSE", "TRANSFER-RETRIEVE-URL", "CHECKPRESENT-URL")


def fail(message: str) -> RemoteError:
    """A RemoteError whose text is one line: git-annex's protocol is line based."""
    return RemoteError(one_line(message))


Handler = TypeVar("Handler", bound=Callable[..., Any])


def guarded(handler: Handler) -> Handler:
    """Turn any unexpected exception into a one-line RemoteError.

    annexremote answers anything but RemoteError with ERROR and exits, which aborts the whole
    git-annex command (and every other key of a `get -J`); a failed key is the better outcome.
    """
    @functools.wraps(handler)
    def wrapper(self: "XnatRemote", *args: Any) -> Any:
        try:
            return handler(self, *args)
        except (RemoteError, ProtocolError):
            raise
        except OSError as exc:
            raise fail(f"local file error: {error_text(exc)}") from exc
        except Exception as exc:  # noqa: BLE001
            raise fail(f"unexpected {exc.__class__.__name__}: {exc} (please report this bug)") from exc
    return wrapper  # type: ignore[return-value]


class XnatRemote(SpecialRemote):
    """The special remote; see the module docstring."""

    def __init__(self, annex: Master) -> None:
        super().__init__(annex)
        self.configs = {
            "url": "XNAT server URL, e.g. https://xnat.example.org (required)",
            "credential": "credential name (DataLad env/git config/keyring) or 'anonymous'; "
                          "default: the server's host name; never a secret",
        }
        self._base_url: str | None = None
        self._credential_name: str | None = None
        self._client: XnatClient | None = None
        self._share: ArchiveShare | None = None

    # ------------------------------------------------------------ configuration

    def initremote(self) -> None:
        """Validate and store url= and credential=; no network, idempotent (also enableremote)."""
        self._check_git_annex(force=True)
        for name in SECRET_LIKE:
            if self.annex.getconfig(name):
                raise fail(f"do not pass {name}= to initremote: it would be stored in the "
                           "git-annex branch; pass credential=NAME and " + how_to_provide("NAME"))
        raw_url = self.annex.getconfig("url")
        if not raw_url:
            raise fail("url= is required, e.g. `git annex initremote xnat type=external "
                       "externaltype=xnat url=https://xnat.example.org encryption=none`")
        try:
            base_url = normalize_base_url(raw_url)
        except XnatUrlError as exc:
            raise fail(str(exc)) from exc
        encryption = self.annex.getconfig("encryption")
        if encryption not in ("", "none"):
            raise fail(f"encryption={encryption} is not supported: XNAT holds the files "
                       "unencrypted; use encryption=none")
        for name in ("chunk", "chunksize"):
            if self.annex.getconfig(name):
                raise fail(f"{name}= is not supported: XNAT files are fetched whole")
        credential = self.annex.getconfig("credential") or default_credential_name(base_url)
        if not is_credential_name(credential):
            raise fail(f"credential= takes a credential name such as {default_credential_name(base_url)} "
                       "or anonymous, not a user:password pair")
        self.annex.setconfig("url", base_url)
        self.annex.setconfig("credential", credential)

    def prepare(self) -> None:
        """Cheap: read the configuration only. The server is contacted on first use."""
        self._check_git_annex(force=False)
        raw_url = self.annex.getconfig("url")
        if not raw_url:
            raise fail("this remote has no url= setting; run `git annex enableremote NAME "
                       "url=https://xnat.example.org`")
        try:
            self._base_url = normalize_base_url(raw_url)
        except XnatUrlError as exc:
            raise fail(str(exc)) from exc
        self._credential_name = self.annex.getconfig("credential") or \
            default_credential_name(self._base_url)

    def _check_git_annex(self, force: bool) -> None:
        extensions = getattr(getattr(self.annex, "protocol", None), "extensions", []) or []
        if not force and any(word in extensions for word in NEW_ENOUGH_EXTENSIONS):
            return  # the announced extensions already prove a new enough git-annex
        try:
            check_git_annex_version()
        except GitAnnexVersionError as exc:
            raise fail(str(exc)) from exc

    @property
    def info(self) -> dict[str, str]:  # GETINFO (annexremote reads this attribute)
        return {"server": self._base_url or self.annex.getconfig("url") or "?",
                "credential": self._effective_credential_name(),
                "remote": f"git-annex-remote-xnat {__version__}, read-only"}

    @info.setter
    def info(self, value: Any) -> None:  # SpecialRemote.__init__ assigns {}
        pass

    def getavailability(self) -> str:
        return "global"

    # ------------------------------------------------------------ the server

    def _effective_credential_name(self) -> str:
        """credential= of the remote, unless this clone sets remote.<name>.xnat-credential."""
        name = self._credential_name or self.annex.getconfig("credential") or ANONYMOUS
        try:
            remote_name = self.annex.getgitremotename()
        except Exception:  # noqa: BLE001 - extension missing or not answered: keep the default
            return name
        try:
            override = subprocess.run(
                ["git", "config", "--get", f"remote.{remote_name}.xnat-credential"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            override = ""
        return override or name

    def _explain(self, exc: Exception) -> str:
        """The error text, plus how to pick another credential for this remote on auth errors."""
        from .client import AuthenticationError

        message = str(exc)
        if isinstance(exc, AuthenticationError):
            try:
                remote_name = self.annex.getgitremotename()
            except Exception:  # noqa: BLE001 - extension missing: name a placeholder
                remote_name = "NAME"
            message += (f"; this remote uses credential '{self._credential_name}', choose another "
                        f"with `git config remote.{remote_name}.xnat-credential OTHER`")
        return message

    def _client_for_use(self) -> XnatClient:
        if self._client is None:
            from .client import XnatClient

            if self._base_url is None:
                self.prepare()
            name = self._effective_credential_name()
            self._credential_name = name
            try:
                credential = lookup_credential(name, url=self._base_url)
            except CredentialMismatchError as exc:  # stored for another server: not sent
                raise fail(str(exc)) from exc
            if credential is None:
                self._client = self._client_asked_for(name)
            else:
                self._client = XnatClient(self._base_url, credential)
        return self._client

    def _client_asked_for(self, name: str) -> XnatClient:
        """No credential: ask on the terminal (once among this run's remote processes) and
        return a client logged in with what was typed; without a terminal, fail with the one
        command that stores a credential, in full for the first file of the run."""
        from .asking import ATTEMPTS, LoginRejected, ask_login, first_to_tell, open_terminal
        from .client import AuthenticationError, XnatClient
        from .credentials import keep_typed_credential

        base_url = self._base_url or ""
        git_dir = Path(self.annex.getgitdir())
        terminal = open_terminal()
        if terminal is None:
            if first_to_tell(git_dir, "no-credential"):
                raise fail(f"no credential '{name}' for {base_url}: "
                           + how_to_provide(name, base_url))
            raise fail(f"no credential '{name}' for {base_url} (see this run's first error)")
        logged_in: list[XnatClient] = []

        def check(credential) -> None:
            client = XnatClient(base_url, credential)
            try:
                client.login()
            except AuthenticationError as exc:
                client.close()
                raise LoginRejected(f"the server refused user '{credential.user}'") from exc
            logged_in.append(client)

        with terminal:
            credential = ask_login(git_dir, name, base_url, terminal,
                                   lambda: lookup_credential(name, url=base_url), check,
                                   lambda credential: keep_typed_credential(credential, base_url))
        if credential is None:
            raise fail(f"{base_url} refused the login typed {ATTEMPTS} times; "
                       + how_to_provide(name, base_url))
        return logged_in[0] if logged_in else XnatClient(base_url, credential)

    def _claimed_urls(self, key: str) -> list[str]:
        base = self._base_url or ""
        return [url for url in self.annex.geturls(key, URL_PREFIX) if claims(url, base)]

    def close(self) -> None:
        if self._share is not None:
            self._share.close()  # no content of this run's archives stays behind
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------ requests

    def claimurl(self, url: str) -> bool:
        """A pure string test: is this an xnat: file URL of our server? Never raises."""
        try:
            base = self._base_url or self.annex.getconfig("url")
            return bool(base) and claims(url, base)
        except Exception:  # noqa: BLE001 - an exception here would kill the process
            return False

    @guarded
    def checkurl(self, url: str) -> list[dict[str, Any]]:
        from .client import XnatError

        try:
            status = self._client_for_use().file_status(rest_path(url, self._base_url))
        except (XnatError, XnatUrlError) as exc:
            raise fail(self._explain(exc)) from exc
        if status.exists is None:
            raise fail(status.detail or f"cannot tell whether {url} exists")
        if not status.exists:
            raise fail(f"{url} does not exist on {self._base_url} (HTTP 404), or this credential "
                       "cannot see it")
        return [{"size": status.size if status.size is not None else "UNKNOWN",
                 "filename": file_name(url)}]

    @guarded
    def transfer_retrieve(self, key: str, filename: str) -> None:
        from .client import NotFoundError, XnatError

        size, md5 = parse_key(key)
        if md5 is not None and self._archives().take(key, filename):
            if size is not None:
                self.annex.progress(size)
            return
        urls = self._claimed_urls(key)
        if not urls:
            raise fail(f"no xnat: URL of {self._base_url} is registered for {key}; "
                       "run `datalad xnat-update` to register the files")
        first_copy = False
        if md5 is None and is_vurl_key(key):
            md5 = self._first_copy_md5(key)
            first_copy = md5 is None
        if md5 is not None and self._archives().retrieve(key, urls[0], filename,
                                                         self._client_for_use):
            if size is not None:
                self.annex.progress(size)
            return
        client = self._client_for_use()
        errors = []
        for url in urls:
            try:
                client.download(rest_path(url, self._base_url), filename, size=size, md5=md5,
                                progress=self.annex.progress)
                if first_copy:
                    self.annex.setstate(key, _MD5_STATE + file_md5(filename))
                return
            except NotFoundError as exc:  # another registered URL may still have it
                errors.append(str(exc))
            except (XnatError, XnatUrlError) as exc:
                raise fail(self._explain(exc)) from exc
        raise fail(errors[0] if len(errors) == 1 else "; ".join(errors))

    def _archives(self) -> "ArchiveShare":
        """The run's shared archives (sharing.py), set up at the first transfer: reading
        datalad.xnat.fetch-archives costs a git process, which PREPARE must not."""
        if self._share is None:
            from .sharing import ArchiveShare, configured_mode

            try:
                mode = configured_mode()
            except ValueError as exc:
                raise fail(str(exc)) from exc
            self._share = ArchiveShare(self.annex.getgitdir(), self._base_url or "", mode,
                                       debug=lambda text: self.annex.debug(one_line(text)))
        return self._share

    def _first_copy_md5(self, key: str) -> str | None:
        """The MD5 of a VURL key's first download, recorded in the remote's state.

        git-annex verifies a VURL key by the checksum it records when it downloads the URL
        itself, not when a special remote that claims the URL does; so this remote records the
        MD5 of the first copy it fetched (git-annex's branch, SETSTATE) and holds every later
        copy to it, in any clone.
        """
        state = self.annex.getstate(key) or ""
        return state[len(_MD5_STATE):] if state.startswith(_MD5_STATE) else None

    @guarded
    def checkpresent(self, key: str) -> bool:
        """True on proof (a 200 HEAD of the right size), False on 404, RemoteError (unknown)
        otherwise, a file of another size included: git-annex must not forget a copy on doubt."""
        urls = self._claimed_urls(key)
        if not urls:
            return False
        size, _ = parse_key(key)
        client = self._client_for_use()
        unknown = []
        for url in urls:
            try:
                status = client.file_status(rest_path(url, self._base_url))
            except XnatUrlError as exc:
                unknown.append(str(exc))
                continue
            if status.exists and (size is None or status.size is None or status.size == size):
                return True
            if status.exists:  # neither proof nor a 404: the file was replaced on the server
                unknown.append(f"{url} has {status.size} bytes on XNAT but {key} has {size}: the "
                               "file changed on the server; run `datalad xnat-update`")
            elif status.exists is None:
                unknown.append(status.detail)
        if unknown:
            raise fail(unknown[0])
        return False

    def transfer_store(self, key: str, filename: str) -> None:
        raise fail(READ_ONLY)

    def remove(self, key: str) -> None:
        raise fail(READ_ONLY + "; nothing was removed from XNAT")


def main() -> None:
    """Console script `git-annex-remote-xnat`: speak the protocol on the real stdout only."""
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must never corrupt the protocol
    master = Master(protocol_out)
    remote = XnatRemote(master)
    master.LinkRemote(remote)
    try:
        master.Listen(sys.stdin)
    finally:
        remote.close()


if __name__ == "__main__":
    main()
