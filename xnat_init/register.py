"""Register files with git-annex without downloading them, in bulk.

The obvious way, `git annex fromkey --batch` plus `git annex registerurl --batch`, costs about
7-14 ms per file (measured: fromkey 4.4 ms, registerurl 2.7 ms per line on 2 cores, each
registerurl line a CLAIMURL round trip to the special remote). For 100,000 files that is 12 to 23
minutes. Almost none of that is necessary work: what a registered file *is* consists of

* a symlink `path -> ../.git/annex/objects/<hashdirmixed>/<key>/<key>` committed to the branch,
* a location log `<hashdirlower>/<key>.log` on the git-annex branch saying the XNAT special
  remote (its UUID) has the key, and
* a URL log `<hashdirlower>/<key>.log.web` with the `xnat:` URL (prefixed with `:`, git-annex's
  mark for URLs claimed by a special remote, as registerurl writes it).

So the default method ("fast-import") writes exactly those with `git fast-import`: commits on the
git-annex branch, one per 50,000 keys (existing logs of a key are read with `git cat-file --batch`
and appended to, never replaced), and one commit on the dataset's branch (its tree built in steps
of 100,000 files, so no fast-import process holds a million objects), then moves the work tree
to it with `git read-tree -m -u` (which refuses, and changes nothing, if a local modification is
in the way). git-annex notices that its branch moved and merges it into its index on the next run
(tested: whereis, get, fsck, and later registerurl calls keep both). The formats are git-annex's
documented internals (doc/internals.mdwn) and are checked against real git-annex in the tests.

The "batch" method (`git annex registerurl --batch` for the git-annex branch) is kept as the
conservative fallback: it is used when git-annex's journal holds uncommitted changes (a user with
annex.alwayscommit=false), and can be chosen with git config `datalad.xnat.register-method=batch`.
Adjusted branches (unlocked or crippled file systems) are refused with a clear message.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from array import array
from bisect import bisect_left
from contextlib import contextmanager
from itertools import chain, islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from git_annex_remote_xnat.keys import hashdir_lower, key_from_target, symlink_target

from .layout import path_hash
from .spool import LineSpool

GITLINK_MODE = "160000"
SYMLINK_MODE = "120000"


class RegistrationError(RuntimeError):
    """Registration could not be done; the dataset's branch is unchanged. The message says why."""


def blob_sha(content: bytes) -> bytes:
    """Git's object id of a blob (the first 8 bytes are enough to compare symlinks)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).digest()


def symlink_fingerprint(key: str, path_in_dataset: str) -> int:
    """64 bits of the blob id git gives the symlink of `key` at that path."""
    target = symlink_target(key, path_in_dataset).encode("utf-8", "surrogateescape")
    return int.from_bytes(blob_sha(target)[:8], "big")


# ---------------------------------------------------------------------------------------------
# git plumbing helpers


def git(repo: Path, *args: str, input: str | bytes | None = None,
        check: bool = True, shielded: bool = False) -> subprocess.CompletedProcess:
    """`shielded`: in a session of its own, so Ctrl-C in the terminal does not stop it midway
    (see interrupts_deferred)."""
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True,
                          text=not isinstance(input, bytes), start_new_session=shielded)
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise RegistrationError(f"git {' '.join(args[:3])} failed in {repo}: {err.strip()}")
    return proc


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits until the block is done, then interrupts as usual.

    For steps that must not stop halfway: once the branch has moved, the index and work tree
    must follow (an update interrupted between the two left every file staged as deleted). Git
    commands in the block run `shielded`, since the terminal sends SIGINT to them too. A SIGINT
    received in the block is sent again after it, under the handler that was there before: a
    KeyboardInterrupt as usual, nothing where SIGINT was ignored (a command started with `&`
    or nohup). Signal handlers belong to the main thread; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)


def _fi_path(path: str) -> bytes:
    """A path as fast-import reads it after `M <mode> <dataref> `: verbatim unless it needs quoting."""
    if "\n" in path or path.startswith('"'):
        return _quote_path(path).encode("utf-8", "surrogateescape")
    return path.encode("utf-8", "surrogateescape")


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


class _CatFile:
    """A `git cat-file --batch` coprocess: one object's content per call, synchronously."""

    def __init__(self, repo: Path) -> None:
        self._proc = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def get(self, spec: str) -> bytes | None:
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(spec.encode("utf-8", "surrogateescape") + b"\n")
        self._proc.stdin.flush()
        header = self._proc.stdout.readline()
        if header.endswith(b" missing\n") or not header:
            return None
        size = int(header.split()[2])
        data = self._proc.stdout.read(size)
        self._proc.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait()


class AnnexBranchLookup:
    """`git cat-file` names for logs on git-annex's branch that skip its root tree.

    `refs/heads/git-annex:abc/def/KEY.log` makes git resolve the ref and inflate the branch's
    root tree (up to 4,096 folders, ~120 KB) for every single lookup: 0.25 ms each, 1.2 s for
    5,000 keys. The root tree is read once here; a lookup then names the key's first-level
    folder by its object ID (`<tree>:def/KEY.log`), a tree of a few entries, and a log whose
    folder does not exist is known to be missing without asking git at all (5,000 keys: 40 ms).
    """

    def __init__(self, repo: Path) -> None:
        listing = git(repo, "ls-tree", "-z", "refs/heads/git-annex", check=False)
        self._folders: dict[str, str] = {}
        for entry in listing.stdout.split("\0"):
            meta, _, name = entry.partition("\t")
            fields = meta.split(" ")
            if len(fields) == 3 and fields[1] == "tree":
                self._folders[name] = fields[2]

    def spec(self, path: str) -> str | None:
        """What to ask `git cat-file` for the branch's `path` (None: it does not exist)."""
        folder, _, rest = path.partition("/")
        tree = self._folders.get(folder)
        return f"{tree}:{rest}" if tree else None


def _finish(proc: subprocess.Popen) -> bytes:
    """Close stdin (if still open), wait, and return stderr."""
    if proc.stdin and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait()
    return err


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


def ident(repo: Path, which: str) -> str:
    return git(repo, "var", f"GIT_{which}_IDENT").stdout.strip()


# ---------------------------------------------------------------------------------------------
# what a dataset already tracks, in flat memory


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
        proc = subprocess.Popen(["git", "-C", str(repo), "ls-tree", "-r", "-z", "--full-tree",
                                 head], stdout=subprocess.PIPE)
        assert proc.stdout
        for entry in _split_z(proc.stdout):
            meta, _, path = entry.partition(b"\t")
            mode, _, sha = meta.split(b" ")
            name = path.decode("utf-8", "surrogateescape")
            if mode == b"160000":
                tree.gitlinks[name] = sha.decode()
                continue
            blob = int(sha[:16], 16) if mode == b"120000" else 0
            pairs.append((path_hash(name), blob))
        proc.wait()
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

    def unseen(self) -> set[int]:
        return {self.paths[i] for i, flag in enumerate(self.seen) if not flag}


def _split_z(stream) -> Iterator[bytes]:
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


def iter_tracked_symlinks(repo: Path, head: str, wanted: set[int]) -> Iterator[tuple[str, str]]:
    """(path, key) of the annexed files of HEAD whose path fingerprints are in `wanted`."""
    if not wanted:
        return
    proc = subprocess.Popen(["git", "-C", str(repo), "ls-tree", "-r", "-z", "--full-tree", head],
                            stdout=subprocess.PIPE)
    assert proc.stdout
    catfile = _CatFile(repo)
    try:
        for entry in _split_z(proc.stdout):
            meta, _, path = entry.partition(b"\t")
            mode, _, sha = meta.split(b" ")
            if mode != b"120000":
                continue
            name = path.decode("utf-8", "surrogateescape")
            if path_hash(name) not in wanted:
                continue
            target = catfile.get(sha.decode()) or b""
            key = key_from_target(target.decode("utf-8", "surrogateescape"))
            if key:
                yield name, key
    finally:
        catfile.close()
        proc.wait()


def key_urls(repo: Path, keys: Iterable[str]) -> dict[str, list[str]]:
    """The URLs git-annex's branch records for each key (claimed ones without their ':' mark)."""
    catfile = _CatFile(repo)
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


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class Change:
    """One registration in one dataset: `path` relative to the dataset, its key and xnat: URL."""

    path: str
    key: str
    url: str


def journal_is_empty(repo: Path) -> bool:
    journal = repo / ".git" / "annex" / "journal"
    try:
        return not any(journal.iterdir())
    except FileNotFoundError:
        return True


def register_method(repo: Path) -> str:
    value = git(repo, "config", "--get", "datalad.xnat.register-method", check=False).stdout.strip()
    return value if value in ("fast-import", "batch") else "fast-import"


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


ANNEX_CHUNK_KEYS = 50_000
# keys read ahead of the fast-import writer (bounds memory)
PENDING_KEYS = 20_000


def _write_annex_branch(repo: Path, pairs_sorted: Iterable[tuple[str, str]], remote_uuid: str,
                        progress: Callable[[int], None] | None,
                        message: bytes = b"update (xnat-update: register keys and xnat: URLs)"
                        ) -> int:
    """Fast-import commits on git-annex's branch: every key present in the repository or
    remote `remote_uuid`, and its URLs; one commit per ANNEX_CHUNK_KEYS keys.

    `pairs_sorted` are (key, url), grouped by key (best in hashdir_lower order); an empty url
    records presence only. Returns the number of keys written.

    Why chunks: git fast-import keeps every object it wrote and every tree it touched in memory
    (about 0.7 KB per key: 220 MB for 300,000 keys in one process). A new process per chunk,
    fed keys in the order of their folders on the branch, touches only its own range of folders.
    """
    if git(repo, "rev-parse", "-q", "--verify", "refs/heads/git-annex",
           check=False).returncode != 0:
        raise RegistrationError(f"{repo} has no git-annex branch; is it a git-annex repository?")
    stamp = f"{int(time.time())}s"
    groups = _grouped_by_key(pairs_sorted)
    written = 0
    while (first := next(groups, None)) is not None:
        chunk = chain([first], islice(groups, ANNEX_CHUNK_KEYS - 1))
        written += _write_annex_chunk(repo, chunk, remote_uuid, stamp, progress, message)
    return written


def _write_annex_chunk(repo: Path, groups: Iterable[tuple[str, list[str]]], remote_uuid: str,
                       stamp: str, progress: Callable[[int], None] | None, message: bytes) -> int:
    """One fast-import commit on git-annex's branch for `groups` of (key, urls).

    The existing logs are read with a pipelined `git cat-file --batch` (a feeder thread asks,
    this thread reads the answers in order), so no request waits for the previous answer.
    """
    import queue

    who = ident(repo, "COMMITTER")
    proc = subprocess.Popen(["git", "-C", str(repo), "fast-import", "--quiet", "--done"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    catfile = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and catfile.stdin and catfile.stdout
    out = proc.stdin
    answers = catfile.stdout
    out.write(b"commit refs/heads/git-annex\n")
    out.write(f"committer {who}\n".encode())
    out.write(b"data %d\n%s\n" % (len(message), message))
    out.write(b"from refs/heads/git-annex^0\n")
    pending: queue.Queue = queue.Queue(maxsize=PENDING_KEYS)
    feed_error: list[BaseException] = []
    branch = AnnexBranchLookup(repo)

    def feed() -> None:
        try:
            for key, urls in groups:
                base = f"{hashdir_lower(key)}{key}"
                # both logs live in one folder: if it exists, both are asked for (a missing
                # one is answered "missing"); if not, neither is
                log = branch.spec(base + ".log")
                asked = log is not None
                pending.put((base, urls, asked))
                if asked:
                    wanted = f"{log}\n"
                    if urls:
                        wanted += f"{branch.spec(base + '.log.web')}\n"
                    catfile.stdin.write(wanted.encode("utf-8", "surrogateescape"))
                    # at once: the reader may wait for this answer while keys that need no
                    # question fill `pending` and stop this thread (a deadlock, seen at a
                    # chunk's start: a few keys in folders that exist, then none)
                    catfile.stdin.flush()
            catfile.stdin.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            feed_error.append(exc)
        finally:
            pending.put(None)

    def answer() -> bytes | None:
        header = answers.readline()
        if not header or header.endswith(b" missing\n"):
            return None
        size = int(header.split()[2])
        data = answers.read(size)
        answers.read(1)
        return data

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    chunk: list[bytes] = []
    written = 0

    def emit(path: str, content: bytes) -> None:
        chunk.append(b"M 100644 inline " + _fi_path(path) + b"\ndata %d\n" % len(content)
                     + content + b"\n")

    try:
        while True:
            item = pending.get()
            if item is None:
                break
            base, urls, asked = item
            location = _annex_log_with(answer() if asked else None, remote_uuid, stamp)
            if location is not None:
                emit(base + ".log", location)
            web = answer() if urls and asked else None
            changed = False
            for url in urls:
                updated = _annex_log_with(web, ":" + url, stamp)
                if updated is not None:
                    web, changed = updated, True
            if changed and web is not None:
                emit(base + ".log.web", web)
            written += 1
            if len(chunk) >= 2000:
                out.write(b"".join(chunk))
                chunk.clear()
            if progress:
                progress(1)
        out.write(b"".join(chunk) + b"\ndone\n")
        out.close()
    finally:
        feeder.join()
        try:
            catfile.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        catfile.wait()
    if feed_error:
        raise RegistrationError(f"reading the registered keys failed: {feed_error[0]}")
    err = _finish(proc)
    if proc.returncode != 0:
        raise RegistrationError(f"git fast-import (git-annex branch) failed in {repo}: "
                                f"{err.decode(errors='replace').strip()}")
    return written


def annex_json_results(lines: Iterable[str]) -> Iterator[dict]:
    """The result records of a `git annex … --json` run (one per file or key; other lines and
    records without "success", such as progress, are skipped)."""
    import json

    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "success" in record:
            yield record


def _register_urls_batch(repo: Path, pairs: Iterable[tuple[str, str]], remote_name: str,
                         progress: Callable[[int], None] | None) -> None:
    """The conservative way: `git annex registerurl --batch` (a CLAIMURL per line)."""
    proc = subprocess.Popen(["git", "-C", str(repo), "annex", "registerurl", "--batch",
                             f"--remote={remote_name}", "--json", "--json-error-messages"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdin

    failures: list[str] = []

    def read() -> None:
        assert proc.stdout
        for record in annex_json_results(proc.stdout):
            if not record["success"]:
                failures.append(" ".join(record.get("error-messages", [])) or str(record))
            if progress:
                progress(1)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for key, url in pairs:
        proc.stdin.write(f"{key} {url}\n")
    proc.stdin.close()
    reader.join()
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    if proc.returncode != 0 or failures:
        raise RegistrationError("git annex registerurl failed: "
                                + ("; ".join(failures[:3]) or err.strip()))


TREE_CHUNK_CHANGES = 100_000


def commit_tree_changes(repo: Path, changes: Iterable[Change], removals: Iterable[str],
                        gitlinks: dict[str, str], message: str, extra_files: dict[str, bytes] | None = None,
                        ) -> str | None:
    """One commit on the dataset's branch: symlinks for `changes`, deletions, subdataset commits.

    The tree is built by git fast-import in steps of TREE_CHUNK_CHANGES changes (a process each:
    fast-import keeps every object it wrote in memory), on a temporary ref; the last step's tree
    then becomes one commit on top of HEAD, so the history shows one commit whatever the size.
    The work tree and index follow with `git read-tree -m -u`; if that is refused (a local change
    in the way), the branch is put back and RegistrationError raised. Returns the new commit, or
    None when nothing changed.
    """
    ref, head = current_branch(repo)
    temp_ref = "refs/xnat-update/pending"
    pending = iter(changes)
    count = 0
    base = head
    first = True
    try:
        # deletions, subdatasets and configuration files go with the first step
        while (change := next(pending, None)) is not None or first:
            step = chain([change], islice(pending, TREE_CHUNK_CHANGES - 1)) if change else ()
            count += _import_tree_step(
                repo, temp_ref, base, message, step, removals if first else (),
                gitlinks if first else {}, (extra_files or {}) if first else {})
            base, first = temp_ref, False
    except RegistrationError:
        git(repo, "update-ref", "-d", temp_ref, check=False)
        raise
    tree = git(repo, "rev-parse", f"{temp_ref}^{{tree}}").stdout.strip()
    git(repo, "update-ref", "-d", temp_ref, check=False)
    if count == 0 or (head and tree == git(repo, "rev-parse", f"{head}^{{tree}}").stdout.strip()):
        return None
    new = git(repo, "commit-tree", tree, *(["-p", head] if head else []),
              input=message).stdout.strip()
    with interrupts_deferred():
        git(repo, "update-ref", "-m", "xnat-update", ref, new, head or "0" * 40, shielded=True)
        move = git(repo, "read-tree", "-m", "-u", *([head] if head else []), new, check=False,
                   shielded=True)
        if move.returncode != 0:
            git(repo, "update-ref", "-m", "xnat-update: undo", ref, head or "0" * 40, new,
                check=False, shielded=True)
    if move.returncode != 0:
        raise RegistrationError(f"cannot update the work tree of {repo}: {move.stderr.strip()}; "
                                "commit or discard local changes and run again")
    return new


def _import_tree_step(repo: Path, temp_ref: str, base: str | None, message: str,
                      changes: Iterable[Change], removals: Iterable[str], gitlinks: dict[str, str],
                      extra_files: dict[str, bytes]) -> int:
    """One git fast-import run: a commit on `temp_ref` from `base` with these tree changes."""
    proc = subprocess.Popen(["git", "-C", str(repo), "fast-import", "--quiet", "--done",
                             "--force"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin
    out = proc.stdin
    body = message.encode("utf-8")
    out.write(f"commit {temp_ref}\n".encode())
    out.write(f"author {ident(repo, 'AUTHOR')}\n".encode())
    out.write(f"committer {ident(repo, 'COMMITTER')}\n".encode())
    out.write(b"data %d\n%s\n" % (len(body), body))
    if base:
        out.write(f"from {base}^0\n".encode())
    count = 0
    try:
        for path in removals:
            out.write(f"D {_quote_path(path)}\n".encode("utf-8", "surrogateescape"))
            count += 1
        chunk: list[bytes] = []
        for change in changes:
            target = symlink_target(change.key, change.path).encode("utf-8", "surrogateescape")
            chunk.append(b"M 120000 inline " + _fi_path(change.path) + b"\ndata %d\n"
                         % len(target) + target + b"\n")
            count += 1
            if len(chunk) >= 2000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
        for path, commit in gitlinks.items():
            out.write(f"M {GITLINK_MODE} {commit} {_quote_path(path)}\n"
                      .encode("utf-8", "surrogateescape"))
            count += 1
        for path, content in extra_files.items():
            out.write(f"M 100644 inline {_quote_path(path)}\n".encode("utf-8", "surrogateescape"))
            out.write(b"data %d\n" % len(content) + content + b"\n")
            count += 1
        out.write(b"\ndone\n")
        out.close()
    except BrokenPipeError:
        pass
    err = _finish(proc)
    if proc.returncode != 0:
        raise RegistrationError(f"git fast-import failed in {repo}: "
                                f"{err.decode(errors='replace').strip()}")
    return count


def register_keys(repo: Path, pairs_sorted: Iterable[tuple[str, str]], remote_uuid: str,
                  remote_name: str, progress: Callable[[int], None] | None = None) -> None:
    """Record in git-annex's branch that the remote has each key, and its xnat: URL."""
    if register_method(repo) == "batch" or not journal_is_empty(repo):
        _register_urls_batch(repo, pairs_sorted, remote_name, progress)
    else:
        _write_annex_branch(repo, pairs_sorted, remote_uuid, progress)


def record_present(repo: Path, keys: Iterable[str], uuid: str) -> None:
    """Record in git-annex's branch that the repository `uuid` has each key (content placed
    by content.AnnexPlacer). The caller checked that git-annex's journal is empty."""
    ordered = sorted(set(keys), key=lambda key: (hashdir_lower(key), key))
    _write_annex_branch(repo, ((key, "") for key in ordered), uuid, None,
                        message=b"update (xnat-update: content fetched from XNAT)")


class KeySpool:
    """(key, url) pairs spooled to disk and sorted with `sort`, to keep memory flat: grouped by
    key, in the order of the keys' folders on git-annex's branch (hashdir_lower)."""

    def __init__(self) -> None:
        self._spool = LineSpool("xnat-keys-")

    @property
    def count(self) -> int:
        return self._spool.count

    def add(self, key: str, url: str) -> None:
        # prefixed with the key's folder on git-annex's branch: sorted that way, each chunk
        # of _write_annex_branch touches a narrow range of the branch's folders
        self._spool.write(f"{hashdir_lower(key)}{key}\t{url}\n")

    def sorted_pairs(self) -> Iterator[tuple[str, str]]:
        self._spool.flush()
        env = dict(os.environ, LC_ALL="C")
        # -S: sort's own buffer, else it holds the whole spool in memory (250 MB at 1M files)
        proc = subprocess.Popen(["sort", "-S", "32M", "-t", "\t", "-k1,1", "-s",
                                 self._spool.path],
                                stdout=subprocess.PIPE, env=env, text=True,
                                encoding="utf-8", errors="surrogateescape")
        assert proc.stdout
        for line in proc.stdout:
            located, _, url = line.rstrip("\n").partition("\t")
            yield located[len("abc/def/"):], url
        proc.wait()

    def close(self) -> None:
        self._spool.close()
