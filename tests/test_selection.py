"""Choosing what to track: patterns for subjects and sessions, scan types and quality.

Stored by xnat-init, overridden for one run by xnat-update; a selection that matches nothing
says so with what exists; narrowing never makes the files outside it gone, widening adds them.
Against the emulator with real DataLad and git-annex.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run
from tests.test_xnat_commands import alice, datalad, ds, init, results, update  # noqa: F401


def tracked(ds: Path) -> set[str]:
    return set(run(["git", "annex", "find", "--include", "*"], cwd=ds).stdout.splitlines())


def failures(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") not in ("ok", "notneeded")]


def test_subjects_and_sessions_by_pattern(xnat, alice, ds):
    xnat.add_subject("PUBLIC1", "CTRL01")
    xnat.add_session("PUBLIC1", "CTRL01", "CTRL01_MR1")
    xnat.add_file("a.dcm", b"control", resource="DICOM", session="CTRL01_MR1", scan="1")
    assert not failures(init(ds, xnat.url, "-p", "PUBLIC1", "-s", "SUBJ0*"))
    assert "SUBJ0*" in run(["git", "config", "-f", ".datalad/config", "--get-all",
                            "datalad.xnat.default.subject"], cwd=ds).stdout
    update(ds, "--reckless", "fast")
    assert {p.split("/")[0] for p in tracked(ds)} == {"SUBJ01", "SUBJ02"}
    # one run, another pattern: the control subject is added, nothing else is gone
    summary = update(ds, "--reckless", "fast", "--remove-gone", "-s", "CTRL*")
    assert (summary["added"], summary["gone"]) == (1, 0), summary
    # a pattern that matches nothing says so, with what exists, and fails
    for records in (results("xnat-update", "-s", "PAT*", cwd=ds),
                    init(ds, xnat.url, "-p", "PUBLIC1", "-f", "-s", "PAT*")):
        problems = failures(records)
        assert problems and "no subject PAT*" in problems[0]["message"], records
        assert "SUBJ01" in problems[0]["message"] and "CTRL01" in problems[0]["message"]
