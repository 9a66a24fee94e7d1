"""Choosing what to track: patterns for subjects and sessions, scan types and quality.

Stored by xnat-init, overridden for one run by xnat-update; a selection that matches nothing
says so with what exists; narrowing never makes the files outside it gone, widening adds them.
Against the emulator with real DataLad and git-annex.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run
from tests.test_xnat_commands import alice, ds, init, results, update  # noqa: F401 (fixtures)


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


def scan_paths(xnat, project: str, keep) -> set[str]:
    return {f"{f.subject_label}/{f.session_label}/{f.scan_id}/{f.path}"
            for f in xnat.iter_files(project) if f.level == "scan" and keep(f)}


def test_scan_type_and_quality_choose_scans(xnat, alice, ds):
    t1 = scan_paths(xnat, "PUBLIC1", lambda f: f.scan_type.startswith("T1"))
    every_scan = scan_paths(xnat, "PUBLIC1", lambda f: True)
    assert t1 and every_scan > t1
    assert not failures(init(ds, xnat.url, "-p", "PUBLIC1", "--scan-type", "T1*"))
    assert "T1*" in run(["git", "config", "-f", ".datalad/config", "--get-all",
                         "datalad.xnat.default.scan-type"], cwd=ds).stdout
    assert update(ds, "--reckless", "fast")["added"] == len(t1)
    assert tracked(ds) == t1

    # a T1 scan rated unusable falls out of a narrower selection, and is not gone for that
    rated = next(f for f in xnat.iter_files("PUBLIC1")
                 if f.level == "scan" and f.scan_type.startswith("T1"))
    xnat.set_scan(rated.session_label, rated.scan_id, quality="unusable", project="PUBLIC1")
    summary = update(ds, "--reckless", "fast", "--remove-gone", "--quality", "usable")
    assert (summary["added"], summary["gone"], summary["status"]) == (0, 0, "ok"), summary
    assert tracked(ds) == t1
    # widening adds the rest of the scans
    summary = update(ds, "--reckless", "fast", "--scan-type", "*")
    assert summary["added"] == len(every_scan - t1), summary
    assert tracked(ds) == every_scan

    # a selection that matches nothing says so, with what exists, and is not "ok, 0 added"
    records = results("xnat-update", "--reckless", "fast", "--scan-type", "NOPE*", cwd=ds)
    summary = [r for r in records if r.get("type") == "dataset" and "added" in r][-1]
    assert summary["status"] == "error", summary
    assert "scan type NOPE* matched no scan" in summary["message"], summary["message"]
    assert "T1w" in summary["message"]
    assert tracked(ds) == every_scan

    listed = [r for r in results("xnat-query-files", xnat.url, "-p", "PUBLIC1",
                                 "--scan-type", "DTI", cwd=ds) if r.get("type") == "xnat-file"]
    assert listed and {r["scan_type"] for r in listed} == {"DTI"}


def test_a_scan_that_falls_out_of_the_selection_still_gets_its_new_values(xnat, alice, ds):
    """A scan rated unusable leaves a `--quality usable` selection; its tracked files are not
    gone, and their metadata says unusable, as scans.tsv does."""
    rated = next(f for f in xnat.iter_files("PUBLIC1") if f.level == "scan")
    where = dict(resource=rated.resource, session=rated.session_label, scan=rated.scan_id)
    xnat.add_file("no-digest.dcm", b"listed without a digest", digest=False, **where)
    assert not failures(init(ds, xnat.url, "-p", "PUBLIC1"))
    update(ds, "--reckless", "fast")
    # the tracked copy of this one stays the old content (outside the selection: not updated)
    xnat.change_file(rated.path, b"new content", **where)
    xnat.set_scan(rated.session_label, rated.scan_id, quality="unusable", project="PUBLIC1")
    summary = update(ds, "--reckless", "fast", "--quality", "usable")
    assert (summary["gone"], summary["status"]) == (0, "ok"), summary
    files = scan_paths(xnat, "PUBLIC1", lambda f: (f.session_label, f.scan_id)
                       == (rated.session_label, rated.scan_id))
    assert len(files) > 2 and any(p.endswith("/no-digest.dcm") for p in files)
    for path in files:
        value = run(["git", "annex", "metadata", "--get", "quality", path], cwd=ds).stdout
        assert value.strip() == "unusable", path
    assert "unusable" in (ds / ".xnat" / "default" / "scans.tsv").read_text()
