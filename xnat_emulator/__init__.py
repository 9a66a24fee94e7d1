"""xnat_emulator: a faithful XNAT REST server for tests, demos and benchmarks (stdlib only).

    from xnat_emulator import Emulator
    with Emulator(preset="small", require_login=True) as emu:
        emu.url, emu.users, emu.faults, emu.counters
        emu.add_file(...), emu.change_file(...), emu.delete_file(...), emu.iter_files("PUBLIC1")

Modules: `emulator` (the API), `server` (HTTP/1.1 framing, wire faults, counting), `app` (the
site's state, permissions, dispatch), `paths` (the URL grammar), `wire` (Request, Response,
error pages), route modules `auth_routes`, `site_routes`, `listing_routes`, `item_routes`,
`file_routes`, with `scope` (path -> entities, resources, files), `representations` (XNAT's
tables, items, catalogs) and `archives` (streamed zip/tar); `model` (the data tree), `content`
(deterministic file bytes), `auth` (sessions, tokens), `faults`, `counters`, `presets`
(`small`, `demo`, `files`), `__main__` (the CLI).
"""

from .emulator import Emulator, FileInfo
from .faults import Faults
from .counters import Counters

__all__ = ["Emulator", "FileInfo", "Faults", "Counters"]
