"""git-annex special remote for XNAT servers.

This package is the XNAT side of the project. It must stay importable without DataLad and cheap to
import: git-annex starts the special remote for every `get`, `whereis` and `info`.
"""

__version__ = "0.1.0"
