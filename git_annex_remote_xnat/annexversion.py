"""The git-annex version floor, checked in one place.

git-annex before 10.20230407 accepts `registerurl` for a URL claimed by an external remote without
recording that the remote holds the key, so `git annex get` then says "not available". Every tool of
this project refuses such a git-annex up front rather than failing later in a confusing way.
"""

from __future__ import annotations

import re
import subprocess

MIN_GIT_ANNEX_VERSION = "10.20230407"


class GitAnnexVersionError(RuntimeError):
    """git-annex is missing or older than MIN_GIT_ANNEX_VERSION."""


def parse_version(text: str) -> tuple[int, ...]:
    """`10.20261026-g351f69fa…` -> (10, 20261026)."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"not a git-annex version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def installed_version() -> str:
    """The version of the git-annex found on PATH; GitAnnexVersionError when there is none."""
    try:
        out = subprocess.run(
            ["git-annex", "version", "--raw"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise GitAnnexVersionError(
            "git-annex is not installed or not on PATH; install it, e.g. `pip install git-annex`"
        ) from exc
    return out.strip()


def check_git_annex_version(version: str | None = None) -> str:
    """Return the git-annex version, or raise GitAnnexVersionError with a one-line reason."""
    version = installed_version() if version is None else version
    if parse_version(version) < parse_version(MIN_GIT_ANNEX_VERSION):
        raise GitAnnexVersionError(
            f"git-annex {version} is too old: {MIN_GIT_ANNEX_VERSION} or newer is needed, because "
            "older versions do not record that the xnat remote holds registered files; upgrade it, "
            "e.g. `pip install -U git-annex`"
        )
    return version
