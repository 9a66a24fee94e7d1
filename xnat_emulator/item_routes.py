"""Item routes: one entity as an XNAT item document (project, subject, experiment, scan,
assessor), a project's accessibility, and a resource's catalog.

Documents are plain dicts in XNAT's `{"meta", "data_fields", "children"}` shape;
`representations.items` writes them as JSON, HTML or XML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import Experiment, Project, Resource, Scan
from .paths import Target
from .representations import catalog_xml, items
from .scope import Scope, level_resources
from .wire import TEXT, HTTPError, Request, Response

if TYPE_CHECKING:
    from .app import App


def project(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return items(req, _project_doc(scope.project))


def accessibility(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return Response(200, scope.project.accessibility.encode(), TEXT)


def subject(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return items(req, _subject_doc(scope))


def experiment(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return items(req, [_experiment_doc(scope, e) for e in scope.experiments])


def scan(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return items(req, [_scan_doc(sc) for sc in scope.scans])


def assessor(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    return items(req, [_experiment_doc(scope, scope.assessor)])


def resource(app: "App", req: Request, scope: Scope, t: Target) -> Response:
    """XNAT answers `GET .../resources/{R}` with the catalog XML, whatever the format."""
    pairs = level_resources(scope, t, t.resource)
    if not pairs:
        raise HTTPError(404, "Unable to find the specified resource.")
    return catalog_xml(pairs[0][1])


def _project_doc(p: Project) -> list[dict]:
    return [{"meta": {"xsi:type": "xnat:projectData", "isHistory": False},
             "data_fields": {"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                             "description": p.description,
                             "PI/firstname": p.pi_firstname, "PI/lastname": p.pi_lastname},
             "children": [{"field": "resources/resource", "items": [
                 _resource_doc(r) for r in p.resources]}]}]


def _resource_doc(r: Resource) -> dict:
    return {"meta": {"xsi:type": "xnat:resourceCatalog", "isHistory": False},
            "data_fields": {"xnat_abstractresource_id": r.xnat_id, "label": r.label,
                            "format": r.fmt, "content": r.content},
            "children": []}


def _subject_doc(scope: Scope) -> list[dict]:
    s = scope.subject
    pid = scope.project.id if scope.project else s.project.id
    shares = [{"meta": {"xsi:type": "xnat:projectParticipant", "isHistory": False},
               "data_fields": {"label": lab, "project": p}, "children": []}
              for p, lab in s.labels.items() if p != s.project.id]
    exps = [{"meta": {"xsi:type": e.xsi_type, "isHistory": False},
             "data_fields": {"ID": e.id, "label": e.label_in(pid), "project": e.project.id,
                             "date": e.date}, "children": []} for e in s.experiments]
    df = {"ID": s.id, "id": s.id, "label": s.label_in(pid), "project": s.project.id,
          "insert_date": s.insert_date}
    return [{"meta": {"xsi:type": "xnat:subjectData", "isHistory": False},
             "data_fields": df,
             "children": [
                 {"field": "demographics", "items": [
                     {"meta": {"xsi:type": "xnat:demographicData", "isHistory": False},
                      "data_fields": {"gender": s.gender,
                                      **({"yob": int(s.yob)} if s.yob else {})},
                      "children": []}]},
                 {"field": "sharing/share", "items": shares},
                 {"field": "experiments/experiment", "items": exps},
                 {"field": "resources/resource",
                  "items": [_resource_doc(r) for r in s.resources]}]}]


def _scan_doc(s: Scan) -> dict:
    df = {"ID": s.id, "type": s.type, "series_description": s.series_description,
          "quality": s.quality, "note": s.note, "xnat_imagescandata_id": s.xnat_id,
          "image_session_ID": s.session.id, "UID": s.uid}
    if s.frames:
        df["frames"] = s.frames
    return {"meta": {"xsi:type": s.xsi_type, "isHistory": False}, "data_fields": df,
            "children": [{"field": "file",
                          "items": [_resource_doc(r) for r in s.resources]}]}


def _experiment_doc(scope: Scope, e: Experiment) -> dict:
    pid = scope.project.id if scope.project else e.project.id
    df = {"ID": e.id, "id": e.id, "label": e.label_in(pid), "project": e.project.id,
          "date": e.date, "insert_date": e.insert_date}
    children = []
    if e.is_assessor:
        df["imageSession_ID"] = e.session.id
        children.append({"field": "out/file",
                         "items": [_resource_doc(r) for r in e.resources]})
    else:
        df.update({"subject_ID": e.subject.id, "time": e.time, "modality": e.modality,
                   "UID": e.uid, "scanner/manufacturer": e.scanner_manufacturer,
                   "scanner/model": e.scanner_model})
        if e.field_strength:
            df["fieldStrength"] = e.field_strength
        children.append({"field": "scans/scan", "items": [_scan_doc(s) for s in e.scans]})
        children.append({"field": "resources/resource",
                         "items": [_resource_doc(r) for r in e.resources]})
        if e.assessors:
            children.append({"field": "assessors/assessor", "items": [
                {"meta": {"xsi:type": a.xsi_type, "isHistory": False},
                 "data_fields": {"ID": a.id, "label": a.label}, "children": []}
                for a in e.assessors]})
    shares = [{"meta": {"xsi:type": "xnat:experimentData_share", "isHistory": False},
               "data_fields": {"label": lab, "project": p}, "children": []}
              for p, lab in e.labels.items() if p != e.project.id]
    children.append({"field": "sharing/share", "items": shares})
    return {"meta": {"xsi:type": e.xsi_type, "isHistory": False,
                     "start_date": e.insert_date}, "data_fields": df, "children": children}
