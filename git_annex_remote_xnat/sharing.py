"""One zip per resource for all the remote processes of one git-annex run.

Why: on a real XNAT every request costs about 50 ms, more than a small DICOM file takes to
arrive, so the files of one scan are cheaper as one archive of their resource. But
`git annex get -J8` runs eight remote processes (annexremote has no ASYNC), each asked for
other keys; left alone, each would fetch the same archive. So the processes of a run share
what an archive brought, through the file system, with nothing but fcntl locks and atomic
renames:

    <git dir>/annex/tmp/xnat-archives/<pid of git-annex>/     the run (all processes of one command)
        .lock  processes/<pid>                                 who uses it (the last one out removes it)
        <hash of the resource's listing path>/                 one resource
            lock  state                                        asks so far, whether the archive came
        keys/<key>                                             verified content, until a job takes it

A key's job (1) takes `keys/<key>` if it is there (a rename into git-annex's file), before it
even asks git-annex for the key's URLs (`take`); (2) else takes its resource's lock, polling for
`keys/<key>` to arrive meanwhile (members are renamed in as the archive streams, so waiting jobs
go on as soon as theirs came). The first ask of a resource in a run is
downloaded alone (whoever gets one file pays one request); a later one lists the resource, and
when `zipstream.worth_an_archive` says so, fetches its missing files as one archive into
`keys/`. Anything else (no digest, a failed member or archive, a server that lists
the file otherwise) ends in the single download, with its retries, as before.

Content is never left behind: each process removes at its exit the `<key>` files it wrote that no
job took, and the last process of the run removes the run's directory; a run that was killed
leaves only its directory, which the next run removes (its git-annex is gone).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .asking import pid_alive
from .keys import key_md5, key_size, md5e_key, object_relpath
from .urls import resource_of
from .zipstream import Wanted, archive_setting, use_archive

if TYPE_CHECKING:
    from .client import XnatClient

POLL_SECONDS = 0.05
RUNS_DIR = ("annex", "tmp", "xnat-archives")
_PROCESSES = "processes"
_PLACED = "keys"


def configured_mode(cwd: str | os.PathLike[str] | None = None) -> str:
    """datalad.xnat.fetch-archives of the repository (git config, no DataLad): `auto` when
    unset; ValueError (zipstream.archive_setting) for any other value than its three."""
    try:
        value = subprocess.run(["git", "config", "--get", "datalad.xnat.fetch-archives"],
                               cwd=cwd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        value = ""
    return archive_setting(value)


class ArchiveShare:
    """This process's side of the run's shared archives (see the module docstring)."""

    def __init__(self, git_dir: str | os.PathLike[str], base_url: str, mode: str = "auto",
                 debug: Callable[[str], None] | None = None) -> None:
        self.git_dir = Path(git_dir).absolute()
        self.base_url = base_url
        self.mode = archive_setting(mode)
        self.run_pid = os.getppid()
        self.root = self.git_dir.joinpath(*RUNS_DIR)
        self.run_dir = self.root / str(self.run_pid)
        self._debug = debug or (lambda message: None)
        self._written: set[Path] = set()
        self._joined = False

    # ------------------------------------------------------------ a key's job

    def retrieve(self, key: str, xnat_url: str, dest: str | os.PathLike[str],
                 client: Callable[[], "XnatClient"]) -> bool:
        """Put the verified content of `key` (its file at `xnat_url`) at `dest` from the run's
        archive of its resource: True when done, False when the caller downloads it alone.
        `client` is called only when this job is the one to list and fetch the archive."""
        md5, size = key_md5(key), key_size(key)
        if self.mode == "never" or md5 is None or size is None or self.run_pid <= 1:
            return False  # no digest (VURL), or git-annex is gone: the single download
        try:
            listing, label, _path = resource_of(xnat_url, self.base_url)
        except Exception:  # noqa: BLE001 - an URL this cannot read: the single download says why
            return False
        self._join()
        res = self.run_dir / hashlib.sha256(
            f"{self.base_url}\0{listing}".encode("utf-8", "surrogateescape")).hexdigest()[:24]
        mine = self._placed(key)
        if _take(mine, dest):
            return True
        fd = _lock(res / "lock", give_up=lambda: _take(mine, dest))
        if fd is None:
            return True  # it came while another job held the lock
        try:
            if _take(mine, dest):
                return True
            state = _read_state(res)
            state["asks"] += 1
            if state["archive"] is None and self.mode == "auto" and state["asks"] == 1:
                state["singles"].append(key)  # the first ask: alone, and no archive takes it
            elif state["archive"] is None:
                try:
                    state["archive"] = self._fetch(res, key, listing, label, client,
                                                   set(state["singles"]))
                except Exception as exc:  # noqa: BLE001 - the single download is the answer
                    self._debug(f"archive of {listing} not used: {exc.__class__.__name__}: {exc}")
                    state["archive"] = "failed"
            _write_state(res, state)
        finally:
            os.close(fd)  # releases the lock
        return _take(mine, dest)

    def take(self, key: str, dest: str | os.PathLike[str]) -> bool:
        """Move the content of `key` that a job's archive placed to `dest`: True when it was
        there. Asked before anything else: such a key needs no URL (its content was verified
        against the key's own size and MD5), so its job costs git-annex no GETURLS."""
        if self.mode == "never" or key_md5(key) is None or self.run_pid <= 1:
            return False
        return _take(self._placed(key), dest)

    def _placed(self, key: str) -> Path:
        """Where an archive's member for `key` waits for its job, whatever its resource."""
        return self.run_dir / _PLACED / key

    def _fetch(self, res: Path, key: str, listing: str, label: str,
               client_of: Callable[[], "XnatClient"], singles: set[str]) -> str:
        """List the resource and, if worth it, fetch its files missing here (`key` among them)
        into `res` as one archive; the state's new `archive` value."""
        from .client import DownloadError

        md5, size = key_md5(key), key_size(key)
        client = client_of()
        files = client.files(listing)
        if any(f.size is None for f in files):
            return "declined"  # the archive's bound needs every size
        listed_bytes = sum(f.size or 0 for f in files)
        wanted: dict[str, Wanted] = {}
        keys: set[str] = set()
        for f in files:
            if not f.md5:
                continue
            # the asked key by its digest and size: its extension may follow the dataset's name
            this = key if (f.size, f.md5.lower()) == (size, md5) else \
                md5e_key(f.size or 0, f.md5, f.path)
            if this in keys or f.path in wanted:
                continue
            if this != key and (this in singles or self._present(this)):
                continue
            keys.add(this)
            wanted[f.path] = Wanted(self._placed(this), f.size or 0, f.md5)
        if key not in keys:
            return "declined"  # the server lists it otherwise now: the single download tells
        wanted_bytes = sum(w.size for w in wanted.values())
        if not use_archive(self.mode, len(wanted), wanted_bytes, len(files), listed_bytes,
                           client.round_trip):
            return "declined"
        self._debug(f"fetching {len(wanted)} files of {listing} as one archive")
        self._placed(key).parent.mkdir(exist_ok=True)
        try:
            for path, error in client.download_archive(listing, label, wanted, listed_bytes,
                                                       len(files)):
                if error is None:
                    self._written.add(wanted[path].dest)
                else:
                    self._debug(f"{path} not taken from the archive: {error}")
        except DownloadError as exc:
            self._debug(f"the archive of {listing} failed: {exc}")
            return "failed"
        return "fetched"

    def _present(self, key: str) -> bool:
        """Whether this repository's annex holds the content of `key` already."""
        return (self.git_dir / object_relpath(key).removeprefix(".git/")).exists()

    # ------------------------------------------------------------ the run

    def _join(self) -> None:
        """Count this process among the run's (once), after removing killed runs' leftovers."""
        if self._joined:
            return
        self._remove_dead_runs()
        fd = _lock(self.run_dir / ".lock")
        assert fd is not None
        try:
            (self.run_dir / _PROCESSES).mkdir(exist_ok=True)
            (self.run_dir / _PROCESSES / str(os.getpid())).touch()
        finally:
            os.close(fd)
        self._joined = True
        atexit.register(self.close)

    def _remove_dead_runs(self) -> None:
        try:
            runs = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for run in runs:
            if run.name.isdigit() and int(run.name) != self.run_pid and not pid_alive(int(run.name)):
                shutil.rmtree(run, ignore_errors=True)

    def close(self) -> None:
        """At the process's exit: remove the content it wrote that no job took; the last
        process of the run removes the run's directory (and the runs' one when empty)."""
        if not self._joined:
            return
        self._joined = False
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written.clear()
        try:
            fd = _lock(self.run_dir / ".lock")
        except OSError:
            return
        assert fd is not None
        try:
            processes = self.run_dir / _PROCESSES
            (processes / str(os.getpid())).unlink(missing_ok=True)
            others = [p for p in processes.iterdir() if p.name.isdigit()
                      and pid_alive(int(p.name))] if processes.is_dir() else []
            if not others:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                try:
                    self.root.rmdir()
                except OSError:
                    pass  # another run's directory is there
        finally:
            os.close(fd)


# ---------------------------------------------------------------- files


def _take(source: Path, dest: str | os.PathLike[str]) -> bool:
    """Move verified content to git-annex's file; False when it is not (or no longer) there."""
    try:
        os.replace(source, dest)
    except FileNotFoundError:
        return False
    return True


def _lock(path: Path, give_up: Callable[[], bool] | None = None) -> int | None:
    """An exclusive flock on `path` (made, with its directory, if missing): its descriptor, whose
    closing releases it. While another process holds it, `give_up()` is asked every
    POLL_SECONDS, and None returned when it says True. A lock file removed meanwhile (the run's
    last process removed the run) is made anew and locked, never the removed one."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # the directory went away between the two calls
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if give_up is not None and give_up():
                    os.close(fd)
                    return None
                time.sleep(POLL_SECONDS)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def _read_state(res: Path) -> dict:
    """The resource's state in this run: asks so far, the keys downloaded alone (`singles`),
    and the archive's outcome (None: not tried yet)."""
    try:
        state = json.loads((res / "state").read_text())
        if isinstance(state, dict):
            return {"asks": int(state.get("asks", 0)), "singles": list(state.get("singles", [])),
                    "archive": state.get("archive")}
    except (OSError, ValueError):
        pass
    return {"asks": 0, "singles": [], "archive": None}


def _write_state(res: Path, state: dict) -> None:
    tmp = res / f".state.{os.getpid()}"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, res / "state")
