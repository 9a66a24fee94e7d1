"""The instance's git-annex special remote in a dataset: set up by xnat-init, and by
xnat-update in each subdataset it creates, so `datalad get` works in any of them.

Its parameters never hold a secret: the server URL and the *name* of a credential
(git_annex_remote_xnat.credentials looks the secret up at run time). `autoenable=true`: a clone
enables the remote by itself.
"""

from __future__ import annotations

from pathlib import Path

from git_annex_remote_xnat.messages import one_line

from .config import ConfigError, XnatConfig


def special_remote_params(config: XnatConfig) -> list[str]:
    return ["type=external", "externaltype=xnat", f"url={config.url}",
            f"credential={config.credential}", "encryption=none", "autoenable=true"]


def remote_uuid(dataset_path: Path, name: str) -> str | None:
    """The UUID of the special remote `name` where this repository has it enabled."""
    from datalad.support.annexrepo import AnnexRepo

    return AnnexRepo(str(dataset_path), create=False).config.get(f"remote.{name}.annex-uuid") \
        or None


def ensure_special_remote(dataset_path: Path, config: XnatConfig) -> str:
    """initremote (or enableremote with the new settings); returns the remote's UUID."""
    from datalad.runner.exception import CommandError
    from datalad.support.annexrepo import AnnexRepo

    repo = AnnexRepo(str(dataset_path), create=False)
    name = config.remote
    known = any(info.get("name") == name for info in repo.get_special_remotes().values())
    verb = "enableremote" if known else "initremote"
    try:
        if known:
            repo.enable_remote(name, special_remote_params(config))
        else:
            repo.init_remote(name, special_remote_params(config))
    except CommandError as exc:
        raise ConfigError(f"git annex {verb} {name} failed: {one_line(exc.stderr or exc)} "
                          "(is git-annex-remote-xnat on PATH?)") from None
    uuid = remote_uuid(dataset_path, name)
    if not uuid:
        raise ConfigError(f"git annex {verb} {name} left no remote.{name}.annex-uuid")
    return uuid
