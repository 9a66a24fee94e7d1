"""The dataset's XNAT configuration: `[datalad "xnat.<name>"]` in `.datalad/config`, the provider
file, the name of the special remote, and the `datalad.xnat.*` settings of a dataset.

The one place that reads configuration: the committed `.datalad/config` with `git config -f`
(read_config, dataset_id: what the dataset itself says, in any clone), and everything a user may
set (git config of the dataset or user, `datalad -c`) through DataLad's ConfigManager
(DatasetSettings).

Why `.datalad/config`: it is committed, so a clone knows which server, project and layout the
dataset tracks and `datalad xnat-update` works there too. It never holds a secret: only the
*name* of a credential, looked up at run time (git_annex_remote_xnat.credentials).

Remote names: the instance called `default` gets the special remote `xnat` (what users type:
`git annex get --from xnat`); any other instance `<name>` gets `xnat-<name>`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from git_annex_remote_xnat.urls import server_id

DEFAULT_NAME = "default"
CONFIG_FILE = ".datalad/config"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ConfigError(ValueError):
    """The dataset has no (or an unusable) XNAT configuration; the message says what to run."""


def check_instance_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ConfigError(f"instance name {name!r} must be letters, digits, '-' or '_' "
                          "(it becomes part of a git config section and a remote name)")
    return name


def remote_name(name: str) -> str:
    """The git-annex special remote of an instance: `xnat` for `default`, else `xnat-<name>`."""
    return "xnat" if name == DEFAULT_NAME else f"xnat-{name}"


def provider_path(name: str) -> str:
    return f".datalad/providers/xnat-{name}.cfg"


def section(name: str) -> str:
    return f"datalad.xnat.{name}"


@dataclass
class XnatConfig:
    """One tracked XNAT instance, as `xnat-init` wrote it."""

    name: str
    url: str
    project: str
    pathfmt: str
    credential: str
    subjects: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    scan_types: list[str] = field(default_factory=list)   # patterns (--scan-type)
    qualities: list[str] = field(default_factory=list)    # patterns (--quality)

    @property
    def remote(self) -> str:
        return remote_name(self.name)

    def as_items(self) -> list[tuple[str, str]]:
        """(key, value) pairs in file order; `subject`, `experiment`, `collection`,
        `scan-type` and `quality` repeat."""
        items = [("url", self.url), ("project", self.project)]
        items += [("subject", s) for s in self.subjects]
        items += [("experiment", e) for e in self.experiments]
        items += [("collection", c) for c in self.collections]
        items += [("scan-type", t) for t in self.scan_types]
        items += [("quality", q) for q in self.qualities]
        items += [("pathfmt", self.pathfmt), ("credential-name", self.credential),
                  ("remote", self.remote)]
        return items


def _git_config(config_file: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "config", "-f", str(config_file), *args], capture_output=True,
                          text=True)
    if check and proc.returncode not in (0, 1):
        raise ConfigError(f"git config -f {config_file} {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def read_config(dataset_path: Path, name: str) -> XnatConfig | None:
    """The instance's configuration from `.datalad/config`, or None when there is none."""
    config_file = Path(dataset_path) / CONFIG_FILE
    if not config_file.exists():
        return None
    prefix = section(name) + "."
    proc = _git_config(config_file, "-z", "--get-regexp", "^" + re.escape(prefix))
    values: dict[str, list[str]] = {}
    for entry in proc.stdout.split("\0"):
        if not entry:
            continue
        key, _, value = entry.partition("\n")
        values.setdefault(key[len(prefix):].lower(), []).append(value)
    if "url" not in values:
        return None

    def one(key: str) -> str | None:
        found = values.get(key)
        return found[-1] if found else None

    from .layout import DEFAULT_PATHFMT

    pathfmt = one("pathfmt")
    def every(key: str) -> list[str]:
        return [value for value in values.get(key, []) if value]

    collections = every("collection")
    if pathfmt is None and one("path"):
        pathfmt, collections = _adopted_from_datalad_xnat(one("path") or "", collections)
    return XnatConfig(name=name, url=one("url") or "", project=one("project") or "",
                      pathfmt=pathfmt or DEFAULT_PATHFMT,
                      credential=one("credential-name") or "",
                      subjects=every("subject"), experiments=every("experiment"),
                      collections=collections, scan_types=every("scan-type"),
                      qualities=every("quality"))


def _adopted_from_datalad_xnat(path: str, collections: list[str]) -> tuple[str, list[str]]:
    """The pathfmt and collections of a dataset made by datalad-xnat 0.2.1.

    It stored its layout as `path`, where `{subject}` and `{session}` were filled with accession
    IDs, and several collections blank-separated in one value. Read that way, an update keeps
    its files where they are and puts new ones in the same layout instead of starting a
    second tree beside it.
    """
    pathfmt = path.replace("{subject}", "{subject_id}").replace("{session}", "{session_id}")
    if not pathfmt.endswith("/"):
        pathfmt += "/"
    return pathfmt, [label for value in collections for label in value.split()]


def dataset_id(dataset_path: Path) -> str:
    """The DataLad dataset ID that `.datalad/config` records ('' when there is none)."""
    config_file = Path(dataset_path) / CONFIG_FILE
    if not config_file.exists():
        return ""
    return _git_config(config_file, "--get", "datalad.dataset.id").stdout.strip()


@dataclass(frozen=True)
class DatasetSettings:
    """What a user set for xnat-update in one dataset (its git config, the user's, `datalad
    -c`), read once per dataset and run."""

    fetch_method: str            # 'direct' (default) or 'annex': `git annex get` for content
    register_method: str         # 'fast-import' (default) or 'batch': `git annex registerurl`
    fetch_processes: str | None  # helper processes for downloads; None: chosen by size
    fetch_archives: str          # 'auto' (default), 'always', 'never': one zip per resource
    annex_uuid: str              # the repository's own git-annex UUID ('' before annex init)
    git_config: dict[str, str]   # the core.* and annex.* settings, names in lower case

    @classmethod
    def read(cls, dataset_path: Path) -> "DatasetSettings":
        from datalad.distribution.dataset import Dataset

        config = Dataset(str(dataset_path)).config
        config.reload()

        def one(name: str) -> str | None:
            value = config.get(name)
            if isinstance(value, tuple):  # set several times: the last one counts, as in git
                value = value[-1]
            return None if value is None else str(value)

        register = one("datalad.xnat.register-method")
        return cls(fetch_method="annex" if one("datalad.xnat.fetch-method") == "annex"
                   else "direct",
                   register_method="batch" if register == "batch" else "fast-import",
                   fetch_processes=one("datalad.xnat.fetch-processes"),
                   fetch_archives=one("datalad.xnat.fetch-archives") or "auto",
                   annex_uuid=one("annex.uuid") or "",
                   git_config={name: one(name) or "" for name in config.keys()
                               if name.startswith(("core.", "annex."))})


def config_file_content(base: bytes | None, config: XnatConfig) -> bytes:
    """`.datalad/config` content with the instance's section (re)written, other sections kept.

    Computed on a scratch copy so the caller can commit it without touching the work tree first.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xnat-config-") as scratch:
        path = Path(scratch) / "config"
        path.write_bytes(base or b"")
        _git_config(path, "--remove-section", section(config.name), check=False)
        for key, value in config.as_items():
            _git_config(path, "--add", f"{section(config.name)}.{key}", value)
        return path.read_bytes()


def provider_file_content(config: XnatConfig) -> bytes:
    """A DataLad provider file: `datalad download-url` of this server's REST URLs finds the
    same credential (http_basic_auth) as the special remote does."""
    server = server_id(config.url)
    url_re = "^https?://" + re.escape(server) + "/.*"
    if config.credential == "anonymous":
        return (
            f"# Written by datalad xnat-init: {server} is read anonymously (guest access).\n"
            f"[provider:xnat-{config.name}]\n"
            f"url_re = {url_re}\n"
            f"authentication_type = none\n"
        ).encode()
    return (
        f"# Written by datalad xnat-init: where the credential for {server} comes from.\n"
        f"# It names the credential only; the secret stays in the keyring or environment.\n"
        f"[provider:xnat-{config.name}]\n"
        f"url_re = {url_re}\n"
        f"authentication_type = http_basic_auth\n"
        f"credential = {config.credential}\n"
        f"\n"
        f"[credential:{config.credential}]\n"
        f"type = user_password\n"
    ).encode()
