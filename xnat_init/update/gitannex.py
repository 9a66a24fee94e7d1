"""Every piece of git and git-annex plumbing xnat-update needs, in one place.

Reading: one `git ls-tree` reader and one `git cat-file --batch` reader serve everything that
looks at what a dataset tracks (TrackedTree, tracked_keys, key_urls, the logs on git-annex's
branch). Writing: one `git fast-import` driver serves both commits an update makes.

Why fast-import instead of `git annex fromkey --batch` plus `git annex registerurl --batch`:
those cost several milliseconds per file (each registerurl line is a CLAIMURL round trip to the
special remote; benchmarks/RESULTS.md has the figures), while what a registered file *is*
consists of

* a symlink `path -> ../.git/annex/objects/<hashdirmixed>/<key>/<key>` committed to the branch,
* a location log `<hashdirlower>/<key>.log` on the git-annex branch saying the XNAT special
  remote (its UUID) has the key,
* a URL log `<hashdirlower>/<key>.log.web` with the `xnat:` URL (prefixed with `:`, git-annex's
  mark for URLs claimed by a special remote, as registerurl writes it), and
* a metadata log `<hashdirlower>/<key>.log.met` with XNAT's values (metalog.py has the format).

So the default method ("fast-import") writes exactly those: commits on the git-annex branch,
one per ANNEX_CHUNK_KEYS keys (existing logs of a key are read and added to, never replaced; a
chunk that finds every log as it should be makes no commit), and one commit on the dataset's
branch (its tree built in steps of TREE_CHUNK_CHANGES files, so no fast-import process holds a
million objects), then moves the work tree to it with `git read-tree -m -u` (which refuses, and
changes nothing, if a local modification is in the way). git-annex notices that its branch moved
and merges it into its index on the next run. The formats are git-annex's documented internals
(doc/internals.mdwn), checked against real git-annex in tests.

The "batch" method (`git annex registerurl --batch`, `git annex metadata --batch`) is the
conservative fallback: used when git-annex's journal holds uncommitted changes (a user with
annex.alwayscommit=false), or chosen with `datalad.xnat.register-method=batch`. Adjusted
branches are refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from array import array
from bisect import bisect_left
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Protocol

from git_annex_remote_xnat.keys import hashdir_lower, key_from_target, symlink_target

from ..layout import path_hash
from .metalog import LogWriter, MetaChange
from .recovery import Journal, pause_point

GITLINK_MODE = "160000"
SYMLINK_MODE = "120000"
ANNEX_CHUNK_KEYS = 50_000   # keys per fast-import commit on git-annex's branch
PENDING_KEYS = 20_000       # keys read ahead of the fast-import writer (bounds memory)
TREE_CHUNK_CHANGES = 100_000
TEMP_REF = "refs/xnat-update/pending"
METADATA_BATCH_KEYS = 1000  # keys per `git annex metadata --batch` round (batch method)


class RegistrationError(RuntimeError):
    """Git or git-annex refused a step; the dataset's branch is unchanged. The message says why."""


class Located(Protocol):
    """A file to register: its path in the dataset and its key (spool.Entry is one)."""

    path: str
    key: str


# ------------------------------------------------------------------------------------ commands

def git(repo: Path, *args: str, input: str | bytes | None = None,
        check: bool = True, shielded: bool = False) -> subprocess.CompletedProcess:
    """Run one git command. `shielded`: in a session of its own, so Ctrl-C in the terminal
    does not stop it midway (see interrupts_deferred)."""
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True,
                          text=not isinstance(input, bytes), start_new_session=shielded)
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise RegistrationError(f"git {' '.join(args[:3])} failed in {repo}: {err.strip()}")
    return proc


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP wait until the block is done, then act as usual.

    For steps that must not stop halfway: once the branch has moved, the index and work tree
    must follow (an update interrupted between the two left every file staged as deleted). Git
    commands in the block run `shielded`, since the terminal sends SIGINT to them too. A signal
    received in the block is sent again after it, under the handler that was there before: a
    KeyboardInterrupt as usual, nothing where it was ignored (a command started with `&` or
    nohup). Signal handlers belong to the main thread; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)


@contextmanager
def terminations_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the block as Ctrl-C does (a KeyboardInterrupt), so that what
    kill, timeout, systemd and batch schedulers send gets the same cleanup; a second one while
    that cleanup runs is ignored. Handlers someone else installed, or an ignored SIGHUP
    (nohup), are left alone; only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [signum for signum in (signal.SIGTERM, signal.SIGHUP)
            if signal.getsignal(signum) == signal.SIG_DFL]

    def interrupt(signum, frame) -> None:
        for other in ours:
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    for signum in ours:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, signal.SIG_DFL)


def current_branch(repo: Path) -> tuple[str, str | None]:
    """(branch ref, HEAD commit or None for an unborn branch); RegistrationError if detached."""
    proc = git(repo, "symbolic-ref", "-q", "HEAD", check=False)
    ref = proc.stdout.strip()
    if proc.returncode != 0 or not ref:
        raise RegistrationError(f"{repo} has a detached HEAD; check out a branch first")
    if ref.startswith("refs/heads/adjusted/"):
        raise RegistrationError(f"{repo} is on an adjusted branch ({ref}); xnat-update registers "
                                "locked files only: run `git annex adjust --unlock` off or use "
                                "a file system with symlinks")
    head = git(repo, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False).stdout.strip()
    return ref, head or None


def git_dir(repo: Path) -> Path:
    return Path(git(repo, "rev-parse", "--absolute-git-dir").stdout.strip())


def journal_is_empty(repo: Path) -> bool:
    """Whether git-annex's journal holds no uncommitted change (then its branch is the truth)."""
    journal = repo / ".git" / "annex" / "journal"
    try:
        return not any(journal.iterdir())
    except FileNotFoundError:
        return True


# ------------------------------------------------------------------------------------- readers

def _split_z(stream: IO[bytes]) -> Iterator[bytes]:
    buffer = b""
    while True:
        chunk = stream.read(1 << 16)
        if not chunk:
            break
        buffer += chunk
        *entries, buffer = buffer.split(b"\0")
        yield from entries
    if buffer:
        yield buffer


def ls_tree(repo: Path, treeish: str, *, recursive: bool = True) -> Iterator[tuple[bytes, str, str]]:
    """(mode, object id, path) of every entry of `treeish`: the one `git ls-tree` reader."""
    args = ["git", "-C", str(repo), "ls-tree", "-z", "--full-tree"]
    proc = subprocess.Popen(args + (["-r"] if recursive else []) + [treeish],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout
    try:
        for entry in _split_z(proc.stdout):
            meta, _, path = entry.partition(b"\t")
            mode, _, sha = meta.split(b" ")
            yield mode, sha.decode(), path.decode("utf-8", "surrogateescape")
    finally:
        proc.stdout.close()
        proc.wait()


def _kill(proc: subprocess.Popen) -> None:
    """End a git coprocess now and close our ends of its pipes (a thread blocked on one of
    them gets an error instead of waiting forever)."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if pipe:
                pipe.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


class CatFile:
    """A `git cat-file --batch` coprocess: the one reader of object contents.

    `get` asks and waits. For many questions, `ask` them (from one thread) and read the
    `answer`s in the same order (from another), so no question waits for the previous answer.
    """

    def __init__(self, repo: Path) -> None:
        self._proc = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, spec: str, flush: bool = True) -> None:
        assert self._proc.stdin
        self._proc.stdin.write(spec.encode("utf-8", "surrogateescape") + b"\n")
        if flush:
            self._proc.stdin.flush()

    def answer(self) -> bytes | None:
        """The next answer: the object's content, or None when it is missing."""
        assert self._proc.stdout
        header = self._proc.stdout.readline()
        if not header or header.endswith(b" missing\n"):
            return None
        size = int(header.split()[2])
        data = self._proc.stdout.read(size)
        self._proc.stdout.read(1)  # the newline after the content
        return data

    def get(self, spec: str) -> bytes | None:
        self.ask(spec)
        return self.answer()

    def end_questions(self) -> None:
        try:
            if self._proc.stdin and not self._proc.stdin.closed:
                self._proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def close(self) -> None:
        self.end_questions()
        self._proc.wait()

    def kill(self) -> None:
        """Stop at once (a thread blocked asking or answering gets an error)."""
        _kill(self._proc)


class AnnexBranchLookup:
    """`git cat-file` names for logs on git-annex's branch that skip its root tree.

    `refs/heads/git-annex:abc/def/KEY.log` makes git resolve the ref and inflate the branch's
    root tree (up to 4,096 folders) for every single lookup. The root tree is read once here; a
    lookup then names the key's first-level folder by its object ID (`<tree>:def/KEY.log`), a
    tree of a few entries, and a log whose folder does not exist is known to be missing without
    asking git at all.
    """

    def __init__(self, repo: Path) -> None:
        self._folders = {path: sha for mode, sha, path in
                         ls_tree(repo, "refs/heads/git-annex", recursive=False)
                         if mode == b"040000"}

    def spec(self, path: str) -> str | None:
        """What to ask `git cat-file` for the branch's `path` (None: it does not exist)."""
        folder, _, rest = path.partition("/")
        tree = self._folders.get(folder)
        return f"{tree}:{rest}" if tree else None


def blob_sha(content: bytes) -> bytes:
    """Git's object id of a blob (the first 8 bytes are enough to compare symlinks)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).digest()


def symlink_fingerprint(key: str, path_in_dataset: str) -> int:
    """64 bits of the blob id git gives the symlink of `key` at that path."""
    target = symlink_target(key, path_in_dataset).encode("utf-8", "surrogateescape")
    return int.from_bytes(blob_sha(target)[:8], "big")


@dataclass
class TrackedTree:
    """Fingerprints of what HEAD tracks: path hash -> symlink blob fingerprint (0: not a symlink).

    Two sorted `array('Q')`s (16 bytes per file) instead of a dict of strings, so a million
    tracked files cost 16 MB; `seen` marks the ones the server still has.
    """

    paths: array = field(default_factory=lambda: array("Q"))
    blobs: array = field(default_factory=lambda: array("Q"))
    seen: bytearray = field(default_factory=bytearray)
    gitlinks: dict[str, str] = field(default_factory=dict)   # subdataset path -> commit

    @classmethod
    def read(cls, repo: Path, head: str | None) -> "TrackedTree":
        tree = cls()
        if head is None:
            return tree
        pairs: list[tuple[int, int]] = []
        for mode, sha, name in ls_tree(repo, head):
            if mode == GITLINK_MODE.encode():
                tree.gitlinks[name] = sha
                continue
            blob = int(sha[:16], 16) if mode == SYMLINK_MODE.encode() else 0
            pairs.append((path_hash(name), blob))
        pairs.sort()
        tree.paths = array("Q", (p for p, _ in pairs))
        tree.blobs = array("Q", (b for _, b in pairs))
        tree.seen = bytearray(len(pairs))
        return tree

    def lookup(self, fingerprint: int) -> int | None:
        """Index of the path with this fingerprint, or None."""
        index = bisect_left(self.paths, fingerprint)
        if index < len(self.paths) and self.paths[index] == fingerprint:
            return index
        return None

    def mark_seen(self, path: str) -> int | None:
        """Mark `path` as still listed by the server; its index, or None if not tracked."""
        index = self.lookup(path_hash(path)) if self.paths else None
        if index is not None:
            self.seen[index] = 1
        return index

    def is_seen(self, path: str) -> bool:
        index = self.lookup(path_hash(path)) if self.paths else None
        return index is not None and bool(self.seen[index])

    def unseen(self) -> set[int]:
        return {self.paths[i] for i, flag in enumerate(self.seen) if not flag}


def tracked_keys(repo: Path, head: str, wanted: set[int]) -> Iterator[tuple[str, str]]:
    """(path, key) of the annexed files of HEAD whose path fingerprints are in `wanted`."""
    if not wanted:
        return
    catfile = CatFile(repo)
    try:
        for mode, sha, name in ls_tree(repo, head):
            if mode != SYMLINK_MODE.encode() or path_hash(name) not in wanted:
                continue
            target = catfile.get(sha) or b""
            key = key_from_target(target.decode("utf-8", "surrogateescape"))
            if key:
                yield name, key
    finally:
        catfile.close()


def key_urls(repo: Path, keys: Iterable[str]) -> dict[str, list[str]]:
    """The URLs git-annex's branch records for each key (claimed ones without their ':' mark)."""
    catfile = CatFile(repo)
    branch = AnnexBranchLookup(repo)
    found: dict[str, list[str]] = {}
    try:
        for key in keys:
            spec = branch.spec(f"{hashdir_lower(key)}{key}.log.web")
            content = catfile.get(spec) if spec else None
            found[key] = _present_values(content) if content else []
    finally:
        catfile.close()
    return found


def _present_values(content: bytes) -> list[str]:
    """Values whose latest log line says present (status 1), in first-seen order."""
    latest: dict[str, tuple[str, str]] = {}
    for line in content.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        stamp, status, value = parts
        value = value[1:] if value.startswith(":") else value
        previous = latest.get(value)
        if previous is None or _stamp(stamp) >= _stamp(previous[0]):
            latest[value] = (stamp, status)
    return [value for value, (_, status) in latest.items() if status == "1"]


def _stamp(text: str) -> float:
    try:
        return float(text.rstrip("s"))
    except ValueError:
        return 0.0


# ----------------------------------------------------------------------------------- fast-import

def _quote_path(path: str) -> str:
    """A C-style quoted path as git fast-import reads it (always quoted: no surprises)."""
    out = ['"']
    for ch in path:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append("\\%03o" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _fi_path(path: str) -> bytes:
    """A path as fast-import reads it after `M <mode> <dataref> `: verbatim unless it needs quoting."""
    if "\n" in path or path.startswith('"'):
        return _quote_path(path).encode("utf-8", "surrogateescape")
    return path.encode("utf-8", "surrogateescape")


class FastImport:
    """One `git fast-import` run writing one commit on `ref`: the one fast-import driver.

    Lines are buffered and written in batches; `finish` ends the stream and raises
    RegistrationError (with git's message) if git refused it. `lazy`: git starts with the
    first entry, and no entry means no commit (the git-annex branch gets no empty commit when
    an update finds every log as it should be)."""

    def __init__(self, repo: Path, ref: str, message: bytes, base: str | None, *,
                 author: bool = False, force: bool = False, lazy: bool = False) -> None:
        self.repo = repo
        self._args = ["git", "-C", str(repo), "fast-import", "--quiet", "--done"] + \
            (["--force"] if force else [])
        self._proc: subprocess.Popen | None = None
        self._buffer: list[bytes] = []
        self.entries = 0
        head = [f"commit {ref}\n".encode()]
        if author:
            head.append(f"author {ident(repo, 'AUTHOR')}\n".encode())
        head.append(f"committer {ident(repo, 'COMMITTER')}\n".encode())
        head.append(b"data %d\n%s\n" % (len(message), message))
        if base:
            head.append(f"from {base}^0\n".encode())
        self._head = b"".join(head)
        if not lazy:
            self._start()

    def _start(self) -> subprocess.Popen:
        if self._proc is None:
            self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
            self._send(self._head)
        return self._proc

    def _write(self, data: bytes) -> None:
        self._start()
        self._send(data)

    def _send(self, data: bytes) -> None:
        assert self._proc and self._proc.stdin
        try:
            self._proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            raise self._stopped() from None

    def _stopped(self) -> RegistrationError:
        """The error for a fast-import that ended before its input did (killed, or refused)."""
        assert self._proc
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        err = self._proc.stderr.read() if self._proc.stderr else b""
        self._proc.wait()
        return RegistrationError(f"git fast-import stopped (status {self._proc.returncode}) in "
                                 f"{self.repo}: {err.decode(errors='replace').strip()}")

    def _add(self, data: bytes) -> None:
        self._start()  # a lazy one starts with its first entry
        self._buffer.append(data)
        self.entries += 1
        if len(self._buffer) >= 2000:
            self._write(b"".join(self._buffer))
            self._buffer.clear()

    def file(self, path: str, content: bytes, mode: str = "100644") -> None:
        self._add(f"M {mode} inline ".encode() + _fi_path(path) + b"\ndata %d\n" % len(content)
                  + content + b"\n")

    def symlink(self, path: str, target: str) -> None:
        self.file(path, target.encode("utf-8", "surrogateescape"), SYMLINK_MODE)

    def gitlink(self, path: str, commit: str) -> None:
        self._add(f"M {GITLINK_MODE} {commit} {_quote_path(path)}\n"
                  .encode("utf-8", "surrogateescape"))

    def delete(self, path: str) -> None:
        self._add(f"D {_quote_path(path)}\n".encode("utf-8", "surrogateescape"))

    def finish(self, what: str) -> None:
        if self._proc is None and not self.entries:
            return  # lazy, and nothing to write: no commit
        try:
            self._write(b"".join(self._buffer) + b"\ndone\n")
            self._buffer.clear()
            assert self._proc.stdin
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        except RegistrationError as exc:
            raise RegistrationError(f"git fast-import ({what}): {exc}") from None
        err = self._proc.stderr.read() if self._proc.stderr else b""
        self._proc.wait()
        if self._proc.returncode != 0:
            raise RegistrationError(f"git fast-import ({what}) failed in {self.repo}: "
                                    f"{err.decode(errors='replace').strip()}")

    def abort(self) -> None:
        """Stop without committing (the ref stays as it was)."""
        if self._proc is not None:
            _kill(self._proc)


def ident(repo: Path, which: str) -> str:
    return git(repo, "var", f"GIT_{which}_IDENT").stdout.strip()


# ------------------------------------------------------------------------ git-annex's branch

def _annex_log_with(existing: bytes | None, value: str, stamp: str) -> bytes | None:
    """The log content with `value` marked present, or None if it already is."""
    if existing is not None:
        bare = value[1:] if value.startswith(":") else value
        if bare in _present_values(existing):
            return None
    line = f"{stamp} 1 {value}\n".encode("utf-8", "surrogateescape")
    if existing is None:
        return line
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    return existing + line


def _grouped_by_key(pairs_sorted: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    current_key: str | None = None
    current_urls: list[str] = []
    for key, url in pairs_sorted:
        if key != current_key:
            if current_key is not None:
                yield current_key, current_urls
            current_key, current_urls = key, []
        if url and url not in current_urls:
            current_urls.append(url)
    if current_key is not None:
        yield current_key, current_urls


Metadata = Iterable[tuple[str, str, MetaChange]]   # (<hashdirlower><key>, key, change), sorted


@dataclass
class _KeyWrite:
    """What the git-annex branch gets for one key: presence in the remote (with `urls`), a
    metadata change, or both."""

    base: str                  # <hashdirlower><key>: the logs' path without .log*
    key: str
    urls: list[str]
    present: bool
    meta: MetaChange | None = None


def _key_writes(pairs_sorted: Iterable[tuple[str, str]],
                metadata: Metadata | None) -> Iterator[_KeyWrite]:
    """The registrations (grouped by key) and the metadata changes merged into one stream in
    the order of the keys' folders: one look at each key's logs, one fast-import pass."""
    registered = (_KeyWrite(f"{hashdir_lower(key)}{key}", key, urls, True)
                  for key, urls in _grouped_by_key(pairs_sorted))
    if metadata is None:
        yield from registered
        return
    changes = iter(metadata)
    write = next(registered, None)
    change = next(changes, None)
    while write is not None or change is not None:
        if change is None or (write is not None and write.base < change[0]):
            yield write
            write = next(registered, None)
        elif write is None or change[0] < write.base:
            yield _KeyWrite(change[0], change[1], [], False, change[2])
            change = next(changes, None)
        else:
            write.meta = change[2]
            yield write
            write, change = next(registered, None), next(changes, None)


def _write_annex_branch(repo: Path, pairs_sorted: Iterable[tuple[str, str]], remote_uuid: str,
                        progress: Callable[[int], None] | None,
                        message: bytes = b"update (xnat-update: register keys and xnat: URLs)",
                        point: str = "annex-branch", metadata: Metadata | None = None) -> int:
    """Fast-import commits on git-annex's branch: every key present in the repository or
    remote `remote_uuid`, and its URLs; the `metadata` changes; one commit per
    ANNEX_CHUNK_KEYS keys, none where every log already says what it should.

    `pairs_sorted` are (key, url), grouped by key (best in hashdir_lower order); an empty url
    records presence only. `metadata` must be in hashdir_lower order (Annotations.changes).
    Returns the number of keys registered.

    Why chunks: git fast-import keeps every object it wrote and every tree it touched in memory.
    A new process per chunk, fed keys in the order of their folders on the branch, touches only
    its own range of folders.
    """
    if git(repo, "rev-parse", "-q", "--verify", "refs/heads/git-annex",
           check=False).returncode != 0:
        raise RegistrationError(f"{repo} has no git-annex branch; is it a git-annex repository?")
    now = int(time.time())
    logs = LogWriter(now)
    writes = _key_writes(pairs_sorted, metadata)
    written = 0
    while (first := next(writes, None)) is not None:
        chunk = chain([first], islice(writes, ANNEX_CHUNK_KEYS - 1))
        written += _write_annex_chunk(repo, chunk, remote_uuid, f"{now}s", logs, progress,
                                      message, point)
    return written


def _write_annex_chunk(repo: Path, writes: Iterable[_KeyWrite], remote_uuid: str, stamp: str,
                       logs: LogWriter, progress: Callable[[int], None] | None, message: bytes,
                       point: str) -> int:
    """One fast-import commit on git-annex's branch for `writes`.

    The existing logs are read with a pipelined CatFile (a feeder thread asks, this thread reads
    the answers in order), so no question waits for the previous answer.
    """
    importer = FastImport(repo, "refs/heads/git-annex", message, "refs/heads/git-annex",
                          lazy=True)
    catfile = CatFile(repo)
    pending: queue.Queue = queue.Queue(maxsize=PENDING_KEYS)
    feed_error: list[BaseException] = []
    branch = AnnexBranchLookup(repo)
    stopping = threading.Event()  # this thread left: the feeder must not wait for it

    def put(item) -> None:
        while not stopping.is_set():
            try:
                pending.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def feed() -> None:
        try:
            for write in writes:
                if stopping.is_set():
                    return
                # a key's logs live in one folder: if it exists, each log needed is asked for
                # (a missing one is answered "missing"); if not, none is
                folder = branch.spec(write.base + ".log")
                asked = folder is not None
                put((write, asked))
                if asked:
                    questions = ([folder] if write.present else []) + \
                        ([branch.spec(write.base + ".log.web")] if write.present and write.urls
                         else []) + \
                        ([branch.spec(write.base + ".log.met")] if write.meta else [])
                    for n, question in enumerate(questions, start=1):
                        catfile.ask(f"{question}", flush=n == len(questions))
                    # flushed at once: the reader may wait for this answer while keys that
                    # need no question fill `pending` and stop this thread (a deadlock, seen
                    # at a chunk's start: a few keys in folders that exist, then none)
            catfile.end_questions()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            if not stopping.is_set():
                feed_error.append(exc)
        finally:
            put(None)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    written = 0
    try:
        while (item := pending.get()) is not None:
            write, asked = item
            base = write.base
            if write.present:
                location = _annex_log_with(catfile.answer() if asked else None, remote_uuid,
                                           stamp)
                if location is not None:
                    importer.file(base + ".log", location)
                web = catfile.answer() if write.urls and asked else None
                changed = False
                for url in write.urls:
                    updated = _annex_log_with(web, ":" + url, stamp)
                    if updated is not None:
                        web, changed = updated, True
                if changed and web is not None:
                    importer.file(base + ".log.web", web)
            if write.meta is not None:
                met = logs.updated(catfile.answer() if asked else None, write.meta)
                if met is not None:
                    importer.file(base + ".log.met", met)
            if not write.present:
                continue
            written += 1
            if written == 1:
                pause_point(point)
            if progress:
                progress(1)
    except BaseException:
        # the feeder may be blocked on a full queue or on git cat-file's full pipes
        stopping.set()
        catfile.kill()
        importer.abort()
        raise
    finally:
        feeder.join()
        catfile.close()
    if feed_error:
        importer.abort()
        raise RegistrationError(f"reading the registered keys failed: {feed_error[0]}")
    importer.finish("git-annex branch")
    return written


def annex_json_results(lines: Iterable[str]) -> Iterator[dict]:
    """The result records of a `git annex … --json` run (one per file or key; other lines and
    records without "success", such as progress, are skipped)."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "success" in record:
            yield record


class AnnexBatch:
    """`git annex <command> --batch --json`: lines in from a feeder thread, results out.

    The one driver of git-annex's batch mode (registerurl, get)."""

    def __init__(self, repo: Path, *args: str) -> None:
        self._proc = subprocess.Popen(
            ["git", "-C", str(repo), "annex", *args, "--batch", "--json", "--json-error-messages"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            encoding="utf-8", errors="surrogateescape")
        self.stderr = ""

    def run(self, lines: Iterable[str]) -> Iterator[dict]:
        """Feed `lines` (each without newline) and yield each result record as it comes."""
        proc = self._proc

        def feed() -> None:
            assert proc.stdin
            try:
                for line in lines:
                    proc.stdin.write(line + "\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        assert proc.stdout
        try:
            yield from annex_json_results(proc.stdout)
        finally:
            writer.join()
            self.stderr = proc.stderr.read() if proc.stderr else ""
            proc.wait()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode


def _register_urls_batch(repo: Path, pairs: Iterable[tuple[str, str]], remote_name: str,
                         progress: Callable[[int], None] | None) -> None:
    """The conservative way: `git annex registerurl --batch` (a CLAIMURL per line)."""
    batch = AnnexBatch(repo, "registerurl", f"--remote={remote_name}")
    failures: list[str] = []
    for record in batch.run(f"{key} {url}" for key, url in pairs):
        if not record["success"]:
            failures.append(" ".join(record.get("error-messages", [])) or str(record))
        if progress:
            progress(1)
    if batch.returncode != 0 or failures:
        raise RegistrationError("git annex registerurl failed: "
                                + ("; ".join(failures[:3]) or batch.stderr.strip()))


def _set_metadata_batch(repo: Path, metadata: Metadata) -> None:
    """The conservative way for metadata: `git annex metadata --batch --json`, which sets a
    field to the values given, so each key's current values are asked for first (a batch of
    keys at a time, one process for the questions and one for the changes)."""
    changes = iter(metadata)
    while chunk := list(islice(changes, METADATA_BATCH_KEYS)):
        query = AnnexBatch(repo, "metadata")
        now = {record.get("key"): record.get("fields", {})
               for record in query.run(json.dumps({"key": key}) for _, key, _ in chunk)}
        lines = []
        for _, key, change in chunk:
            have = {name.casefold(): set(values) for name, values in now.get(key, {}).items()}
            fields = {}
            for name in set(change.wanted) | set(change.unwanted):
                current = have.get(name.casefold(), set())
                wanted = set(change.wanted.get(name, ()))
                final = (current - (set(change.unwanted.get(name, ())) - wanted)) | wanted
                if final != current:
                    fields[name] = sorted(final)
            if fields:
                lines.append(json.dumps({"key": key, "fields": fields}))
        if not lines:
            continue
        batch = AnnexBatch(repo, "metadata")
        failures = [" ".join(record.get("error-messages", [])) or str(record)
                    for record in batch.run(lines) if not record["success"]]
        if batch.returncode != 0 or failures:
            raise RegistrationError("git annex metadata failed: "
                                    + ("; ".join(failures[:3]) or batch.stderr.strip()))


def register_keys(repo: Path, pairs_sorted: Iterable[tuple[str, str]], remote_uuid: str,
                  remote_name: str, progress: Callable[[int], None] | None = None,
                  method: str = "fast-import", metadata: Metadata | None = None) -> None:
    """Record in git-annex's branch that the remote has each key, its xnat: URL, and the
    `metadata` changes, in one pass. `method` 'batch' (or a journal with uncommitted
    changes) takes `registerurl --batch` and `metadata --batch`."""
    if method == "batch" or not journal_is_empty(repo):
        _register_urls_batch(repo, pairs_sorted, remote_name, progress)
        if metadata is not None:
            _set_metadata_batch(repo, metadata)
    else:
        _write_annex_branch(repo, pairs_sorted, remote_uuid, progress, metadata=metadata)


def record_present(repo: Path, keys: Iterable[str], uuid: str) -> None:
    """Record in git-annex's branch that the repository `uuid` has each key (content placed
    by placement.AnnexPlacer). The caller checked that git-annex's journal is empty."""
    ordered = sorted(set(keys), key=lambda key: (hashdir_lower(key), key))
    _write_annex_branch(repo, ((key, "") for key in ordered), uuid, None,
                        message=b"update (xnat-update: content fetched from XNAT)",
                        point="record")


def record_absent(repo: Path, keys: Iterable[str], uuid: str) -> None:
    """Record in git-annex's branch that the repository `uuid` no longer has each key."""
    stamp = f"{time.time():.9f}s"  # after the "present" line, also within its second
    importer = FastImport(repo, "refs/heads/git-annex",
                          b"update (xnat-update: content not here)", "refs/heads/git-annex")
    catfile = CatFile(repo)
    try:
        for key in sorted(set(keys)):
            log = f"{hashdir_lower(key)}{key}.log"
            existing = catfile.get(f"refs/heads/git-annex:{log}") or b""
            if uuid in _present_values(existing):
                line = f"{stamp} 0 {uuid}\n".encode()
                importer.file(log, existing + (b"" if existing.endswith(b"\n") else b"\n")
                              + line)
    except BaseException:
        importer.abort()
        raise
    finally:
        catfile.close()
    importer.finish("git-annex branch")


# ------------------------------------------------------------------------- the dataset's branch

def commit_tree_changes(repo: Path, changes: Iterable[Located], removals: Iterable[str],
                        gitlinks: dict[str, str], message: str,
                        extra_files: dict[str, bytes] | None = None,
                        journal: "Journal | None" = None) -> str | None:
    """One commit on the dataset's branch: symlinks for `changes`, deletions, subdataset commits.

    The tree is built by git fast-import in steps of TREE_CHUNK_CHANGES changes (a process each:
    fast-import keeps every object it wrote in memory), on a temporary ref; the last step's tree
    then becomes one commit on top of HEAD, so the history shows one commit whatever the size.
    The work tree and index follow with `git read-tree -m -u`; if that is refused (a local change
    in the way), the branch is put back and RegistrationError raised. Returns the new commit, or
    None when nothing changed. With a `journal`, a marker says the move is under way until it
    is done, so that the next run finishes a move that was killed (recovery.py).
    """
    ref, head = current_branch(repo)
    pending = iter(changes)
    count = 0
    base = head
    body = message.encode("utf-8")
    first = True
    try:
        # deletions, subdatasets and configuration files go with the first step
        while (change := next(pending, None)) is not None or first:
            importer = FastImport(repo, TEMP_REF, body, base, author=True, force=True)
            if first:
                pause_point("tree")
                for path in removals:
                    importer.delete(path)
                for path, commit in gitlinks.items():
                    importer.gitlink(path, commit)
                for path, content in (extra_files or {}).items():
                    importer.file(path, content)
            step = chain([change], islice(pending, TREE_CHUNK_CHANGES - 1)) if change else ()
            for item in step:
                importer.symlink(item.path, symlink_target(item.key, item.path))
            importer.finish("tree")
            count += importer.entries
            base, first = TEMP_REF, False
    except RegistrationError:
        git(repo, "update-ref", "-d", TEMP_REF, check=False)
        raise
    tree = git(repo, "rev-parse", f"{TEMP_REF}^{{tree}}").stdout.strip()
    git(repo, "update-ref", "-d", TEMP_REF, check=False)
    if count == 0 or (head and tree == git(repo, "rev-parse", f"{head}^{{tree}}").stdout.strip()):
        return None
    new = git(repo, "commit-tree", tree, *(["-p", head] if head else []),
              input=message).stdout.strip()
    with interrupts_deferred():
        marker = journal.begin("worktree", repo, ref=ref, old=head, new=new) if journal else None
        git(repo, "update-ref", "-m", "xnat-update", ref, new, head or "0" * 40, shielded=True)
        pause_point("read-tree")
        move = git(repo, "read-tree", "-m", "-u", *([head] if head else []), new, check=False,
                   shielded=True)
        if move.returncode < 0:  # killed halfway: the marker stays, the next run finishes it
            raise RegistrationError(f"git read-tree was stopped (signal {-move.returncode}) "
                                    f"while updating the work tree of {repo}; run xnat-update "
                                    "again to finish it")
        if move.returncode != 0:
            git(repo, "update-ref", "-m", "xnat-update: undo", ref, head or "0" * 40, new,
                check=False, shielded=True)
        if journal:
            journal.end(marker)
    if move.returncode != 0:
        raise RegistrationError(f"cannot update the work tree of {repo}: {move.stderr.strip()}; "
                                "commit or discard local changes and run again")
    return new


# ------------------------------------------------------------------------------- repairs

def _work_tree_matches(repo: Path, path: str, mode: str, sha: str) -> bool:
    """Whether the work tree holds the tree entry (mode, sha) at `path` (absent: mode 0)."""
    full = repo / path
    if mode == "000000":
        return not os.path.lexists(full)
    try:
        if mode == SYMLINK_MODE:
            content = os.fsencode(os.readlink(full))
        elif full.is_symlink() or not full.is_file():
            return False
        else:
            content = full.read_bytes()
    except OSError:
        return False
    return blob_sha(content).hex() == sha


def finish_worktree_move(repo: Path, ref: str, old: str | None, new: str) -> None:
    """Finish moving `repo` from commit `old` to `new` (commit_tree_changes was stopped
    between moving the branch and the end of `git read-tree -m -u`).

    `git read-tree` takes `index.lock`, rewrites the changed files one by one and writes the
    index last, so a killed one leaves the lock, the old index and some files already new.
    Those files are staged as they are (they are the new commit's), then the move is made
    again, which touches only the rest; a local change in the way puts the branch back.
    """
    current = git(repo, "rev-parse", "-q", "--verify", ref, check=False).stdout.strip() or None
    if current not in (old, new):
        return  # the branch moved on since (someone committed): nothing of ours to finish
    lock = git_dir(repo) / "index.lock"
    lock.unlink(missing_ok=True)
    base = old or git(repo, "hash-object", "-t", "tree", "--stdin", input="").stdout.strip()
    diff = git(repo, "diff-tree", "-r", "-z", "--no-renames", base, new).stdout
    fields = diff.split("\0")
    moved = []
    for meta, path in zip(fields[0::2], fields[1::2]):
        parts = meta.lstrip(":").split()
        if len(parts) < 5 or GITLINK_MODE in parts[:2]:
            continue
        if _work_tree_matches(repo, path, parts[1], parts[3]):
            moved.append(path)
    with interrupts_deferred():
        if moved:
            git(repo, "update-index", "--add", "--remove", "-z", "--stdin",
                input="\0".join(moved) + "\0", shielded=True)
        if current != new:
            git(repo, "update-ref", "-m", "xnat-update: finish", ref, new, current or "0" * 40,
                shielded=True)
        move = git(repo, "read-tree", "-m", "-u", *([old] if old else []), new, check=False,
                   shielded=True)
        if move.returncode != 0:
            git(repo, "update-ref", "-m", "xnat-update: undo", ref, old or "0" * 40, new,
                check=False, shielded=True)
    if move.returncode != 0:
        raise RegistrationError(f"cannot finish updating the work tree of {repo}: "
                                f"{move.stderr.strip()}; commit or discard local changes and "
                                "run again")


def _annex_objects(repo: Path) -> set[str]:
    """The keys whose content is in `repo`'s annex (objects/<hashdir>/<key>/<key>)."""
    root = git_dir(repo) / "annex" / "objects"
    found = set()
    for top in os.scandir(root) if root.is_dir() else ():
        for second in os.scandir(top.path):
            for folder in os.scandir(second.path):
                if os.path.isfile(os.path.join(folder.path, folder.name)):
                    found.add(folder.name)
    return found


def _keys_logged_here(repo: Path, uuid: str) -> set[str]:
    """The keys whose location log on git-annex's branch says `uuid` has them."""
    logs = [(sha, path.rsplit("/", 1)[1][:-len(".log")])
            for mode, sha, path in ls_tree(repo, "refs/heads/git-annex")
            if path.endswith(".log") and path.count("/") == 2]
    catfile = CatFile(repo)

    def ask() -> None:
        for sha, _ in logs:
            catfile.ask(sha, flush=False)
        catfile.end_questions()

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    here = set()
    try:
        for _, key in logs:
            content = catfile.answer()
            if content and uuid in _present_values(content):
                here.add(key)
    finally:
        asker.join()
        catfile.close()
    return here


def reconcile_content(repo: Path, uuid: str) -> None:
    """Make the location log of `repo` (annex UUID `uuid`) say what its annex holds: keys
    whose content is there are recorded as here, keys recorded without content as not."""
    present = _annex_objects(repo)
    logged = _keys_logged_here(repo, uuid)
    unrecorded, lost = present - logged, logged - present
    if not unrecorded and not lost:
        return
    if not journal_is_empty(repo):  # git-annex's own view includes its journal
        proc = git(repo, "annex", "setpresentkey", "--batch", check=False, input="".join(
            [f"{key} {uuid} 1\n" for key in sorted(unrecorded)]
            + [f"{key} {uuid} 0\n" for key in sorted(lost)]))
        if proc.returncode != 0:
            raise RegistrationError(f"git annex setpresentkey failed in {repo}: "
                                    f"{proc.stderr.strip()}")
        return
    with interrupts_deferred():
        if unrecorded:
            record_present(repo, unrecorded, uuid)
        if lost:
            record_absent(repo, lost, uuid)
