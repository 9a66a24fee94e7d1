"""What the three commands share: parameters, credential resolution (with the terminal prompt of
xnat-init), and logging in with errors turned into one actionable line."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from datalad.distribution.dataset import EnsureDataset
from datalad.support.constraints import EnsureNone, EnsureStr
from datalad.support.param import Parameter

from git_annex_remote_xnat.credentials import (
    ANONYMOUS,
    Credential,
    CredentialMismatchError,
    default_credential_name,
    how_to_provide,
    lookup_credential,
)

lgr = logging.getLogger("datalad.xnat")


def dataset_param(what: str) -> Parameter:
    """-d/--dataset: the dataset a command works on (`what` it does to it)."""
    return Parameter(
        args=("-d", "--dataset"), metavar="DATASET",
        doc=f"dataset to {what} (default: the one at the current directory)",
        constraints=EnsureDataset() | EnsureNone())


def filter_params(for_update: bool = False) -> dict[str, Parameter]:
    """-p -s -e -c --credential, worded for init/query or for update (overrides)."""
    override = " Overrides the value xnat-init stored." if for_update else ""
    return dict(
        project=Parameter(
            args=("-p", "--project"), metavar="PROJECT",
            doc="XNAT project ID." + override,
            constraints=EnsureStr() | EnsureNone()),
        subject=Parameter(
            args=("-s", "--subject"), metavar="SUBJECT", action="append",
            doc="only this subject (ID or label, or a shell-style pattern such as 'SUBJ0*'); "
                "repeat for several." + override,
            constraints=EnsureStr() | EnsureNone()),
        experiment=Parameter(
            args=("-e", "--experiment"), metavar="EXPERIMENT", action="append",
            doc="only this experiment/session (ID or label, or a pattern such as '*_MR1'); "
                "repeat for several." + override,
            constraints=EnsureStr() | EnsureNone()),
        collection=Parameter(
            args=("-c", "--collection"), metavar="LABEL", action="append",
            doc="only resources with this label (DICOM, NIFTI, ...); repeat for several."
                + override,
            constraints=EnsureStr() | EnsureNone()),
        scan_type=Parameter(
            args=("--scan-type",), metavar="PATTERN", action="append",
            doc="only scans whose type matches this shell-style pattern ('T1*', case-"
                "sensitive); only scan files are then tracked; repeat for several." + override,
            constraints=EnsureStr() | EnsureNone()),
        quality=Parameter(
            args=("--quality",), metavar="QUALITY", action="append",
            doc="only scans of this quality ('usable'; a pattern too); only scan files are "
                "then tracked; repeat for several." + override,
            constraints=EnsureStr() | EnsureNone()),
        credential=Parameter(
            args=("--credential",), metavar="NAME",
            doc="name of the credential to use (looked up in DATALAD_CREDENTIAL_<NAME>_USER/"
                "_PASSWORD, git config datalad.credential.<name>.user/.password, and the "
                "keyring service datalad-<name>), or 'anonymous' for guest access. Default: "
                "the server's host name." + override,
            constraints=EnsureStr() | EnsureNone()),
    )


def warn_unmatched_collections(collections: list[str], labels: set[str]) -> list[str]:
    """Warn about the -c/--collection labels that matched none of the resource `labels` a
    listing saw, and return them: a mistyped label otherwise registers or lists nothing and
    says ok."""
    unknown = [c for c in collections if c not in labels]
    if unknown:
        seen = sorted(labels)
        lgr.warning("-c/--collection %s matched no resource; the resources listed have the "
                    "labels: %s (labels are case-sensitive)", ", ".join(unknown),
                    (", ".join(seen[:20]) + (" ..." if len(seen) > 20 else "")) or "none")
    return unknown


def scan_selected(record, scan_types: list[str], qualities: list[str]) -> bool:
    """Whether a listed file (a FileRecord) is in the --scan-type/--quality selection: every
    file when neither is given; else only scan files whose type and quality match."""
    from git_annex_remote_xnat.client.listings import matches

    if not scan_types and not qualities:
        return True
    return record.level == "scan" and (not scan_types or matches(scan_types, record.scan_type)) \
        and (not qualities or matches(qualities, record.quality))


def is_terminal() -> bool:
    """Whether a person can answer a prompt (DataLad's UI knows about -f json, tests, ...)."""
    from datalad.ui import ui

    try:
        return bool(ui.is_interactive) and os.isatty(0)
    except Exception:  # noqa: BLE001 - no UI at all
        return False


def prompt_credential(name: str, url: str, previous_user: str | None = None) -> Credential:
    """Ask for user and password in the terminal (the password hidden)."""
    from datalad.ui import ui

    user = ui.question(f"User name (or alias token) for {url}", title=f"Credential '{name}'",
                       default=previous_user)
    # no "repeat": a typo shows at once, because the login is tried before anything is stored
    password = ui.question(f"Password (or token secret) for {user}", hidden=True, repeat=False)
    return Credential(name, user, password, "prompt")


@dataclass
class ResolvedCredential:
    credential: Credential | None
    prompted: bool
    message: str = ""


def resolve_credential(name: str | None, url: str, repo: str | None, *, may_prompt: bool,
                       force_ask: bool = False) -> ResolvedCredential:
    """The credential to log in with; may prompt (xnat-init in a terminal only).

    Returns a ResolvedCredential whose credential is None with a message saying how to provide
    one when none is found and no prompt is possible.
    """
    name = name or default_credential_name(url)
    if name == ANONYMOUS:
        return ResolvedCredential(lookup_credential(ANONYMOUS), False)
    try:
        found = None if force_ask else lookup_credential(name, repo=repo, url=url)
    except CredentialMismatchError as exc:  # stored for another server: say so, never prompt
        return ResolvedCredential(None, False, str(exc))
    if found is not None:
        return ResolvedCredential(found, False)
    if may_prompt and is_terminal():
        return ResolvedCredential(prompt_credential(name, url), True)
    if force_ask:
        return ResolvedCredential(None, False, "datalad.credentials.force-ask is set, but there "
                                  "is no terminal to ask for the user name and password in; run "
                                  "xnat-init in a terminal, or " + how_to_provide(name, url))
    return ResolvedCredential(None, False, f"no credential '{name}' for {url}: "
                              + how_to_provide(name, url))


@dataclass
class LoggedIn:
    """A client that has logged in (None, with `message`, when that failed), the credential it
    used, and whether that credential was typed in (then the caller stores it once it is
    satisfied with it)."""

    client: object | None
    credential: Credential | None
    prompted: bool
    message: str = ""


def log_in(name: str | None, url: str, repo: str | None, *, may_prompt: bool,
           force_ask: bool = False, attempts: int = 3, retries: int = 2,
           pool_size: int = 16) -> LoggedIn:
    """Log in to `url` with credential `name` (its default: the server's), asking in a terminal
    when none is found and `may_prompt`; a typed password the server refuses is asked again,
    `attempts` times in all. The one login of every command; `retries` and `pool_size` are
    the client's."""
    from git_annex_remote_xnat.client import AuthenticationError, XnatClient, XnatError
    from git_annex_remote_xnat.messages import one_line

    resolved = resolve_credential(name, url, repo, may_prompt=may_prompt, force_ask=force_ask)
    credential = resolved.credential
    if credential is None:
        return LoggedIn(None, None, False, resolved.message)
    for attempt in range(attempts if resolved.prompted else 1):
        client = XnatClient(url, credential, retries=retries, pool_size=pool_size)
        try:
            client.login()
            return LoggedIn(client, credential, resolved.prompted)
        except AuthenticationError as exc:
            client.close()
            if resolved.prompted and attempt + 1 < attempts:
                lgr.warning("%s", one_line(exc))
                credential = prompt_credential(credential.name, url, credential.user)
                continue
            return LoggedIn(None, credential, resolved.prompted, one_line(exc))
        except XnatError as exc:
            client.close()
            return LoggedIn(None, credential, resolved.prompted, one_line(exc))
    raise AssertionError("unreachable")


def force_ask_requested(ds_config=None) -> bool:
    """`datalad -c datalad.credentials.force-ask=1 ...` (the -c overrides live in the global
    ConfigManager; a dataset's own config may set it too)."""
    from datalad import cfg

    for config in (cfg, ds_config):
        if config is None:
            continue
        try:
            if config.getbool("datalad.credentials", "force-ask", default=False):
                return True
        except (ValueError, TypeError):
            continue
    return False

