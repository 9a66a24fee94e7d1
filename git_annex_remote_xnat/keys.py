"""git-annex keys: building MD5E keys from XNAT's digests, reading keys, and where git-annex
keeps a key (object directory, branch log folder). The one place that knows these formats.

The formats are git-annex's (doc/internals.mdwn, doc/backends.mdwn); tests check each against
the real git-annex (`calckey`, `examinekey`, the objects it writes).
"""

from __future__ import annotations

import hashlib
import re

# the fields before "--": backend, then -s<size>, -m<mtime>, -S<chunksize>, -C<chunknum>
_KEY = re.compile(r"^(?P<backend>[A-Z0-9]+)(?P<fields>(?:-[a-zA-Z][0-9]+)*)--(?P<name>.*)$", re.S)
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_MIXED_CHARS = "0123456789zqjxkmvwgpfZQJXKMVWGPF"


# ------------------------------------------------------------------------------------ building

def md5e_extension(filename: str, max_length: int = 4, max_extensions: int = 2) -> str:
    """The extension git-annex's MD5E backend puts on a key for a file called `filename`.

    Matches git-annex 10.2026 (checked with `git annex calckey --backend=MD5E`): leading dots
    belong to the name; of the dot-separated parts after it, taken from the end while each is at
    most `max_length` bytes (annex.maxextensionlength), keep the ones made of ASCII letters and
    digits or non-ASCII bytes, take the last `max_extensions` (annex.maxextensions), drop empty
    ones. `README` -> '', `a.nii.gz` -> '.nii.gz', `x.tar.gz.md5` -> '.gz.md5',
    `a.tar.gz ` -> '.tar' (the part with a space is skipped, not a stop).
    """
    name = filename.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape").lstrip(b".")
    parts = name.split(b".")[1:]
    if not parts:
        return ""
    kept: list[bytes] = []
    for part in reversed(parts):
        if len(part) > max_length:
            break
        if all(byte >= 0x80 or chr(byte).isalnum() for byte in part):
            kept.append(part)
    chosen = [part for part in reversed(kept[:max_extensions]) if part]
    if not chosen:
        return ""
    return "." + b".".join(chosen).decode("utf-8", "surrogateescape")


def md5e_key(size: int, md5: str, filename: str, max_length: int = 4,
             max_extensions: int = 2) -> str:
    """`MD5E-s<size>--<md5><ext>` for a file whose digest the server already knows."""
    return f"MD5E-s{int(size)}--{md5.lower()}{md5e_extension(filename, max_length, max_extensions)}"


def vurl_key(size: int, url: str, filename: str) -> str:
    """`VURL-s<size>--<hash of the URL><ext>` for a file the server has no digest for, made
    without downloading it.

    git-annex treats a VURL key's name as opaque and verifies its content by the checksum it
    records at the first download (every later copy must match), so the name only has to be
    unique per URL and safe: a SHA-256 of the xnat: URL rather than the URL itself, which
    would need git-annex's own truncation rules to stay under the file name limit.
    """
    name = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"VURL-s{int(size)}--{name}{md5e_extension(filename)}"


def file_md5(path: str, chunk: int = 1 << 20) -> str:
    """The MD5 of a file's content, hex, read in chunks (what an MD5 key names)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- reading

def key_size(key: str) -> int | None:
    """The size a key records (`-s<size>`), or None when it has none (or is no key)."""
    match = _KEY.match(key)
    if not match:
        return None
    for field in match["fields"].split("-")[1:]:
        if field.startswith("s"):
            return int(field[1:])
    return None


def is_vurl_key(key: str) -> bool:
    """Whether git-annex knows the key's content by its first download only (VURL)."""
    match = _KEY.match(key)
    return bool(match) and match["backend"] == "VURL"


def key_md5(key: str) -> str | None:
    """The MD5 digest an MD5 or MD5E key is named by (lower case), else None."""
    match = _KEY.match(key)
    if not match or match["backend"] not in ("MD5", "MD5E"):
        return None
    digest = match["name"].split(".", 1)[0] if match["backend"] == "MD5E" else match["name"]
    return digest.lower() if _HEX32.match(digest) else None


def parse_key(key: str) -> tuple[int | None, str | None]:
    """(size, md5) of a key: what a download of its content is verified against.

    `MD5E-s1024--0123...cdef.nii.gz` -> (1024, '0123...cdef'); `VURL-s10--xnat...` -> (10, None).
    """
    return key_size(key), key_md5(key)


def key_from_target(target: str) -> str | None:
    """The key an annex symlink points to, or None if it is not one."""
    if "/annex/objects/" not in target:
        return None
    return target.rstrip("/").rsplit("/", 1)[-1] or None


# ------------------------------------------------------------------------------------- locations

def hashdir_lower(key: str) -> str:
    """`abc/def/`: where git-annex's branch keeps a key's logs (first 6 hex digits of md5(key))."""
    digest = hashlib.md5(key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{digest[:3]}/{digest[3:6]}/"


def hashdir_mixed(key: str) -> str:
    """`Xy/Zw/`: the two-level object directory of a key in `.git/annex/objects` (non-bare repo)."""
    digest = hashlib.md5(key.encode("utf-8", "surrogateescape")).digest()
    word = int.from_bytes(digest[:4], "little")
    chars = [_MIXED_CHARS[(word >> (6 * i)) & 31] for i in range(8)]
    swapped = []
    for i in range(0, 8, 2):
        swapped += [chars[i + 1], chars[i]]
    text = "".join(swapped[:4])
    return f"{text[:2]}/{text[2:4]}/"


def object_relpath(key: str) -> str:
    """Where git-annex keeps the content of `key`, relative to a non-bare repository's top."""
    return f".git/annex/objects/{hashdir_mixed(key)}{key}/{key}"


def symlink_target(key: str, path_in_dataset: str) -> str:
    """The relative symlink git-annex makes for a locked file at `path_in_dataset`."""
    return "../" * path_in_dataset.count("/") + object_relpath(key)
