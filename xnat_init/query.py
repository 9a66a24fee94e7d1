"""datalad xnat-query-files (alias xnat-query): look at a server before tracking it."""

from __future__ import annotations

import logging

from datalad.interface.base import Interface, build_doc, eval_results
from datalad.interface.results import get_status_dict
from datalad.support.constraints import EnsureStr
from datalad.support.param import Parameter
from datalad.utils import ensure_list

from git_annex_remote_xnat.credentials import keep_typed_credential
from git_annex_remote_xnat.urls import XnatUrlError, file_url, masked_url, normalize_base_url

from git_annex_remote_xnat.messages import one_line

from .common import filter_params, log_in, scan_selected, warn_unmatched_collections

lgr = logging.getLogger("datalad.xnat.query")
ACTION = "xnat_query"


@build_doc
class XnatQueryFiles(Interface):
    """List what an XNAT server holds: projects, a project's subjects, or files.

    Without --project: the projects you can read. With --project: its subjects. With --subject
    or --experiment as well: the files, each with size, MD5 digest (empty when the server has
    none), resource label and URI (the xnat: URL the dataset would register, and the REST path).
    Also available as ``datalad xnat-query``.
    """

    _params_ = dict(
        url=Parameter(
            args=("url",), metavar="URL",
            doc="XNAT server, e.g. https://xnat.example.org",
            constraints=EnsureStr()),
        **filter_params(),
    )

    _examples_ = [
        dict(text="Projects you can read", code_cmd="datalad xnat-query https://xnat.example.org"),
        dict(text="Files of one session, DICOM only",
             code_cmd="datalad xnat-query-files https://xnat.example.org -p P1 -e S01_MR1 -c DICOM"),
    ]

    result_renderer = "tailored"

    @staticmethod
    @eval_results
    def __call__(url, *, project=None, subject=None, experiment=None, collection=None,
                 credential=None, scan_type=None, quality=None):
        def failure(message):
            # the URL as given may hold a password (refused below): never shown
            return get_status_dict(action=ACTION, path=masked_url(url), status="error",
                                   message=message, logger=lgr)

        try:
            base_url = normalize_base_url(url)
        except XnatUrlError as exc:
            yield failure(str(exc))
            return
        scan_types, qualities = ensure_list(scan_type), ensure_list(quality)
        if (subject or experiment or collection or scan_types or qualities) and not project:
            yield failure("--subject, --experiment, --collection, --scan-type and --quality "
                          "need --project")
            return
        logged_in = log_in(credential, base_url, None, may_prompt=True)
        if logged_in.client is None:
            yield failure(logged_in.message)
            return
        if logged_in.prompted:
            warning = keep_typed_credential(logged_in.credential, base_url)
            if warning:
                lgr.warning("%s", warning)
        from git_annex_remote_xnat.client import Walk, XnatError

        with logged_in.client as client:
            try:
                if not project:
                    for p in client.projects():
                        yield get_status_dict(action=ACTION, path=f"{base_url}/data/projects/{p.id}",
                                              status="ok", type="xnat-project", project=p.id,
                                              name=p.name, description=p.description,
                                              message=p.id + (f" ({p.name})" if p.name else ""))
                    return
                if not subject and not experiment and not scan_types and not qualities:
                    client.project(project)
                    for s in client.subjects(project):
                        yield get_status_dict(action=ACTION, path=f"{base_url}{s.uri}",
                                              status="ok", type="xnat-subject", project=project,
                                              subject_id=s.id, subject_label=s.label,
                                              message=f"{s.id} {s.label}")
                    return
                walk = Walk()
                for record in client.iter_files(project, subjects=ensure_list(subject),
                                                experiments=ensure_list(experiment),
                                                resources=ensure_list(collection) or None,
                                                jobs=4, walk=walk):
                    if not scan_selected(record, scan_types, qualities):
                        continue
                    xnat_url = file_url(base_url, record)
                    rest = _rest_path(xnat_url, base_url)
                    yield get_status_dict(
                        action=ACTION, path=xnat_url, status="ok", type="xnat-file",
                        project=record.project, subject_id=record.subject_id,
                        subject_label=record.subject_label, session_id=record.session_id,
                        session_label=record.session_label, scan_id=record.scan_id,
                        scan_type=record.scan_type, level=record.level,
                        resource=record.resource, file=record.path, size=record.size,
                        md5=record.md5 or "", uri=xnat_url, rest_uri=rest,
                        message=f"{record.size} {record.md5 or '-'} {record.resource} {rest}")
                warn_unmatched_collections(ensure_list(collection), walk.resources)
            except XnatError as exc:
                yield failure(one_line(exc))

    @staticmethod
    def custom_result_renderer(res, **kwargs):
        from datalad.ui import ui

        if res.get("status") != "ok" or res.get("action") != ACTION:
            from datalad.interface.utils import generic_result_renderer

            generic_result_renderer(res)
            return
        kind = res.get("type")
        if kind == "xnat-project":
            ui.message(f"{res['project']}\t{res.get('name', '')}")
        elif kind == "xnat-subject":
            ui.message(f"{res['subject_id']}\t{res['subject_label']}")
        elif kind == "xnat-file":
            ui.message(f"{res['size']:>12}  {res['md5'] or '-':32}  {res['resource']:<10} "
                       f"{res['rest_uri']}")


def _rest_path(xnat_url: str, base_url: str) -> str:
    from git_annex_remote_xnat.urls import rest_path

    return rest_path(xnat_url, base_url)
