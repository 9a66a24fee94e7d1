"""`App`: one emulated site (its data, settings, sessions, faults, counters), who may see what,
and the dispatch from a routed request to its route function.

`paths.route` names a request's kind; `App.handle` runs the route module's function for it
(behind authentication unless the kind is open) and turns `HTTPError`/`AuthRequired` into
XNAT's answers. The route modules hold no state: everything they need is on the `App`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from . import auth_routes, file_routes, item_routes, listing_routes, site_routes
from .auth import Auth
from .counters import Counters
from .faults import Faults
from .model import Experiment, Project, Site, Subject
from .paths import Target
from .scope import resolve
from .wire import NO_MATCH, AuthRequired, HTTPError, Request, Response, error_response

INTERACTIVE_AGENTS = (r".*MSIE.*", r".*Mozilla.*", r".*AppleWebKit.*", r".*Opera.*")


class App:
    def __init__(self, site: Site, *, require_login: bool = True, session_timeout: float = 900.0,
                 faults: Faults | None = None, counters: Counters | None = None,
                 users: dict[str, str] | None = None, admins: Iterable[str] = ("admin",),
                 interactive_agents: Iterable[str] = INTERACTIVE_AGENTS,
                 context_path: str = "", honor_range: bool = False,
                 max_sessions_per_user: int = 0, checksums: bool = True,
                 version_mode: str = "modern", verbose: bool = False) -> None:
        if version_mode not in ("modern", "legacy"):
            raise ValueError("version_mode is 'modern' or 'legacy'")
        self.site = site
        self.checksums = checksums
        self.version_mode = version_mode
        self.context_path = ("/" + context_path.strip("/")) if context_path.strip("/") else ""
        self.honor_range = honor_range
        self.require_login = require_login
        self.faults = faults or Faults(site.seed)
        self.counters = counters or Counters()
        self.auth = Auth(dict(users or {}), set(admins), session_timeout, max_sessions_per_user)
        self.interactive = [re.compile(p) for p in interactive_agents]
        self.verbose = verbose

    @property
    def legacy(self) -> bool:
        """Answer like XNAT 1.6 (see `version_mode`)."""
        return self.version_mode == "legacy"

    # -- permissions ------------------------------------------------------------------------
    def is_admin(self, user: str | None) -> bool:
        return user in self.auth.admins

    def can_see(self, user: str, p: Project) -> bool:
        return (self.is_admin(user) or p.accessibility in ("public", "protected")
                or user in p.members)

    def can_read(self, user: str, p: Project) -> bool:
        return self.is_admin(user) or p.accessibility == "public" or user in p.members

    def can_read_experiment(self, user: str, e: Experiment) -> bool:
        return any(self.can_read(user, self.site.projects[pid]) for pid in e.labels)

    def can_read_subject(self, user: str, s: Subject) -> bool:
        return any(self.can_read(user, self.site.projects[pid]) for pid in s.labels)

    def is_browser(self, req: Request) -> bool:
        ua = req.headers.get("User-Agent", "") or ""
        return any(rx.match(ua) for rx in self.interactive)

    # -- dispatch ---------------------------------------------------------------------------
    def handle(self, req: Request, kind: str, payload) -> Response:
        """The answer to a request that `paths.route` named (kind, payload)."""
        browser = self.is_browser(req)
        try:
            open_route = _OPEN_ROUTES.get(kind)
            if open_route is not None:
                return open_route(self, req)
            if kind == "not_data":
                raise HTTPError(404, "Not Found")
            # everything else sits behind the guard
            user = auth_routes.authenticate(self, req)
            req.user = user
            guarded = _GUARDED_ROUTES.get(kind)
            if guarded is None:
                raise HTTPError(404, "Not Found")
            return guarded(self, req, user, payload)
        except AuthRequired as exc:
            return auth_routes.unauthorized(self, req, browser, exc)
        except HTTPError as exc:
            return error_response(exc.status, exc.message)


def _data(app: App, req: Request, user: str, t: Target) -> Response:
    """Everything below /data that `paths.parse_data_path` parsed: listings, items, files."""
    if req.method not in ("GET", "HEAD"):
        raise HTTPError(405, "Method Not Allowed")
    t.extra["all"] = req.query.get("all", "")
    if not t.steps:                       # /data/projects, /data/subjects, /data/experiments
        return _SITE_LISTINGS[t.action](app, req, user)
    scope = resolve(app, user, t)
    route = _DATA_ROUTES.get(t.action)
    if route is None:
        raise HTTPError(404, NO_MATCH)
    return route(app, req, scope, t)


def _unknown(app: App, req: Request, user: str, payload) -> Response:
    """A path the grammar did not match: its 404 (only after authentication, as on XNAT)."""
    if isinstance(payload, HTTPError):
        raise payload
    raise HTTPError(404, NO_MATCH)


def _xapi_unknown(app: App, req: Request, user: str, payload) -> Response:
    return Response(404, b"", "text/plain")


# kinds answered without authentication
_OPEN_ROUTES: dict[str, Callable[[App, Request], Response]] = {
    "root": site_routes.root,
    "login_page": auth_routes.login_page,
    "services_auth": auth_routes.services_auth,
}

# kinds answered for an authenticated user (or the guest of an open site)
_GUARDED_ROUTES: dict[str, Callable[[App, Request, str, object], Response]] = {
    "jsession": auth_routes.jsession,
    "data_auth": auth_routes.data_auth,
    "build_info": site_routes.build_info,
    "xapi_users_active": auth_routes.kill_user_sessions,
    "xapi_unknown": _xapi_unknown,
    "version": site_routes.version,
    "token_issue": auth_routes.token_issue,
    "token_show": auth_routes.token_show,
    "token_validate": auth_routes.token_validate,
    "token_invalidate": auth_routes.token_invalidate,
    "unknown": _unknown,
    "data": _data,
}

# /data actions with no entity in the path
_SITE_LISTINGS = {
    "projects": listing_routes.projects,
    "subjects": listing_routes.subjects_global,
    "experiments": listing_routes.experiments_global,
}

# /data actions below an entity, by `Target.action`
_DATA_ROUTES = {
    "project": item_routes.project,
    "accessibility": item_routes.accessibility,
    "subjects": listing_routes.subjects,
    "subject": item_routes.subject,
    "experiments": listing_routes.experiments,
    "experiment": item_routes.experiment,
    "experiment_projects": listing_routes.experiment_projects,
    "scans": listing_routes.scans,
    "scan": item_routes.scan,
    "assessors": listing_routes.assessors,
    "assessor": item_routes.assessor,
    "resources": listing_routes.resources,
    "resource": item_routes.resource,
    "files": listing_routes.files,
    "file": file_routes.file,
}
