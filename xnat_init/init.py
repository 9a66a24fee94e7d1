"""datalad xnat-init: point a dataset at an XNAT project.

Everything that can fail for a reason the user can fix (URL, server, password, project, pathfmt)
is checked before the dataset is touched, so a failed xnat-init leaves it exactly as it was.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from datalad.distribution.dataset import datasetmethod, require_dataset
from datalad.interface.base import Interface, build_doc, eval_results
from datalad.interface.results import get_status_dict
from datalad.support.constraints import EnsureNone, EnsureStr
from datalad.support.param import Parameter
from datalad.utils import ensure_list

from git_annex_remote_xnat.credentials import ANONYMOUS, keep_typed_credential
from git_annex_remote_xnat.messages import one_line
from git_annex_remote_xnat.urls import XnatUrlError, normalize_base_url

from .common import (
    dataset_param,
    filter_params,
    force_ask_requested,
    is_terminal,
    log_in,
)
from .config import (
    CONFIG_FILE,
    DEFAULT_NAME,
    ConfigError,
    XnatConfig,
    check_instance_name,
    config_file_content,
    provider_file_content,
    provider_path,
    read_config,
)
from .layout import DEFAULT_PATHFMT, LayoutError, PathFormat
from .specialremote import ensure_special_remote

lgr = logging.getLogger("datalad.xnat.init")
ACTION = "xnat_init"


@build_doc
class XnatInit(Interface):
    """Track an XNAT project in a dataset: configuration, credential check, special remote.

    Logs in to the server once, checks that the project (and subject or experiment, when given)
    exists and is readable, and then writes the section ``[datalad "xnat.<name>"]`` of
    ``.datalad/config`` (url, project, subject, experiment, collection, scan-type, quality, pathfmt,
    credential-name, remote), a DataLad provider file ``.datalad/providers/xnat-<name>.cfg``,
    and initialises the git-annex special remote (``xnat`` for the instance ``default``, else
    ``xnat-<name>``; ``type=external externaltype=xnat encryption=none autoenable=true``, so
    clones enable it by themselves). No secret is ever written to the dataset: only the name of
    the credential. When no credential is found and a terminal is attached, user and password
    are asked for and, once they worked, stored in the keyring as ``datalad-<credential>``;
    ``datalad -c datalad.credentials.force-ask=1 xnat-init ...`` asks again.

    Then run ``datalad xnat-update`` to register the files.
    """

    _params_ = dict(
        url=Parameter(
            args=("url",), metavar="URL",
            doc="XNAT server, e.g. https://xnat.example.org (with its context path if any)",
            constraints=EnsureStr()),
        dataset=dataset_param("configure"),
        pathfmt=Parameter(
            args=("-F", "--pathfmt"), metavar="PATHFMT",
            doc="""folders a file goes in, ending with '/'; the file's path inside its resource
            follows. Placeholders {project} {subject} {session} {subject_id} {session_id} {scan}
            {scan_type} {resource}; '//' starts a subdataset, e.g.
            '{subject}//{session}/{scan}/'. Session, subject and project resources go to
            '<folders up to the first scan-level placeholder>/resources/<label>/'.""",
            constraints=EnsureStr() | EnsureNone()),
        force=Parameter(
            args=("-f", "--force"), action="store_true",
            doc="re-initialise an instance that is already configured"),
        interactive=Parameter(
            args=("--interactive",), action="store_true",
            doc="""without --project, list the projects you can read and let you pick one
            (the default whenever a terminal is attached)"""),
        name=Parameter(
            args=("--name",), metavar="NAME",
            doc="name of this XNAT instance in the dataset (several can be tracked)",
            constraints=EnsureStr() | EnsureNone()),
        **filter_params(),
    )

    _examples_ = [
        dict(text="Track a public project anonymously",
             code_cmd="datalad xnat-init https://central.xnat.org -p Sample_DICOM "
                      "--credential anonymous"),
        dict(text="One subdataset per subject, NIFTI only",
             code_cmd="datalad xnat-init https://xnat.example.org -p P1 -c NIFTI "
                      "-F '{subject}//{session}/{scan}/'"),
    ]

    @staticmethod
    @datasetmethod(name="xnat_init")
    @eval_results
    def __call__(url, *, dataset=None, pathfmt=None, project=None, subject=None,
                 experiment=None, collection=None, credential=None, force=False,
                 interactive=False, name=None, scan_type=None, quality=None):
        ds = require_dataset(dataset, check_installed=True, purpose="initialise XNAT tracking")
        name = name or DEFAULT_NAME
        pathfmt = pathfmt or DEFAULT_PATHFMT
        subjects, experiments = ensure_list(subject), ensure_list(experiment)
        collections = ensure_list(collection)
        selection = dict(scan_types=ensure_list(scan_type), qualities=ensure_list(quality))

        def failure(message, status="error", **kwargs):
            return get_status_dict(action=ACTION, ds=ds, status=status, message=message,
                                   logger=lgr, **kwargs)

        # ---- everything checked before the dataset is touched
        try:
            check_instance_name(name)
            base_url = normalize_base_url(url)
            PathFormat(pathfmt)
        except (ConfigError, XnatUrlError, LayoutError) as exc:
            yield failure(str(exc))
            return
        if not ds.repo or not hasattr(ds.repo, "call_annex"):
            yield failure(f"{ds.path} is not a git-annex dataset; create it with "
                          "`datalad create` (without --no-annex)")
            return
        existing = read_config(ds.pathobj, name)
        if existing and not force:
            asked = XnatConfig(name=name, url=base_url, project=project or existing.project,
                               pathfmt=pathfmt, credential=credential or existing.credential,
                               subjects=subjects, experiments=experiments,
                               collections=collections, **selection)
            changed = changed_settings(existing, asked)
            another = "" if name != DEFAULT_NAME else ", or --name NAME to track another one"
            if changed:
                yield failure(
                    f"XNAT instance '{name}' is already initialised with other settings: "
                    + "; ".join(changed) + "; nothing was changed: use -f/--force to change "
                    "them" + another, status="impossible")
            else:
                yield failure(
                    f"XNAT instance '{name}' is already initialised with these settings "
                    f"({existing.url}, project {existing.project}); run `datalad xnat-update` "
                    "to fetch" + another, status="notneeded")
            return

        credential_name = credential or (existing.credential if existing and not credential
                                         else None)
        from git_annex_remote_xnat.credentials import default_credential_name

        credential_name = credential_name or default_credential_name(base_url)
        logged_in = log_in(credential_name, base_url, ds.path, may_prompt=True,
                           force_ask=force_ask_requested(ds.config))
        if logged_in.client is None:
            yield failure(logged_in.message)
            return

        from git_annex_remote_xnat.client import NotFoundError, PermissionDeniedError, XnatError

        client, cred, prompted = logged_in.client, logged_in.credential, logged_in.prompted
        try:
            if not project:
                try:
                    readable = client.projects()
                except XnatError as exc:
                    yield failure(one_line(exc))
                    return
                if not readable:
                    yield failure(f"user '{cred.user or ANONYMOUS}' can read no project on "
                                  f"{base_url}; ask for access or use another credential")
                    return
                if (interactive or is_terminal()) and is_terminal():
                    project = _pick_project(readable)
                else:
                    listing = ", ".join(p.id for p in readable[:20])
                    more = " ..." if len(readable) > 20 else ""
                    yield failure(f"give the project with -p/--project (or --interactive in a "
                                  f"terminal); projects you can read: {listing}{more}")
                    return
            try:
                client.project(project)
                missing = _missing_filter(client, base_url, project, subjects, experiments)
            except PermissionDeniedError as exc:
                yield failure(f"project {project} exists but its data is not readable with "
                              f"credential '{credential_name}': {one_line(exc)}")
                return
            except NotFoundError as exc:
                yield failure(f"no readable project {project} on {base_url}: {one_line(exc)}")
                return
            except XnatError as exc:
                yield failure(one_line(exc))
                return
            if missing:
                yield failure(missing)
                return
        finally:
            client.close()

        warning = keep_typed_credential(cred, base_url) if prompted else None
        if warning:
            yield get_status_dict(action=ACTION, ds=ds, status="ok", logger=lgr, message=warning)

        config = XnatConfig(name=name, url=base_url, project=project, pathfmt=pathfmt,
                            credential=credential_name, subjects=subjects,
                            experiments=experiments, collections=collections, **selection)
        try:
            configure_dataset(ds.pathobj, config, reinit=existing is not None)
        except (ConfigError, subprocess.CalledProcessError, RuntimeError) as exc:
            yield failure(f"could not configure the dataset: {one_line(exc)}")
            return
        save_message = (f"[DATALAD] xnat-init: track XNAT project {project} at {base_url} "
                        f"as '{name}' (remote {config.remote})")
        # to_git: the provider file is configuration that DataLad reads from the work tree,
        # so it must never be annexed (and absent in a fresh clone)
        for res in ds.save(path=[CONFIG_FILE, provider_path(name)], message=save_message,
                           to_git=True, result_renderer="disabled", return_type="generator",
                           on_failure="ignore"):
            if res.get("status") not in ("ok", "notneeded"):
                yield res
                return
        yield get_status_dict(
            action=ACTION, ds=ds, status="ok", logger=lgr,
            message=("tracking %s project %s as '%s' (special remote %s, credential %s); "
                     "next: datalad xnat-update", base_url, project, name, config.remote,
                     credential_name),
            xnat_url=base_url, xnat_project=project, xnat_name=name, remote=config.remote,
            credential_name=credential_name, pathfmt=pathfmt)


def changed_settings(existing: XnatConfig, asked: XnatConfig) -> list[str]:
    """What a re-run of xnat-init would change, one phrase per setting ([] when nothing).

    Compares what --force would write (options not given take their defaults, so a re-run
    without -c would drop the stored collections) with what is stored.
    """
    def shown(value) -> str:
        if isinstance(value, list):
            value = ", ".join(value)
        return f"'{value}'" if value else "none"

    changed = []
    for label, key in (("url", "url"), ("project", "project"), ("subject", "subjects"),
                       ("experiment", "experiments"), ("collection", "collections"),
                       ("scan-type", "scan_types"), ("quality", "qualities"),
                       ("pathfmt", "pathfmt"), ("credential", "credential")):
        old, new = getattr(existing, key), getattr(asked, key)
        if isinstance(old, list):
            old, new = sorted(old), sorted(new)
        if (old or None) != (new or None):
            changed.append(f"{label} {shown(old)} (this call: {shown(new)})")
    return changed


def _missing_filter(client, base_url: str, project: str, subjects: list[str],
                    experiments: list[str]) -> str:
    """What of -s/-e the readable `project` lacks, as the message to give ('' when nothing).

    Kept apart from the project's own check: "no readable project" about a project that is
    readable sends the user to ask for access instead of fixing a label. Lists the subject
    listing even without -s: a project whose data is not readable raises PermissionDeniedError.
    """
    from git_annex_remote_xnat.client.listings import matches, some_names, unknown_names

    listed = client.subjects(project)
    chosen = {s.id for s in listed if matches(subjects, s.id, s.label)}
    known = [(s.id, s.label) for s in listed]
    missing = ", ".join(unknown_names(subjects, known))
    if missing:
        return (f"project {project} has no subject {missing} (ID, label or pattern; its "
                f"subjects: {some_names(known)}); `datalad xnat-query-files {base_url} -p "
                f"{project}` lists them all")
    if not experiments:
        return ""
    known = [(e.id, e.label) for e in client.experiments(project)
             if not subjects or e.subject_id in chosen]
    missing = ", ".join(unknown_names(experiments, known))
    if missing:
        return (f"project {project} has no experiment {missing} (ID, label or pattern; "
                f"its experiments: {some_names(known)})"
                + (f" for subject {', '.join(subjects)}" if subjects else "")
                + f"; `datalad xnat-query-files {base_url} -p {project} -s SUBJECT` lists a "
                "subject's files with their experiments")
    return ""


def _pick_project(projects) -> str:
    """The interactive picker: a numbered list of readable projects, answer by number or ID."""
    from datalad.ui import ui

    lines = [f"{index:>3}) {p.id}" + (f"  {p.name}" if p.name and p.name != p.id else "")
             for index, p in enumerate(projects, start=1)]
    ui.message("Projects you can read:\n" + "\n".join(lines))
    ids = [p.id for p in projects]
    while True:
        answer = ui.question("Project to track (number or ID)", default=ids[0]).strip()
        if answer.isdigit() and 1 <= int(answer) <= len(ids):
            return ids[int(answer) - 1]
        if answer in ids:
            return answer
        ui.message(f"{answer!r} is not in the list")


def configure_dataset(dataset_path: Path, config: XnatConfig, reinit: bool = False) -> None:
    """Write the config section and provider file and set up the special remote (no commit).

    The special remote goes first: if git-annex refuses it (git-annex-remote-xnat not on PATH,
    say), the work tree has not been touched yet.
    """
    ensure_special_remote(dataset_path, config)
    config_file = dataset_path / CONFIG_FILE
    base = config_file.read_bytes() if config_file.exists() else None
    content = config_file_content(base, config)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_bytes(content)
    provider = dataset_path / provider_path(config.name)
    provider.parent.mkdir(parents=True, exist_ok=True)
    provider.write_bytes(provider_file_content(config))
