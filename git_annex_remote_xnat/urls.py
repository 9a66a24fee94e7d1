"""The `xnat:` URL format, both directions, in one place.

An `xnat:` URL names one file on one XNAT server without any secret:

    xnat://<host>[:<port>][<context path>]/<REST path below /data>

    xnat://xnat.example.org/projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/scans/1/resources/DICOM/files/a/b%20c.dcm
    xnat://xnat.example.org/projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/resources/BIDS/files/sub-01/anat/T1w.nii.gz
    xnat://xnat.example.org/projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/assessors/XNAT_E00003/resources/QC/files/qc.txt
    xnat://xnat.example.org/projects/P1/subjects/XNAT_S00001/resources/notes/files/x.txt
    xnat://xnat.example.org/projects/P1/resources/protocol/files/README.txt

Why this shape:
* No scheme of its own: whether the server speaks http or https is the special remote's `url=`
  setting, so a move to https is a configuration change, not a re-registration of every file.
* The host (and context path) stays in the URL so that one dataset can track several servers and
  each special remote claims only its own server's URLs.
* The archive path of XNAT, with stable identifiers only: the project, subject and session
  accession IDs (labels can be renamed), scan and assessor IDs, resource labels (the numeric resource id in XNAT's listing URIs changes when a catalog is rebuilt), and
  the relative path inside the resource, which may contain `/`. The project and subject in the
  URL say which project the file is tracked for (a session shared into two projects has a URL
  in each), so whether a tracked file belongs to an update's scope is read from its URL alone,
  also once its session is deleted on the server.
* Older registrations named session and scan resources `experiments/<session ID>/...` without
  project and subject; those URLs still work and are still parsed.
* Every path segment is percent-encoded (`safe=""`), so the URL has no spaces (annexremote and the
  protocol's space-separated fields reject them) and `+` travels as `%2B` (XNAT decodes a bare `+`
  as a space, like Java's URLDecoder). The encoded path is exactly what the REST request needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .records import LEVELS, FileRecord

SCHEME = "xnat"
_PREFIX = SCHEME + "://"
# What may follow the server part; anything else is not a file URL of ours.
_TOP_LEVELS = ("experiments/", "projects/")
# Resource labels are percent-encoded, so they never contain a `/`.
_RESOURCE_FILES = re.compile(r"/resources/[^/]+/files/(.+)$")


class XnatUrlError(ValueError):
    """A string that is not a usable XNAT base URL or xnat: URL."""


def masked_url(url: str) -> str:
    """`url` with whatever may be a user name and password (up to its last `@`) shown as `***`.

    For messages about a URL that is refused or unparsable: it cannot be trusted to parse, so
    everything before the last `@` after the scheme goes, a password with a `/` in it too.
    """
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("//")
    if not sep or "@" in scheme:
        scheme, rest = "", url
    else:
        scheme += sep
    return f"{scheme}***@{rest.rsplit('@', 1)[1]}"


def normalize_base_url(url: str) -> str:
    """`HTTPS://Host:443/xnat/` -> `https://host:443/xnat`: the form every module compares.

    Raises XnatUrlError for anything that is not an http(s) URL without query, fragment or
    credentials, because a secret in `url=` would be stored in git-annex's branch. The
    messages never show a password (masked_url).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise XnatUrlError(
            f"{masked_url(url.strip())!r} is not an XNAT server URL; "
            "give it as http(s)://host[:port][/path]"
        )
    try:
        parts.port  # parsed lazily: raises here for a port that is not a number
        port_error = False
    except ValueError:  # "http://user:pass/word@host" too: the password taken for a port
        port_error = True
    if parts.username is not None or parts.password is not None or (port_error and "@" in url):
        raise XnatUrlError(
            "the server URL must not contain a user name or password; "
            "use --credential and the keyring or DATALAD_CREDENTIAL_* variables instead"
        )
    if port_error:
        raise XnatUrlError(f"{url.strip()!r} has a port that is not a number; "
                           "give it as http(s)://host[:port][/path]")
    if parts.query or parts.fragment:
        raise XnatUrlError("the server URL must not have a query (?...) or fragment (#...)")
    return f"{scheme}://{_server_id(url)}"


def _server_id(base_url: str) -> str:
    """host[:port][/context path], host lower-cased, without trailing slash."""
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    path = parts.path.rstrip("/")
    if path.endswith("/data"):  # people paste the REST root; the context path is what is above it
        path = path[: -len("/data")]
    return f"{host}{port}{path}"


def server_id(base_url: str) -> str:
    """The server part of this server's xnat: URLs (`host[:port][/context]`)."""
    return _server_id(normalize_base_url(base_url))


def _quote(value: str) -> str:
    """One percent-encoded segment. A lone surrogate (a name that is not valid UTF-8) is
    encoded as is instead of raising, so such a file still has a URL to be reported by."""
    return quote(value, safe="", errors="surrogatepass")


def _quote_path(path: str) -> str:
    return "/".join(_quote(segment) for segment in path.strip("/").split("/"))


def _level_path(record: FileRecord) -> str:
    """REST path (below /data) of the entity that owns the record's resource."""
    quoted = _quote
    if record.level not in LEVELS:
        raise XnatUrlError(f"unknown resource level {record.level!r}")
    path = f"projects/{quoted(record.project)}"
    if record.level == "project":
        return path
    if record.subject_id:
        path += f"/subjects/{quoted(record.subject_id)}"
    if record.level == "subject":
        return path
    path += f"/experiments/{quoted(record.session_id)}"
    if record.level == "scan":
        return path + f"/scans/{quoted(record.scan_id)}"
    if record.level == "assessor":
        return path + f"/assessors/{quoted(record.assessor_id)}"
    return path


def file_url(base_url: str, record: FileRecord) -> str:
    """The xnat: URL of one file record on the server at base_url."""
    resource = record.resource or "NULL"  # XNAT addresses a resource with an empty label as NULL
    return (
        f"{_PREFIX}{server_id(base_url)}/{_level_path(record)}"
        f"/resources/{_quote(resource)}/files/{_quote_path(record.path)}"
    )


def claims(xnat_url: str, base_url: str) -> bool:
    """Whether xnat_url is a file URL of the server at base_url.

    A pure string test that never raises: git-annex asks it for every URL it registers.
    """
    try:
        prefix = f"{_PREFIX}{server_id(base_url)}/"
    except (XnatUrlError, ValueError):
        return False
    if not xnat_url.startswith(prefix) or any(c.isspace() for c in xnat_url):
        return False
    rest = xnat_url[len(prefix):]
    return rest.startswith(_TOP_LEVELS) and _RESOURCE_FILES.search(rest) is not None


def rest_path(xnat_url: str, base_url: str) -> str:
    """`/data/...` to request for xnat_url, relative to base_url (which carries any context path)."""
    if not claims(xnat_url, base_url):
        raise XnatUrlError(f"{xnat_url} is not a file URL of the XNAT server {base_url}")
    return "/data/" + xnat_url[len(f"{_PREFIX}{server_id(base_url)}/"):]


@dataclass(frozen=True)
class FileLocation:
    """What an xnat: file URL names, decoded: the owner of the resource, the resource, the file.

    `project` and `subject_id` are empty for session and scan resources registered in the older
    form (`experiments/<ID>/...`, the session by its accession ID only); `scan_id` is set for
    scan resources only, `assessor_id` for assessor resources only.
    """

    level: str
    project: str
    subject_id: str
    session_id: str
    scan_id: str
    resource: str
    path: str
    assessor_id: str = ""


_LOCATION = re.compile(
    r"^(?:projects/(?P<project>[^/]+)/)?(?:subjects/(?P<subject>[^/]+)/)?"
    r"(?:experiments/(?P<session>[^/]+)/"
    r"(?:scans/(?P<scan>[^/]+)/|assessors/(?P<assessor>[^/]+)/(?:(?:in|out)/)?)?)?"
    r"resources/(?P<resource>[^/]+)/files/(?P<path>.+)$")


def parse_file_url(xnat_url: str, base_url: str) -> FileLocation | None:
    """The location an xnat: URL of the server at base_url names; None for any other URL.

    The inverse of file_url: parse_file_url(file_url(b, r), b) has r's level, IDs, resource
    and path.
    """
    if not claims(xnat_url, base_url):
        return None
    match = _LOCATION.match(xnat_url[len(f"{_PREFIX}{server_id(base_url)}/"):])
    if match is None or not (match["project"] or match["session"]):
        return None
    parts = {name: unquote(value or "") for name, value in match.groupdict().items()}
    if parts["scan"]:
        level = "scan"
    elif parts["assessor"]:
        level = "assessor"
    elif parts["session"]:
        level = "session"
    elif parts["subject"]:
        level = "subject"
    else:
        level = "project"
    resource = "" if parts["resource"] == "NULL" else parts["resource"]
    return FileLocation(level, parts["project"], parts["subject"], parts["session"],
                        parts["scan"], resource, parts["path"], parts["assessor"])


def file_name(xnat_url: str) -> str:
    """The decoded last path segment: the name git-annex suggests for the file."""
    return unquote(xnat_url.rstrip("/").rsplit("/", 1)[-1])


def resource_of(xnat_url: str, base_url: str) -> tuple[str, str, str]:
    """(`/data/...` path of the files listing of the resource holding xnat_url, the resource's
    label as XNAT names it in archives, the file's path in it): the listing path with
    `format=zip` is the resource's files as one archive."""
    path = rest_path(xnat_url, base_url)
    match = _RESOURCE_FILES.search(path)
    assert match is not None  # rest_path accepts only file URLs
    listing = path[:match.start(1) - 1]
    label = unquote(listing.rsplit("/", 2)[-2])
    return listing, label, unquote(match.group(1))


def relative_file_path(xnat_url: str) -> str:
    """The decoded path of the file inside its resource (what follows `/resources/<R>/files/`)."""
    match = _RESOURCE_FILES.search(xnat_url)
    return unquote(match.group(1)) if match else ""
