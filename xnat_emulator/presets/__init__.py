"""Presets: functions that build a `Site` from (seed, files, file_size).

* `small`: the fixed test fixture (see `xnat_emulator.presets.small`).
* `demo`: a realistic-looking project `DEMO` (see `xnat_emulator.presets.demo`).
* `files`: a project `BENCH` of N files for benchmarks (see `xnat_emulator.presets.files`).
"""

from __future__ import annotations

from ..model import Site

PRESETS = ("small", "demo", "files")


def build(preset: str, seed: int = 0, files: int | None = None,
          file_size: int | None = None) -> Site:
    if preset == "small":
        from . import small
        return small.build(seed, files=files, file_size=file_size)
    if preset == "demo":
        from . import demo
        return demo.build(seed, files=files, file_size=file_size)
    if preset == "files":
        from . import files as files_mod
        return files_mod.build(seed, files=files, file_size=file_size)
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
