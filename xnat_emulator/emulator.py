"""`Emulator`: the Python API around one emulated XNAT site served on loopback."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote

from .app import App
from .content import BytesBlob
from .counters import Counters
from .faults import Faults
from .model import Experiment, FileEntry, Resource, Subject
from .presets import build
from .presets.common import ADMINS, USERS
from .server import make_server


def _now_str() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


@dataclass(frozen=True)
class FileInfo:
    """One file the server holds, as `Emulator.iter_files` reports it.

    Labels are those of the project iterated (shared subjects/sessions show the shared label).
    `md5` is the digest XNAT publishes (None when the listing shows `""`); `uri` is the listing's
    URI (raw, unencoded path) and `url_path` the same with each path segment percent-encoded,
    ready to request. `content()` returns the bytes.
    """

    project: str
    subject_id: str | None
    subject_label: str | None
    session_id: str | None
    session_label: str | None
    scan_id: str | None
    scan_type: str | None
    level: str               # 'scan' | 'session' | 'subject' | 'project' | 'assessor'
    resource: str            # resource label
    resource_id: str         # xnat_abstractresource_id
    path: str                # relative path inside the resource
    size: int
    md5: str | None
    uri: str
    url_path: str
    assessor_id: str | None = None
    _entry: FileEntry | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def content(self) -> bytes:
        return self._entry.blob.bytes()


class Emulator:
    """An XNAT REST emulator. See docs/ARCHITECTURE.md and the package docstring."""

    def __init__(self, preset: str = "small", *, seed: int = 0, files: int | None = None,
                 file_size: int | None = None, require_login: bool = True,
                 session_timeout: float = 900.0, host: str = "127.0.0.1", port: int = 0,
                 context_path: str = "", honor_range: bool = False,
                 max_sessions_per_user: int = 0, checksums: bool = True,
                 version_mode: str = "modern",
                 interactive_agents: "tuple[str, ...] | None" = None,
                 verbose: bool = False, tls: ssl.SSLContext | None = None, **faults) -> None:
        """Build the site from `preset` (see xnat_emulator.presets) and prepare the server.

        Beyond the contract: `context_path` serves under e.g. "/xnat" (listings then report
        `serverRoot` "/xnat" and URIs stay `/data/...`, as XNAT does); `honor_range` answers
        `Range` requests with 206 (XNAT ignores Range, so the default is off);
        `max_sessions_per_user` emulates `security.sessions.concurrent_max` (0 = no cap);
        `checksums=False` is a site with checksums off (every listed digest is "");
        `version_mode="legacy"` answers like XNAT 1.6 (`/data/version` is "1.6.5", no
        buildInfo, old token JSON, no limit/offset, HTML listings without `format`);
        `interactive_agents` replaces the browser User-Agent regexes;
        `tls`, a server-side `ssl.SSLContext` with its certificate loaded, serves HTTPS;
        any other keyword sets a fault (see xnat_emulator.faults).
        """
        self.preset = preset
        self.seed = seed
        self.host = host
        self.port = port
        self.tls = tls
        self.site = build(preset, seed=seed, files=files, file_size=file_size)
        self.faults = Faults(seed, **faults)
        self.counters = Counters()
        self.users = dict(USERS)
        self.app = App(self.site, require_login=require_login, session_timeout=session_timeout,
                       faults=self.faults, counters=self.counters, users=self.users,
                       admins=ADMINS, context_path=context_path, honor_range=honor_range,
                       max_sessions_per_user=max_sessions_per_user, checksums=checksums,
                       version_mode=version_mode, verbose=verbose,
                       **({"interactive_agents": interactive_agents}
                          if interactive_agents is not None else {}))
        self._server = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Emulator":
        if self._server is None:
            self._server = make_server(self.app, self.host, self.port, self.tls)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.1},
                                            name=f"xnat-emulator-{self.port}", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI uses this)."""
        if self._server is None:
            self._server = make_server(self.app, self.host, self.port, self.tls)
            self.port = self._server.server_address[1]
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self.app.context_path}"

    # -- settings at run time -------------------------------------------------------------
    @property
    def require_login(self) -> bool:
        return self.app.require_login

    @require_login.setter
    def require_login(self, value: bool) -> None:
        self.app.require_login = bool(value)

    @property
    def session_timeout(self) -> float:
        return self.app.auth.session_timeout

    @session_timeout.setter
    def session_timeout(self, value: float) -> None:
        self.app.auth.session_timeout = float(value)

    @property
    def honor_range(self) -> bool:
        return self.app.honor_range

    @honor_range.setter
    def honor_range(self, value: bool) -> None:
        self.app.honor_range = bool(value)

    def expire_sessions(self) -> None:
        """Invalidate every JSESSION now (as a server restart would)."""
        self.app.auth.expire_all_sessions()

    def issue_alias_token(self, user: str) -> tuple[str, str]:
        """Issue an alias token for `user`; returns (alias, secret), usable as Basic credentials."""
        if user not in self.users:
            raise KeyError(user)
        tok = self.app.auth.issue_token(user)
        return tok.alias, tok.secret

    # -- mutations ------------------------------------------------------------------------
    def _resource(self, resource: str, *, project: str | None, subject: str | None,
                  session: str | None, scan: str | None, assessor: str | None,
                  create: bool, scan_type: str = "") -> Resource:
        site = self.site
        owner: object
        category = "resources"
        cat_id = cat_desc = ""
        if assessor is not None:
            owner = self._experiment(assessor, project)
            category = "assessors"
        elif scan is not None:
            if session is None:
                raise ValueError("a scan needs its session")
            exp = self._experiment(session, project)
            sc = exp.scan(scan)
            if sc is None:
                if not create:
                    raise KeyError(f"no scan {scan} in {exp.id}")
                with site.lock:
                    sc = site.add_scan(exp, scan, type=scan_type, series_description=scan_type)
            owner = sc
            category, cat_id, cat_desc = "scans", sc.id, sc.type
        elif session is not None:
            owner = self._experiment(session, project)
        elif subject is not None:
            owner = self._subject(subject, project)
        elif project is not None:
            owner = site.project(project)
            if owner is None:
                raise KeyError(f"no project {project}")
        else:
            raise ValueError("say where: project, subject, session (+ scan) or assessor")
        for r in owner.resources:
            if r.label == resource or str(r.xnat_id) == str(resource):
                return r
        if not create:
            raise KeyError(f"no resource {resource}")
        with site.lock:
            r = site.resource(resource, category, cat_id=cat_id, cat_desc=cat_desc)
            owner.add_resource(r)
        return r

    @staticmethod
    def _find(pool: dict, token: str, project: str | None, what: str):
        """The entity of `pool` (by ID) whose ID is `token`, else the first whose label is,
        in `project` when given; KeyError naming `what` when none."""
        x = pool.get(token)
        if x is None:
            for y in list(pool.values()):
                if (project is None or project in y.labels) and token in y.labels.values():
                    x = y
                    break
        if x is None:
            raise KeyError(f"no {what} {token}")
        return x

    def _experiment(self, token: str, project: str | None) -> Experiment:
        return self._find(self.site.experiments, token, project, "experiment")

    def _subject(self, token: str, project: str | None) -> Subject:
        return self._find(self.site.subjects, token, project, "subject")

    @staticmethod
    def _entry(path: str, content: bytes, digest) -> FileEntry:
        path = path.strip("/")
        if digest is None:
            digest = ""
        return FileEntry(path, BytesBlob(content), digest=digest, mtime=time.time())

    def add_file(self, path: str, content: bytes, *, resource: str, project: str | None = None,
                 subject: str | None = None, session: str | None = None,
                 scan: str | None = None, assessor: str | None = None,
                 digest: "bool | str | None" = True, scan_type: str = "") -> None:
        """Add a new file (KeyError-free: creates the resource, and the scan, when missing).

        Where: `session` (ID or label) + `scan` for a scan resource; `session` alone for a
        session resource; `subject`, `project` or `assessor` for those levels. `digest`: True
        publishes the MD5 of `content`, False/None/"" publishes no digest, a string publishes
        that string (e.g. a stale digest). Raises FileExistsError if the path exists.
        """
        r = self._resource(resource, project=project, subject=subject, session=session,
                           scan=scan, assessor=assessor, create=True, scan_type=scan_type)
        e = self._entry(path, content, digest)
        if r.exists(e.path):
            raise FileExistsError(e.path)
        r.put(e)

    def change_file(self, path: str, content: bytes, *, resource: str,
                    project: str | None = None, subject: str | None = None,
                    session: str | None = None, scan: str | None = None,
                    assessor: str | None = None, digest: "bool | str | None" = True) -> None:
        """Replace the content of an existing file (KeyError if it does not exist)."""
        r = self._resource(resource, project=project, subject=subject, session=session,
                           scan=scan, assessor=assessor, create=False)
        e = self._entry(path, content, digest)
        if not r.exists(e.path):
            raise KeyError(e.path)
        r.put(e)

    def delete_file(self, path: str, *, resource: str, project: str | None = None,
                    subject: str | None = None, session: str | None = None,
                    scan: str | None = None, assessor: str | None = None) -> None:
        """Delete a file (KeyError if it does not exist)."""
        r = self._resource(resource, project=project, subject=subject, session=session,
                           scan=scan, assessor=assessor, create=False)
        r.remove(path.strip("/"))

    def add_subject(self, project: str, label: str) -> str:
        """Add a subject to `project`; returns its new accession ID."""
        p = self.site.project(project)
        if p is None:
            raise KeyError(f"no project {project}")
        with self.site.lock:
            if any(s.label_in(p.id) == label for s in p.subjects):
                raise FileExistsError(label)
            return self.site.add_subject(p, label, insert_date=_now_str()).id

    def add_session(self, project: str, subject: str, label: str, *,
                    xsi_type: str = "xnat:mrSessionData", date: str = "") -> str:
        """Add an imaging session (no scans yet; add files with `add_file(..., scan=...)`).

        `subject` is an ID or a label in `project`; returns the new session's accession ID.
        """
        subj = self._subject(subject, project)
        p = self.site.project(project)
        if p is None or p.id != subj.project.id:
            raise KeyError(f"subject {subject} is not owned by project {project}")
        with self.site.lock:
            if any(x.label_in(p.id) == label for x in p.experiments):
                raise FileExistsError(label)
            exp = self.site.add_session(subj, label, xsi_type=xsi_type,
                                        date=date or time.strftime("%Y-%m-%d"),
                                        time_=time.strftime("%H:%M:%S"),
                                        insert_date=_now_str(), modality="MR")
        return exp.id

    def delete_session(self, session: str, project: str | None = None) -> None:
        """Remove a session (or an assessor) and everything below it."""
        e = self._experiment(session, project)
        site = self.site
        with site.lock:
            site.experiments.pop(e.id, None)
            if e.is_assessor:
                e.session.assessors = [a for a in e.session.assessors if a is not e]
                return
            for a in e.assessors:
                site.experiments.pop(a.id, None)
            e.subject.experiments = [x for x in e.subject.experiments if x is not e]
            for pid in e.labels:
                p = site.projects[pid]
                p.experiments = [x for x in p.experiments if x is not e]

    def delete_subject(self, subject: str, project: str | None = None) -> None:
        """Remove a subject with its sessions, their assessors and every resource below it."""
        s = self._subject(subject, project)
        for e in list(s.experiments):
            self.delete_session(e.id)
        site = self.site
        with site.lock:
            site.subjects.pop(s.id, None)
            for pid in s.labels:
                p = site.projects[pid]
                p.subjects = [x for x in p.subjects if x is not s]

    def delete_scan(self, session: str, scan: str, project: str | None = None) -> None:
        """Remove a scan of a session and its resources (KeyError if there is none)."""
        e = self._experiment(session, project)
        sc = e.scan(scan)
        if sc is None:
            raise KeyError(f"no scan {scan} in {e.id}")
        with self.site.lock:
            e.scans = [x for x in e.scans if x is not sc]

    def set_scan(self, session: str, scan: str, *, type: str | None = None,
                 series_description: str | None = None, quality: str | None = None,
                 project: str | None = None) -> None:
        """Change what the scans listing says of a scan (a type corrected, a quality rated),
        as a user of XNAT's web pages does; None leaves a value as it is."""
        sc = self._experiment(session, project).scan(scan)
        if sc is None:
            raise KeyError(f"no scan {scan} in {session}")
        with self.site.lock:
            for name, value in (("type", type), ("series_description", series_description),
                                ("quality", quality)):
                if value is not None:
                    setattr(sc, name, value)

    def set_session(self, session: str, *, date: str | None = None,
                    xsi_type: str | None = None, label: str | None = None,
                    project: str | None = None) -> None:
        """Change a session's date, data type or label (in `project`, else in its own project:
        XNAT renames a session, its ID stays); None leaves a value as it is."""
        e = self._experiment(session, project)
        with self.site.lock:
            if date is not None:
                e.date = date
            if xsi_type is not None:
                e.xsi_type = xsi_type
            if label is not None:
                e.labels[project or e.project.id] = label

    def set_subject(self, subject: str, *, label: str, project: str | None = None) -> None:
        """Rename a subject in `project` (else in its own project); its ID stays."""
        s = self._subject(subject, project)
        with self.site.lock:
            s.labels[project or s.project.id] = label

    def delete_resource(self, resource: str, *, project: str | None = None,
                        subject: str | None = None, session: str | None = None,
                        scan: str | None = None, assessor: str | None = None) -> None:
        """Remove a resource (a catalog) with all its files; where: as for `add_file`."""
        r = self._resource(resource, project=project, subject=subject, session=session,
                           scan=scan, assessor=assessor, create=False)
        with self.site.lock:
            r.owner.resources = [x for x in r.owner.resources if x is not r]

    # -- inspection -----------------------------------------------------------------------
    def iter_files(self, project: str, *, levels: tuple[str, ...] | None = None
                   ) -> Iterator[FileInfo]:
        """Every file of `project` (its own data and what is shared into it), in listing order.

        Order: project resources, then per subject (subject resources, then per session:
        scan resources, session resources, assessor resources).
        """
        p = self.site.project(project)
        if p is None:
            raise KeyError(project)
        pid = p.id

        def want(level: str) -> bool:
            return levels is None or level in levels

        def make(level: str, r: Resource, e: FileEntry, base: str, **kw) -> FileInfo:
            dg = e.digest()
            enc = "/".join(quote(seg, safe="") for seg in e.path.split("/"))
            fields = dict(project=pid, subject_id=None, subject_label=None, session_id=None,
                          session_label=None, scan_id=None, scan_type=None)
            fields.update(kw)
            return FileInfo(level=level, resource=r.label, resource_id=str(r.xnat_id),
                            path=e.path, size=e.size, md5=dg or None,
                            uri=f"{base}/resources/{r.xnat_id}/files/{e.path}",
                            url_path=f"{base}/resources/{r.xnat_id}/files/{enc}",
                            _entry=e, **fields)

        if want("project"):
            for r in list(p.resources):
                for e in r.entries():
                    yield make("project", r, e, f"/data/projects/{pid}")
        for s in list(p.subjects):
            skw = dict(subject_id=s.id, subject_label=s.label_in(pid))
            if want("subject"):
                for r in list(s.resources):
                    for e in r.entries():
                        yield make("subject", r, e, f"/data/projects/{pid}/subjects/{s.id}",
                                   **skw)
            for x in list(s.experiments):
                if pid not in x.labels:
                    continue
                xkw = dict(skw, session_id=x.id, session_label=x.label_in(pid))
                base = f"/data/experiments/{x.id}"
                if want("scan"):
                    for sc in list(x.scans):
                        for r in list(sc.resources):
                            for e in r.entries():
                                yield make("scan", r, e, f"{base}/scans/{sc.id}", scan_id=sc.id,
                                           scan_type=sc.type, **xkw)
                if want("session"):
                    for r in list(x.resources):
                        for e in r.entries():
                            yield make("session", r, e, base, **xkw)
                if want("assessor"):
                    for a in list(x.assessors):
                        for r in list(a.resources):
                            for e in r.entries():
                                yield make("assessor", r, e, f"{base}/assessors/{a.id}/out",
                                           assessor_id=a.id, **xkw)

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<Emulator {self.preset} {self.url} {state}>"
