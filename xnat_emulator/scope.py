"""From a parsed path to what it names: entities (with read permission), resources, files.

`resolve` turns a `paths.Target` into a `Scope` (raising XNAT's 403/404 where a user may not
see or read); `level_resources`, `file_pairs`, `iter_file_rows` and `find_file` pick the
resources and files at the level the path ends on. Listings, item documents and downloads
all select through here, so they always agree on what a path means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from .model import Experiment, FileEntry, Project, Resource, Scan, Subject
from .paths import Target
from .representations import like
from .wire import HTTPError, Request, req_flag

if TYPE_CHECKING:
    from .app import App


class Scope:
    """Entities resolved from a Target, with the path context for URIs and labels."""

    def __init__(self) -> None:
        self.project: Project | None = None
        self.subject: Subject | None = None
        self.experiments: list[Experiment] = []
        self.scans: list[Scan] = []
        self.assessor: Experiment | None = None
        self.via_project = False


def resolve(app: "App", user: str, t: Target) -> Scope:
    """The entities `t` names, as `user` may see them (XNAT's 403/404 where not)."""
    sc = Scope()
    site = app.site
    deep = bool(t.steps[1:]) or t.action not in ("project", "accessibility")
    for kind, tok in t.steps:
        if kind == "project":
            p = site.project(tok)
            if p is None or not app.can_see(user, p):
                raise HTTPError(404, f"Unable to find project {tok}")
            if deep and not app.can_read(user, p):
                if t.action == "subjects" and len(t.steps) == 1:
                    raise HTTPError(403, f"Unable to read subjects for Project: {p.id}")
                if t.action == "experiments" and len(t.steps) <= 2:
                    raise HTTPError(403, f"Unable to read experiments for Project: {p.id}")
                raise HTTPError(404, f"Unable to find the specified resource in project {p.id}")
            sc.project = p
            sc.via_project = True
        elif kind == "subject":
            if sc.project is not None:
                subj = None
                for s in sc.project.subjects:
                    if s.id == tok or s.label_in(sc.project.id) == tok:
                        subj = s
                        break
            else:
                subj = site.subjects.get(tok)
                if subj is not None and not app.can_read_subject(user, subj):
                    subj = None
            if subj is None:
                raise HTTPError(404, f"Unable to identify subject {tok}")
            sc.subject = subj
        elif kind == "experiment":
            exps: list[Experiment] = []
            if sc.subject is not None:
                pid = sc.project.id if sc.project else sc.subject.project.id
                for e in sc.subject.experiments:
                    if (e.id == tok or e.label_in(pid) == tok) and (
                            sc.project is None or pid in e.labels):
                        exps.append(e)
                        break
            elif sc.project is not None:
                pid = sc.project.id
                for e in sc.project.experiments:
                    if e.id == tok or e.label_in(pid) == tok:
                        exps.append(e)
                        break
                if not exps:
                    e = site.experiments.get(tok)
                    if e is not None and pid in e.labels:
                        exps.append(e)
            else:
                for one in tok.split(","):
                    e = site.experiments.get(one.strip())
                    if e is not None and app.can_read_experiment(user, e):
                        exps.append(e)
            if not exps:
                raise HTTPError(404, "Unable to find the specified experiment.")
            sc.experiments = exps
        elif kind == "scan":
            scans: list[Scan] = []
            for e in sc.experiments:
                scans.extend(select_scans(e, tok))
            if not scans:
                raise HTTPError(404, f"Unable to find scan {tok}")
            sc.scans = scans
        elif kind == "assessor":
            found = None
            for e in sc.experiments:
                for a in e.assessors:
                    if a.id == tok or a.label == tok:
                        found = a
            if found is None:
                raise HTTPError(404, f"Unable to find assessor {tok}")
            sc.assessor = found
    return sc


def exp_base(scope: Scope, e: Experiment) -> str:
    """An experiment's base URI as listings show it: under the project when the path was."""
    if scope.via_project and scope.project is not None:
        if scope.subject is not None:
            return (f"/data/projects/{scope.project.id}/subjects/{scope.subject.id}"
                    f"/experiments/{e.id}")
        return f"/data/projects/{scope.project.id}/experiments/{e.id}"
    return f"/data/experiments/{e.id}"


def level_resources(scope: Scope, t: Target, selector: str | None
                    ) -> list[tuple[object, Resource, str]]:
    """(owner, resource, base URI) for the level the target names."""
    owners: list[tuple[object, list[Resource], str]] = []
    kinds = [k for k, _ in t.steps]
    last = kinds[-1]
    if last == "assessor":
        a = scope.assessor
        io_ = t.extra.get("io", "out")
        res = a.in_resources if io_ == "in" else a.resources
        base = f"{exp_base(scope, a.session)}/assessors/{a.id}/{io_}"
        owners.append((a, res, base))
    elif last == "scan":
        for s in scope.scans:
            owners.append((s, s.resources, f"{exp_base(scope, s.session)}/scans/{s.id}"))
    elif last == "experiment":
        all_ = t.action == "files" and t.resource is None and \
            req_flag(t.extra.get("all"))
        for e in scope.experiments:
            base = exp_base(scope, e)
            owners.append((e, e.resources, base))
            if all_:
                for s in e.scans:
                    owners.append((s, s.resources, f"{base}/scans/{s.id}"))
                for a in e.assessors:
                    owners.append((a, a.resources, f"{base}/assessors/{a.id}/out"))
    elif last == "subject":
        s = scope.subject
        base = (f"/data/projects/{scope.project.id}/subjects/{s.id}" if scope.via_project
                else f"/data/subjects/{s.id}")
        owners.append((s, s.resources, base))
    elif last == "project":
        owners.append((scope.project, scope.project.resources,
                       f"/data/projects/{scope.project.id}"))
    out = []
    wanted = None if selector is None else [x.strip() for x in selector.split(",")]
    for owner, res_list, base in owners:
        for r in list(res_list):
            if wanted is None or str(r.xnat_id) in wanted or r.label in wanted or (
                    "NULL" in wanted and not r.label):
                out.append((owner, r, base))
    return out


def select_scans(e: Experiment, selector: str) -> list[Scan]:
    """The scans a `{SC}` token names: IDs, types, `ALL`/`*`, `NULL`, comma-separated."""
    out: list[Scan] = []
    seen = set()

    def add(s: Scan) -> None:
        if id(s) not in seen:
            seen.add(id(s))
            out.append(s)
    for tok in selector.split(","):
        tok = tok.replace("[COMMA]", ",").replace("[SLASH]", "/").strip()
        if tok in ("ALL", "*"):
            for s in e.scans:
                add(s)
            continue
        s = e.scan(tok)
        if s is not None:
            add(s)
            continue
        for s in e.scans:
            if (tok == "NULL" and not s.type) or s.type == tok:
                add(s)
    return out


def file_pairs(scope: Scope, t: Target) -> list[tuple[object, Resource, str]]:
    """The resources of a files path (404 when it names a resource that is not there)."""
    pairs = level_resources(scope, t, t.resource)
    if t.resource is not None and not pairs:
        raise HTTPError(404, "Unable to find the specified resource.")
    return pairs


def iter_file_rows(req: Request, pairs, t: Target) -> Iterator[tuple]:
    """(owner, resource, base URI, file) for the files the path and file_format/file_content
    select."""
    prefix = t.path + "/" if t.path_is_dir and t.path else None
    fmt_f = req.query.get("file_format")
    cont_f = req.query.get("file_content")
    for owner, r, base in pairs:
        for e in r.entries():
            if prefix is not None and not e.path.startswith(prefix):
                continue
            if fmt_f is not None and not like(fmt_f, e.fmt or "NULL"):
                continue
            if cont_f is not None and not like(cont_f, e.content or "NULL"):
                continue
            yield owner, r, base, e


def find_file(scope: Scope, t: Target) -> tuple[Resource, FileEntry, object]:
    """(resource, file, owner) of a single-file path, else 404."""
    pairs = file_pairs(scope, t)
    for owner, r, base in pairs:
        e = r.get(t.path)
        if e is not None:
            return r, e, owner
    raise HTTPError(404, "Unable to find file.")
