"""The client's requests under a faulty network, end to end: transient 5xx, broken bodies and
expiring sessions (retried), TLS (refused with one line unless the CA is trusted), redirects to
another host (no secret follows) and servers that stop answering (one error, soon).

Real HTTP over loopback against the emulator, real DataLad and git-annex; nothing is mocked.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import run
from tests.test_xnat_commands import datalad, init, results, update

CRED_ENV = "DATALAD_CREDENTIAL_127_0_0_1"


def closed_site_user(monkeypatch) -> None:
    monkeypatch.setenv(f"{CRED_ENV}_USER", "alice")
    monkeypatch.setenv(f"{CRED_ENV}_PASSWORD", "alice-pass")


# ------------------------------------------------------------------ 1: retries under a fault mix


def test_first_update_completes_under_the_fault_mix(emulator_factory, monkeypatch, tmp_path):
    """XNAT's Tomcat answers 500 for transient failures; with them, broken bodies and sessions
    that expire every 50 requests, one first update with 4 jobs still gets every file."""
    emu = emulator_factory(preset="files", files=400, file_size=1024, require_login=True)
    closed_site_user(monkeypatch)
    ds = tmp_path / "ds"
    datalad("create", str(ds))
    init(ds, emu.url, "-p", "BENCH")
    emu.faults.error_rate = 0.05
    emu.faults.error_status = 500
    emu.faults.truncate_downloads = 0.05
    emu.faults.corrupt_downloads = 0.05
    emu.faults.expire_sessions_after = 50
    emu.counters.reset()
    summary = update(ds, "-J", "4")
    by_status = emu.counters.by_status
    emu.faults.clear()
    assert summary["status"] == "ok" and summary["failed"] == 0, summary
    assert summary["added"] == 400 and summary["fetched"] == 400, summary
    assert run(["git", "annex", "find", "--not", "--in", "here"], cwd=ds).stdout == ""
    run(["git", "annex", "fsck", "--quiet"], cwd=ds)
    assert by_status.get(500, 0) > 0 and by_status.get(401, 0) > 0, by_status
