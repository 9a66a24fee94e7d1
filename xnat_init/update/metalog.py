"""git-annex's metadata log, `<hashdirlower>/<key>.log.met` on the git-annex branch.

xnat-update writes the metadata of many thousands of keys in the fast-import pass that registers
them, so it writes the log itself instead of running `git annex metadata` (one process per
file, or one batch line per key). The format, as git-annex reads and writes it (its
Logs/MetaData.hs, Logs/MetaData/Pure.hs, Logs/SingleValue/Pure.hs, Types/MetaData.hs):

    1796277821s quality +usable scan_type +T1w series_description +!VDEgTVBSQUdFIHNhZw==
    1796277822s quality +unusable -usable

* one line per change: a timestamp (seconds since the epoch, maybe with decimals, then `s`),
  a space, then fields, each followed by its values; `+value` sets a value, `-value` records
  that it is no longer set (unsets are kept so that a union merge of two clones stays right);
* fields are case-insensitive and written in case-folded order, values in byte order;
* a value that contains a space, CR or LF, or starts with `!`, is written `!` + base64;
* the current state: lines from oldest to newest, a newer `+`/`-` of a value overriding an older;
* when git-annex adds a line it "simplifies" the log: from an older line it drops the values a
  newer line names, drops lines left empty, and keeps that form only if it has fewer lines.

`updated` does what `git annex metadata -s field+=value -s field-=value` does to one key's log,
and nothing when the log already says so; the tests compare its output with git-annex's own
writes and with what `git annex metadata --json` reads back.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Collection, Hashable, Iterable, Mapping

_STAMP = re.compile(rb"(-?[0-9]+)(?:\.([0-9]*))?s? ")


@dataclass(frozen=True)
class LogLine:
    """One line of the log: when, and per field (its name as written) the values it sets
    (True) or unsets (False)."""

    stamp: Decimal
    fields: tuple[tuple[str, tuple[tuple[bytes, bool], ...]], ...]

    def folded(self) -> dict[str, dict[bytes, bool]]:
        return {name.casefold(): dict(values) for name, values in self.fields}


def _decode_value(token: bytes) -> tuple[bytes, bool] | None:
    """A `+value`/`-value` token, or None when the token is not one (then it names a field)."""
    if not token or token[:1] not in (b"+", b"-"):
        return None
    value = token[1:]
    if value.startswith(b"!"):
        try:
            value = base64.b64decode(value[1:], validate=True)
        except (binascii.Error, ValueError):
            return None
    return value, token[:1] == b"+"


def encode_value(value: bytes, is_set: bool) -> bytes:
    """A value as the log writes it (base64 where a plain one would break the line)."""
    if any(ch in value for ch in (b" ", b"\r", b"\n")) or value.startswith(b"!"):
        value = b"!" + base64.b64encode(value)
    return (b"+" if is_set else b"-") + value


def _parse_fields(rest: bytes) -> tuple[tuple[str, tuple[tuple[bytes, bool], ...]], ...]:
    """The fields of one line after its timestamp; git-annex splits on single spaces and stops
    at a field name that is not UTF-8."""
    fields: dict[str, tuple[str, dict[bytes, bool]]] = {}
    tokens = rest.split(b" ")
    index = 0
    while index < len(tokens):
        try:
            name = tokens[index].decode("utf-8")
        except UnicodeDecodeError:
            break
        index += 1
        entry = fields.setdefault(name.casefold(), (name, {}))
        while index < len(tokens) and (value := _decode_value(tokens[index])) is not None:
            entry[1][value[0]] = value[1]
            index += 1
    return tuple((name, tuple(sorted(values.items()))) for name, values in fields.values()
                 if values)


def parse(content: bytes) -> list[LogLine]:
    """The log's lines, oldest first; lines git-annex could not parse are left out, as it
    leaves them out."""
    lines = []
    for raw in content.split(b"\n"):
        match = _STAMP.match(raw)
        if not match:
            continue
        whole, fraction = match.group(1), match.group(2) or b""
        stamp = Decimal(f"{whole.decode()}.{fraction.decode() or '0'}")
        fields = _parse_fields(raw[match.end():])
        if fields:
            lines.append(LogLine(stamp, fields))
    return sorted(set(lines), key=_order)


def _order(line: LogLine) -> tuple[Decimal, bytes]:
    return line.stamp, _serialise_fields(line.fields)


def current(lines: Iterable[LogLine]) -> dict[str, set[bytes]]:
    """The values set now, by case-folded field: each value's newest line decides."""
    state: dict[str, dict[bytes, bool]] = {}
    for line in sorted(lines, key=_order):
        for name, values in line.folded().items():
            state.setdefault(name, {}).update(values)
    return {name: {value for value, is_set in values.items() if is_set}
            for name, values in state.items()
            if any(values.values())}


def format_stamp(stamp: Decimal) -> str:
    """A timestamp as git-annex shows it: `123s`, `123.5s` (no trailing zeros)."""
    text = format(stamp.normalize(), "f") if stamp != stamp.to_integral() else \
        str(int(stamp))
    return text + "s"


def _serialise_fields(fields: Iterable[tuple[str, Iterable[tuple[bytes, bool]]]]) -> bytes:
    out = []
    for name, values in sorted(fields, key=lambda field: field[0].casefold()):
        out.append(name.encode("utf-8"))
        out.extend(encode_value(value, is_set) for value, is_set in sorted(values))
    return b" ".join(out)


def serialise(lines: Iterable[LogLine]) -> bytes:
    """The log's content (a line each, oldest first)."""
    return b"".join(format_stamp(line.stamp).encode() + b" " + _serialise_fields(line.fields)
                    + b"\n" for line in sorted(lines, key=_order))


def simplify(lines: list[LogLine]) -> list[LogLine]:
    """git-annex's simplification: values a newer line names are dropped from older lines, and
    lines left empty go; the result is used only when it has fewer lines."""
    newest_first = sorted(lines, key=_order, reverse=True)
    if not newest_first:
        return lines
    kept = [newest_first[0]]
    named: dict[str, set[bytes]] = {name: set(values)
                                    for name, values in newest_first[0].folded().items()}
    for line in newest_first[1:]:
        unique = []
        for name, values in line.fields:
            seen = named.get(name.casefold(), set())
            left = tuple(item for item in values if item[0] not in seen)
            if left:
                unique.append((name, left))
        if not unique:
            continue
        kept.append(LogLine(line.stamp, tuple(unique)))
        for name, values in unique:
            named.setdefault(name.casefold(), set()).update(value for value, _ in values)
    return sorted(kept, key=_order) if len(kept) < len(lines) else lines


def updated(content: bytes | None, wanted: Mapping[str, Collection[str]],
            unwanted: Mapping[str, Collection[str]], now: int) -> bytes | None:
    """The log with every `wanted` value set and every `unwanted` one (that is not also
    wanted) unset; None when it says so already (nothing to write).

    The new line's timestamp is `now` or, when the log has a line that new or newer (two
    updates within a second, a clock behind), one second after its newest line: a line with
    the same timestamp as another would not reliably win.
    """
    lines = parse(content) if content else []
    state = current(lines)
    changes: dict[str, dict[bytes, bool]] = {}
    for name, values in wanted.items():
        have = state.get(name.casefold(), set())
        for value in values:
            raw = value.encode("utf-8", "surrogateescape")
            if raw not in have:
                changes.setdefault(name, {})[raw] = True
    for name, values in unwanted.items():
        have = state.get(name.casefold(), set())
        keep = {value.encode("utf-8", "surrogateescape") for value in wanted.get(name, ())}
        for value in values:
            raw = value.encode("utf-8", "surrogateescape")
            if raw in have and raw not in keep:
                changes.setdefault(name, {})[raw] = False
    if not changes:
        return None
    newest = max((line.stamp for line in lines), default=None)
    stamp = Decimal(now)
    if newest is not None and stamp <= newest:
        stamp = Decimal(int(newest.to_integral_value(rounding="ROUND_FLOOR")) + 1)
    line = LogLine(stamp, tuple((name, tuple(sorted(values.items())))
                                for name, values in changes.items()))
    return serialise(simplify(lines + [line]))


@dataclass(frozen=True)
class MetaChange:
    """What one key's log must say: the `wanted` values set, the `unwanted` ones unset
    (unless also wanted). `token`, when given, names `wanted` for a cache: keys that had no
    log and get equal tokens get the same new log (most keys of a scan do)."""

    wanted: Mapping[str, Collection[str]]
    unwanted: Mapping[str, Collection[str]]
    token: Hashable | None = None


class LogWriter:
    """`updated` for many keys at one time `now`, the new logs of keys without one cached by
    their change's token (serialising a log costs more than the rest of a key's registration)."""

    def __init__(self, now: int) -> None:
        self.now = now
        self._fresh: dict[Hashable, bytes] = {}

    def updated(self, content: bytes | None, change: MetaChange) -> bytes | None:
        if content or change.token is None:
            return updated(content, change.wanted, change.unwanted, self.now)
        found = self._fresh.get(change.token)
        if found is None:
            found = self._fresh[change.token] = updated(None, change.wanted, {}, self.now) \
                or b""
        return found or None
