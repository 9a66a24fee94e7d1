"""xnat_emulator: a faithful XNAT REST server for tests, demos and benchmarks (stdlib only).

    from xnat_emulator import Emulator
    with Emulator(preset="small", require_login=True) as emu:
        emu.url, emu.users, emu.faults, emu.counters
        emu.add_file(...), emu.change_file(...), emu.delete_file(...), emu.iter_files("PUBLIC1")

Modules: `emulator` (the API), `server` (HTTP, routing, XNAT representations), `model` (the
data tree), `content` (deterministic file bytes), `auth` (sessions, tokens), `faults`,
`counters`, `presets` (`small`, `demo`, `files`), `__main__` (the CLI).
"""

from .emulator import Emulator, FileInfo
from .faults import Faults
from .counters import Counters

__all__ = ["Emulator", "FileInfo", "Faults", "Counters"]
