"""DataLad extension: track XNAT projects in DataLad datasets.

Commands: `datalad xnat-init`, `datalad xnat-update`, `datalad xnat-query-files` (alias
`xnat-query`), `datalad xnat-credential`. The XNAT access itself (HTTP, credentials, `xnat:`
URLs) lives in git_annex_remote_xnat; this package only orchestrates DataLad and git-annex.
"""

from __future__ import annotations

command_suite = (
    "Track XNAT imaging projects in DataLad datasets",
    [
        # (module, class, command name, Python API name)
        ("xnat_init.init", "XnatInit", "xnat-init", "xnat_init"),
        ("xnat_init.update.command", "XnatUpdate", "xnat-update", "xnat_update"),
        ("xnat_init.query", "XnatQueryFiles", "xnat-query-files", "xnat_query_files"),
        ("xnat_init.query", "XnatQueryFiles", "xnat-query", "xnat_query"),
        ("xnat_init.credential", "XnatCredential", "xnat-credential", "xnat_credential"),
    ],
)
