"""The file record: one file of an XNAT project, wherever it sits. Its one definition.

The client yields it (listings), the xnat: URL is built from it (urls), the layout renders its
path (xnat_init.layout), and the benchmarks' file table holds it. Every field is a string XNAT
itself reports (IDs, labels, the path inside the resource), except size and md5.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("scan", "session", "assessor", "subject", "project")


@dataclass(frozen=True)
class FileRecord:
    """One file of a project: a scan, session, assessor, subject or project resource's file.

    Fields a level does not have are empty ('' ): a session resource's file has no scan, a
    project resource's file no subject or session; only an assessor's (an image assessor of
    the session: QC, segmentations, processed data) has the assessor fields. The fields after
    them come from listings the enumeration reads anyway (a session's scans, the project's
    experiments), so they cost no request.
    """

    project: str
    subject_id: str
    subject_label: str
    session_id: str
    session_label: str
    scan_id: str
    scan_type: str
    level: str          # one of LEVELS
    resource: str       # resource label
    path: str           # relative path inside the resource; may contain '/'
    size: int
    md5: str | None     # lower-case hex digest as XNAT publishes it; None when it has none
    assessor_id: str = ""
    assessor_label: str = ""
    # what XNAT's listings say of the scan and the session besides their IDs and labels (the
    # dataset's git-annex metadata and tables carry them); '' where a level has none
    series_description: str = ""
    quality: str = ""              # usable, questionable, unusable, ... as the server has it
    session_date: str = ""         # the session's date (YYYY-MM-DD)
    session_xsi_type: str = ""     # the session's data type, e.g. xnat:mrSessionData

    @property
    def name(self) -> str:
        """The file's own name (the last segment of `path`)."""
        return self.path.rsplit("/", 1)[-1]
