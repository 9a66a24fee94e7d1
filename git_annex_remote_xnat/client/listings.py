"""XNAT's listings as typed records: one function per listing, one record type per row kind.

XNAT sends every value as a string and some servers say ``id`` instead of ``ID``; the
`from_row` constructors absorb that, so callers see fields with fixed names and types. Records
are built from the rows as the session parses them, so a listing's raw rows are never all held.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Iterable, TypeVar
from urllib.parse import quote, unquote

from .errors import NotXnatError
from .session import Session

_T = TypeVar("_T")


def _row_id(row: dict[str, Any]) -> str:
    return str(row.get("ID") or row.get("id") or "")


def _texts(row: dict[str, Any], *keys: str) -> list[str]:
    return [str(row.get(key, "")) for key in keys]


def _with_uri(cls: type[_T], row: dict[str, Any], level: str, *keys: str) -> _T:
    """A record of the ID, the `keys` as text and the URI. Some listings leave the URI out;
    /data/<level>/<ID> then names the same thing (XNAT answers it for every level here)."""
    rid = _row_id(row)
    return cls(rid, *_texts(row, *keys), str(row.get("URI") or f"/data/{level}/{rid}"))


def int_or_none(value: Any) -> int | None:
    """An XNAT number (sent as text, maybe padded) as int; None when it is not one."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _digest(value: Any) -> str | None:
    value = str(value or "").strip().lower()
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


def uri_part(uri: str, after: str) -> str:
    """The path segment that follows `/<after>/` in a URI (scan ID after /scans/, ...)."""
    parts = uri.split("/")
    try:
        return parts[parts.index(after) + 1]
    except (ValueError, IndexError):
        return ""


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    secondary_id: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Project":
        return _with_uri(cls, row, "projects", "name", "description", "secondary_ID")


@dataclass(frozen=True)
class Subject:
    id: str
    label: str
    project: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Subject":
        return _with_uri(cls, row, "subjects", "label", "project")


@dataclass(frozen=True)
class Experiment:
    id: str
    label: str
    project: str
    subject_id: str
    subject_label: str
    xsi_type: str
    date: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Experiment":
        return _with_uri(cls, row, "experiments", "label", "project", "subject_ID",
                         "subject_label", "xsiType", "date")


@dataclass(frozen=True)
class Assessor:
    """An image assessor (QC, segmentation, processed data) of a session."""

    id: str
    label: str
    session_id: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Assessor":
        return _with_uri(cls, row, "experiments", "label", "session_ID")


@dataclass(frozen=True)
class Scan:
    id: str
    type: str
    series_description: str
    quality: str
    xsi_type: str
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Scan":
        return cls(_row_id(row), *_texts(row, "type", "series_description", "quality", "xsiType",
                                         "URI"))


@dataclass(frozen=True)
class Resource:
    id: str
    label: str
    format: str
    content: str
    category: str
    file_count: int | None
    file_size: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Resource":
        return cls(str(row.get("xnat_abstractresource_id") or _row_id(row)),
                   *_texts(row, "label", "format", "content", "category"),
                   int_or_none(row.get("file_count")), int_or_none(row.get("file_size")))


_FILE_URI = re.compile(r"/resources/([^/]+)/files/(.+)$")


@dataclass(frozen=True)
class RemoteFile:
    """One row of a `.../files` listing."""

    name: str
    path: str          # relative path inside the resource (what follows /files/ in the URI)
    size: int | None
    md5: str | None
    resource: str      # the resource label (`collection`)
    resource_id: str   # XNAT's numeric resource id (`cat_ID`)
    uri: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RemoteFile":
        uri = str(row.get("URI", ""))
        name = str(row.get("Name", ""))
        match = _FILE_URI.search(uri)
        path = match.group(2) if match else name
        # Servers differ in whether the URI is percent-encoded; the basename `Name` decides.
        if path.rsplit("/", 1)[-1] != name and unquote(path.rsplit("/", 1)[-1]) == name:
            path = unquote(path)
        resource_id = str(row.get("cat_ID", "")) or (match.group(1) if match else "")
        return cls(name, path, int_or_none(row.get("Size")), _digest(row.get("digest")),
                   str(row.get("collection", "")), resource_id, uri)


def projects(session: Session) -> list[Project]:
    """The projects this user can read."""
    return [Project.from_row(row) for row in session.iter_rows("/data/projects")]


def project(session: Session, project_id: str) -> Project:
    """One project by ID or alias; NotFoundError when missing or private."""
    data = session.get_json(f"/data/projects/{quote(project_id, safe='')}")
    try:
        fields = next(item["data_fields"] for item in data["items"]
                      if not item.get("meta", {}).get("isHistory"))
    except (KeyError, TypeError, StopIteration) as exc:
        raise NotXnatError(f"unexpected answer for project {project_id}") from exc
    return Project.from_row(fields)


def subjects(session: Session, project_id: str) -> list[Subject]:
    path = f"/data/projects/{quote(project_id, safe='')}/subjects"
    return [Subject.from_row(row) for row in session.iter_rows(path)]


EXPERIMENT_COLUMNS = "ID,label,project,subject_ID,subject_label,xsiType,date,insert_date"


def experiments(session: Session, project_id: str, subject: str | None = None) -> list[Experiment]:
    """Imaging sessions (subject assessors) of a project, optionally of one subject."""
    path = f"/data/projects/{quote(project_id, safe='')}"
    if subject:
        path += f"/subjects/{quote(subject, safe='')}"
    rows = session.iter_rows(path + "/experiments", {"columns": EXPERIMENT_COLUMNS})
    return [Experiment.from_row(row) for row in rows]


def scans(session: Session, experiment: str) -> list[Scan]:
    return [Scan.from_row(row)
            for row in session.iter_rows(f"/data/experiments/{quote(experiment, safe='')}/scans")]


def resources(session: Session, rest_path: str) -> list[Resource]:
    """Resources of any level: `rest_path` is e.g. /data/experiments/E/scans/1."""
    path = rest_path.rstrip("/") + "/resources"
    return [Resource.from_row(row) for row in session.iter_rows(path)]


def files(session: Session, rest_path: str) -> list[RemoteFile]:
    """Files of a resource or of all resources of a level (`.../files` is appended if missing)."""
    rest_path = rest_path.rstrip("/")
    if not rest_path.endswith("/files"):
        rest_path += "/files"
    return [RemoteFile.from_row(row) for row in session.iter_rows(rest_path)]


def matches(patterns: Iterable[str], *values: str) -> bool:
    """Whether one of `values` (an ID, a label) matches one of the shell-style `patterns`
    (`SUBJ0*`, `*_MR?`); a name without `*`, `?` or `[` matches only itself. Case-sensitive,
    as XNAT's labels are."""
    return any(fnmatchcase(value, pattern) for pattern in patterns for value in values if value)


def unknown_names(names: Iterable[str], known: Iterable[tuple[str, str]]) -> list[str]:
    """The `names` (patterns) that match neither the ID nor the label of any (ID, label) pair
    in `known`."""
    known = list(known)
    return [name for name in names if not any(matches([name], *pair) for pair in known)]


def some_names(known: Iterable[tuple[str, str]], limit: int = 10) -> str:
    """A few of the labels of `known`, for a message that says what does exist."""
    labels = sorted({label or rid for rid, label in known})
    return ", ".join(labels[:limit]) + (" ..." if len(labels) > limit else "") or "none"


@dataclass(frozen=True)
class AliasToken:
    """An alias token: `alias` and `secret` log in like a user name and password.

    `expires` is seconds since the epoch, None when the server did not say: XNAT 1.7+ sends
    epoch milliseconds as a number, older servers a `yyyyMMdd_HHmmss` text."""

    alias: str
    secret: str = field(repr=False)
    expires: float | None = None

    @classmethod
    def from_answer(cls, answer: Any) -> "AliasToken":
        if not isinstance(answer, dict) or not answer.get("alias") or not answer.get("secret"):
            raise NotXnatError("the server's answer to /data/services/tokens/issue is not an "
                               "alias token; this XNAT may not issue tokens", None, "")
        return cls(str(answer["alias"]), str(answer["secret"]),
                   _expiry(answer.get("estimatedExpirationTime")))


def _expiry(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1000.0
    try:
        return float(calendar.timegm(time.strptime(str(value), "%Y%m%d_%H%M%S")))
    except (TypeError, ValueError):
        return None


def alias_token(session: Session) -> AliasToken:
    """`GET /data/services/tokens/issue`: a new token of the logged-in user."""
    return AliasToken.from_answer(session.get_json("/data/services/tokens/issue"))
