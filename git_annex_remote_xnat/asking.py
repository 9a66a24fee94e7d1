"""Asking a person for an XNAT login, from the special remote, which has no terminal of its own.

git-annex speaks its protocol over the remote's stdin and stdout, so a prompt goes to the
controlling terminal (``/dev/tty``) instead; a batch job has none, and then nothing is asked.
`git annex get -J 8` runs eight remote processes, which would ask eight times: an exclusive lock
in the repository's git directory lets one ask while the others wait, and a waiting one looks
the credential up again once it holds the lock, finding what the first one stored.

Without a terminal, the "no credential" line is worth reading once, not once per file of every
job: `first_to_tell` lets one process of a git-annex run (the remotes' common parent) say it in
full and the others say it short.
"""

from __future__ import annotations

import fcntl
import getpass
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

from .credentials import Credential
from .messages import one_line

STATE_DIR = "xnat-remote"   # in the git directory: the lock and the told-markers
ATTEMPTS = 3


class LoginRejected(Exception):
    """The server refused the user name and password typed (its message says why)."""


def open_terminal() -> TextIO | None:
    """The controlling terminal for reading and writing, or None (a batch job, a daemon)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    # unbuffered raw I/O under the text layer, as getpass does: a terminal cannot seek
    return io.TextIOWrapper(io.FileIO(fd, "w+"), encoding="utf-8", errors="replace",
                            line_buffering=True)


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process asks
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ask_login(git_dir: Path, name: str, base_url: str, terminal: TextIO,
              lookup: Callable[[], Credential | None], check: Callable[[Credential], None],
              store: Callable[[Credential], str | None]) -> Credential | None:
    """The credential `name` for `base_url`: found by `lookup` (perhaps just stored by another
    process), or asked on `terminal`, tried with `check` (LoginRejected: asked again, at most
    ATTEMPTS times) and kept with `store` (which returns a warning to show, or None).

    None when every attempt was rejected; the caller says so.
    """
    with _exclusive(git_dir / STATE_DIR / "login.lock"):
        found = lookup()
        if found is not None:
            return found
        terminal.write(f"\nXNAT login for {base_url} (kept in your keyring as credential "
                       f"'{name}')\n")
        for attempt in range(ATTEMPTS):
            terminal.write("User name (or alias token): ")
            terminal.flush()
            user = terminal.readline().strip()
            password = getpass.getpass("Password (or token secret): ", stream=terminal)
            credential = Credential(name, user, password, "prompt")
            try:
                check(credential)
            except LoginRejected as exc:
                left = ATTEMPTS - attempt - 1
                terminal.write(f"{one_line(exc)}" + (f"; {left} more tries\n" if left else "\n"))
                continue
            warning = store(credential)
            if warning:
                terminal.write(warning + "\n")
            return credential
    return None


def first_to_tell(git_dir: Path, what: str) -> bool:
    """Whether this process is the first of its git-annex run (its parent process) to report
    `what`; a marker in the git directory remembers, and markers of ended runs are removed."""
    folder = git_dir / STATE_DIR
    parent = os.getppid()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"told-{what}-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != parent and not pid_alive(int(pid)):
                old.unlink(missing_ok=True)
        fd = os.open(folder / f"told-{what}-{parent}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    except OSError:
        return True  # cannot remember: better told twice than never
    os.close(fd)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process of that id exists (a signal 0 reaches it, or it is someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
