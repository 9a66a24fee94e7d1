"""The URL grammar: the one place that knows which paths exist.

`route(path)` names every request by (template, kind, payload): the template is the counters'
key (`counter_key` adds `?format=zip|tar|tar.gz` to an archive request's), the kind picks the
route function in `app`, the payload is what the path carries. Below
`/data` (or `/REST`, either with `/archive`) `parse_data_path` walks one table of entity levels,
so projects, subjects, experiments, scans and assessors share one parser and each level only
says what may follow it.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from .wire import NO_MATCH, HTTPError

LOGIN_PATH = "/app/template/Login.vm"


class Target:
    """A parsed /data path: the entity steps and the action."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []     # (kind, token)
        self.action = ""
        self.template = ""
        self.resource: str | None = None
        self.path: str | None = None
        self.path_is_dir = False
        self.extra: dict[str, str] = {}


# For each entity level (None: the top of /data): the collection words below it (word ->
# the level of its members) and the words that end a path there (word -> action). Every level
# but the top also takes `resources[/{R}[/files[/path]]]` or `files[/path]`; an assessor takes
# `in` or `out` before that.
_LEVELS: dict[str | None, tuple[dict[str, str], dict[str, str]]] = {
    None: ({"projects": "project", "subjects": "subject", "experiments": "experiment"}, {}),
    "project": ({"subjects": "subject", "experiments": "experiment"},
                {"accessibility": "accessibility"}),
    "subject": ({"experiments": "experiment"}, {}),
    "experiment": ({"scans": "scan", "assessors": "assessor"},
                   {"projects": "experiment_projects"}),
    "scan": ({}, {}),
    "assessor": ({}, {}),
}
_PLACEHOLDERS = {"project": "{P}", "subject": "{S}", "experiment": "{E}", "scan": "{SC}",
                 "assessor": "{A}"}


def parse_data_path(segs: list[str]) -> Target:
    """Parse the (decoded) segments below /data[/archive]. Raises HTTPError(404) if unmatched."""
    t = Target()
    tpl: list[str] = []
    n = len(segs)
    i = 0
    level: str | None = None
    while True:
        collections, endings = _LEVELS[level]
        w = segs[i] if i < n else None
        if w is None and level is not None:
            t.action = level                     # the entity itself
            break
        if w in collections:
            tpl.append(w)
            i += 1
            if i == n:
                t.action = w                     # the collection's listing
                break
            level = collections[w]
            tpl.append(_PLACEHOLDERS[level])
            t.steps.append((level, segs[i]))
            i += 1
            continue
        if w in endings:
            tpl.append(w)
            t.action = endings[w]
            i += 1
            break
        if level is None:
            raise HTTPError(404, NO_MATCH)
        if level == "assessor" and w in ("in", "out"):
            tpl.append(w)
            t.extra["io"] = w
            i += 1
            if i == n:
                raise HTTPError(404, NO_MATCH)
        i = _resource_tail(t, tpl, segs, i)
        break
    if i < n:
        raise HTTPError(404, NO_MATCH)
    t.template = "/" + "/".join(tpl)
    return t


def _resource_tail(t: Target, tpl: list[str], segs: list[str], i: int) -> int:
    """`resources[/{R}[/files[/path]]]` or `files[/path]` from segs[i]; returns where it ended."""
    n = len(segs)
    w = segs[i]
    if w == "resources":
        tpl.append(w)
        i += 1
        if i == n:
            t.action = "resources"
            return i
        tpl.append("{R}")
        t.resource = segs[i]
        i += 1
        if i == n:
            t.action = "resource"
            return i
        w = segs[i]
    if w != "files":
        raise HTTPError(404, NO_MATCH)
    tpl.append("files")
    rest = segs[i + 1:]
    if not rest or rest == [""]:
        t.action = "files"
    elif rest[-1] == "":
        t.action = "files"
        t.path = "/".join(s for s in rest if s != "")
        t.path_is_dir = True
        tpl.append("{path}/")
    else:
        t.action = "file"
        t.path = "/".join(rest)
        tpl.append("{path}")
    return n


# `format` values (as `Request.fmt` gives them) that ask for an archive, and its canonical name
ARCHIVE_FORMATS = {"zip": "zip", "tar": "tar", "tar.gz": "tar.gz", "tgz": "tar.gz"}


def archive_format(template: str, fmt: str) -> str | None:
    """The archive ("zip", "tar" or "tar.gz") a request for `template` (a /data route's) with
    format `fmt` asks for, or None: a files listing (`.../files`, `.../files/{path}/`) takes
    all three, one file (`.../files/{path}`) only zip."""
    kind = ARCHIVE_FORMATS.get(fmt or "")
    if kind is None:
        return None
    if template.endswith("/files") or template.endswith("/files/{path}/"):
        return kind
    if template.endswith("/files/{path}") and kind == "zip":
        return kind
    return None


def counter_key(method: str, template: str, kind: str, fmt: str) -> str:
    """The counters' key of a request: method and template, and for an archive of a /data
    route (`kind` "data") `?format=` its archive, e.g.
    "GET /data/experiments/{E}/scans/{SC}/resources/{R}/files?format=zip"."""
    arch = archive_format(template, fmt) if kind == "data" else None
    return f"{method} {template}" + (f"?format={arch}" if arch else "")


def route(path: str) -> tuple[str, str, object]:
    """(template, kind, payload) for a path. kind tells dispatch what to do."""
    raw_segs = path.split("/")[1:]
    segs = [unquote_plus(s) for s in raw_segs]
    if path in ("/", ""):
        return "/", "root", None
    if path.rstrip("/") == LOGIN_PATH:
        return LOGIN_PATH, "login_page", None
    if segs[0] == "xapi":
        rest = "/".join(segs[1:]).rstrip("/")
        if rest == "siteConfig/buildInfo":
            return "/xapi/siteConfig/buildInfo", "build_info", None
        if rest.startswith("users/active/") and rest.count("/") == 2:
            return "/xapi/users/active/{u}", "xapi_users_active", rest.rsplit("/", 1)[1]
        return "/xapi/" + rest, "xapi_unknown", None
    if segs[0] in ("data", "REST"):
        prefix = "/" + segs[0]
        rest = segs[1:]
        if rest and rest[0] == "archive":
            prefix += "/archive"
            rest = rest[1:]
        if len(rest) > 1 and rest[-1] == "" and "files" not in rest[:-1]:
            rest = rest[:-1]
        joined = "/".join(rest)
        if joined in ("JSESSION", "JSESSION/"):
            return prefix + "/JSESSION", "jsession", None
        if joined == "services/auth":
            return prefix + "/services/auth", "services_auth", None
        if joined == "auth":
            return prefix + "/auth", "data_auth", None
        if joined == "version":
            return prefix + "/version", "version", None
        if rest[:2] == ["services", "tokens"]:
            tail = rest[2:]
            if tail == ["issue"]:
                return prefix + "/services/tokens/issue", "token_issue", None
            if len(tail) == 3 and tail[:2] == ["issue", "user"]:
                return prefix + "/services/tokens/issue/user/{u}", "token_issue", tail[2]
            if len(tail) == 3 and tail[0] in ("validate", "invalidate"):
                return (prefix + f"/services/tokens/{tail[0]}/{{a}}/{{s}}",
                        "token_" + tail[0], (tail[1], tail[2]))
            if tail == ["show"]:
                return prefix + "/services/tokens/show", "token_show", None
            return prefix + "/services/tokens/" + "/".join(tail), "unknown", None
        try:
            target = parse_data_path(rest)
        except HTTPError as exc:
            return prefix + "/" + "/".join(raw_segs[len(prefix.split("/")) - 1:]), \
                "unknown", exc
        return prefix + target.template, "data", target
    return path, "not_data", None
