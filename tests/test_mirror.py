"""The dataset is an exact mirror of what its instance lists, and nothing else is touched.

An instance owns the tracked files whose xnat: URL is of its server and inside its scope and
that stand where its layout puts them; an owned file the server no longer lists is gone, at
whatever level it disappeared. Against the emulator, with real DataLad and git-annex.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from git_annex_remote_xnat.credentials import default_credential_name
from tests.conftest import run
from tests.test_xnat_commands import (  # noqa: F401 (fixtures)
    alice, annex_key, datalad, ds, init, results, update)


def tracked(ds: Path) -> set[str]:
    """Every annexed file of the dataset (subdatasets included), relative to it."""
    out = run(["git", "annex", "find", "--include", "*"], cwd=ds).stdout.splitlines()
    found = set(out)
    subs = run(["git", "submodule", "--quiet", "foreach", "--recursive",
                "git annex find --include '*' | sed \"s|^|$displaypath/|\""], cwd=ds,
               check=False).stdout.splitlines()
    return found | set(subs)


def listed_paths(xnat, project: str) -> set[str]:
    return {f"{f.subject_label}/{f.session_label}/{f.scan_id}/{f.path}"
            for f in xnat.iter_files(project) if f.level == "scan"}


def test_two_instances_in_one_dataset_leave_each_other_alone(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    init(ds, xnat.url, "-p", "SHARED2", "--name", "second")
    update(ds, "--reckless", "fast")
    update(ds, "--reckless", "fast", "--name", "second")
    before = tracked(ds)
    assert listed_paths(xnat, "PUBLIC1") | listed_paths(xnat, "SHARED2") <= before

    for args in ((), ("--name", "second")):
        summary = update(ds, "--reckless", "fast", "--remove-gone", *args)
        assert (summary["gone"], summary["removed"], summary["added"]) == (0, 0, 0), summary
    assert tracked(ds) == before
    shared = "SHR_SUBJ01/SHR_SUBJ01_MR1/1"  # fetched through the second instance's project
    datalad("get", shared, cwd=ds)
    assert all(p.read_bytes() for p in (ds / shared).iterdir())


def test_a_users_copy_of_a_tracked_file_is_not_the_instances(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM")
    update(ds, "--reckless", "fast")
    original = "SUBJ02/SUBJ02_MR1/1/" + next(
        f.path for f in xnat.iter_files("PUBLIC1")
        if f.session_id == "XNAT_E00002" and f.scan_id == "1" and f.resource == "DICOM")
    (ds / "analysis").mkdir()
    shutil.copy(ds / original, ds / "analysis" / "mine.dcm", follow_symlinks=False)
    datalad("save", "-m", "my copy", cwd=ds)

    assert update(ds, "--reckless", "fast", "--remove-gone")["gone"] == 0
    xnat.delete_file(original.rsplit("/", 1)[1], resource="DICOM", session="XNAT_E00002",
                     scan="1")
    summary = update(ds, "--reckless", "fast", "--remove-gone")
    assert (summary["gone"], summary["removed"]) == (1, 1), summary
    assert not os.path.lexists(ds / original)
    assert os.path.islink(ds / "analysis" / "mine.dcm")
    assert annex_key(ds, "analysis/mine.dcm")


def _delete(xnat, level: str) -> None:
    if level == "subject":
        xnat.delete_subject("SUBJ02", project="PUBLIC1")
    elif level == "session":
        xnat.delete_session("SUBJ02_MR1", project="PUBLIC1")
    elif level == "scan":
        xnat.delete_scan("XNAT_E00002", "501")
    else:
        xnat.delete_resource("NIFTI", session="XNAT_E00002", scan="2")


@pytest.mark.parametrize("level", ["subject", "session", "scan", "resource"])
def test_whatever_disappears_from_the_server_makes_its_files_gone(level, xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    before = tracked(ds)
    _delete(xnat, level)
    still_listed = listed_paths(xnat, "PUBLIC1")
    expected_gone = {p for p in before
                     if p.startswith("SUBJ02/") and p.count("/") >= 3 and p not in still_listed
                     and "/resources/" not in p}
    if level in ("subject", "session"):
        expected_gone |= {p for p in before if p.startswith("SUBJ02/SUBJ02_MR1/resources/")}
    assert expected_gone

    reported = update(ds, "--reckless", "fast")
    assert reported["gone"] == len(expected_gone), reported
    assert tracked(ds) == before
    removed = update(ds, "--reckless", "fast", "--remove-gone")
    assert removed["removed"] == len(expected_gone)
    assert tracked(ds) == before - expected_gone
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""


@pytest.mark.parametrize("level", ["subject", "session"])
def test_a_renamed_subject_or_session_moves_its_files(level, xnat, alice, ds):
    """XNAT renames a subject or session and keeps its ID (and so the files' xnat: URLs): the
    next update moves the files to the new label in one commit, with their content (nothing is
    downloaded again), whatever --remove-gone says, as the server still has them. A user's
    copy in a folder the layout could have made but did not is the user's, and stays."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds)
    before = tracked(ds)
    mine = next(p for p in sorted(before) if p.startswith("SUBJ02/SUBJ02_MR1/"))
    copy = mine.replace("SUBJ02/SUBJ02_MR1/", "SUBJ02/SUBJ02_MR1_mine/", 1)
    (ds / copy).parent.mkdir(parents=True)
    shutil.copy(ds / mine, ds / copy, follow_symlinks=False)
    datalad("save", "-m", "my copy", cwd=ds)
    if level == "subject":
        xnat.set_subject("SUBJ02", label="SUBJ02_renamed", project="PUBLIC1")
        old, new = "SUBJ02/", "SUBJ02_renamed/"
    else:
        xnat.set_session("SUBJ02_MR1", label="SUBJ02_MR1_renamed", project="PUBLIC1")
        old, new = "SUBJ02/SUBJ02_MR1/", "SUBJ02/SUBJ02_MR1_renamed/"
    moved = {p for p in before if p.startswith(old)}
    at_new = {new + p[len(old):] for p in moved}
    assert moved

    planned = update(ds, "--dry-run")
    assert (planned["would_move"], planned["added"], planned["gone"]) == (len(moved),
                                                                          len(moved), 0)
    summary = update(ds)
    assert (summary["moved"], summary["added"], summary["gone"], summary["removed"],
            summary["fetched"]) == (len(moved), len(moved), 0, 0, 0), summary
    assert tracked(ds) == (before - moved) | {copy} | at_new
    assert not (ds / "SUBJ02" / "SUBJ02_MR1").exists()  # the old folder; SUBJ02/ holds mine
    present = run(["git", "annex", "find", "--in", "here"], cwd=ds).stdout.split()
    assert at_new <= set(present)
    again = update(ds, "--remove-gone")
    assert (again["moved"], again["gone"], again["added"]) == (0, 0, 0), again
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""


def test_a_rename_moves_only_what_the_update_registers_at_the_new_label(xnat, alice, ds):
    """A renamed session's files that this run does not register at the new label (outside
    its --scan-type selection) stay where they are: moving them would drop them."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    before = tracked(ds)
    xnat.set_session("SUBJ01_MR1", label="SUBJ01_MR1_renamed", project="PUBLIC1")
    t1 = {f"SUBJ01/SUBJ01_MR1/{f.scan_id}/{f.path}" for f in xnat.iter_files("PUBLIC1")
          if f.session_id == "XNAT_E00001" and f.level == "scan" and f.scan_type.startswith("T1")}
    session = {p for p in before if p.startswith("SUBJ01/SUBJ01_MR1/")}
    assert t1 and session > t1

    summary = update(ds, "--reckless", "fast", "--scan-type", "T1*")
    assert (summary["moved"], summary["added"], summary["gone"]) == (len(t1), len(t1), 0)
    at_new = {p.replace("SUBJ01_MR1/", "SUBJ01_MR1_renamed/", 1) for p in t1}
    assert tracked(ds) == (before - t1) | at_new


def test_subject_subdatasets_no_listed_file_goes_to_are_looked_into(xnat, alice, ds):
    """With `{subject}//`, a subject deleted on the server, or renamed, leaves a subdataset no
    listed file goes to: its files are gone (removed with --remove-gone), or moved (to the
    new label's subdataset); the subdatasets stay, committed, and a scan type renamed where
    the layout shows it moves the scan's files inside their subdataset."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", "{subject}//{session}/{scan}_{scan_type}/")
    update(ds, "--reckless", "fast")
    before = tracked(ds)
    renamed = {p for p in before if p.startswith("SUBJ01/")}
    deleted = {p for p in before if p.startswith("SUBJ02/")}
    xnat.set_subject("SUBJ01", label="SUBJ01_renamed", project="PUBLIC1")
    xnat.delete_subject("SUBJ02", project="PUBLIC1")
    assert renamed and deleted

    summary = update(ds, "--reckless", "fast")
    assert (summary["moved"], summary["added"], summary["gone"]) == (
        len(renamed), len(renamed), len(deleted)), summary
    at_new = {"SUBJ01_renamed/" + p[len("SUBJ01/"):] for p in renamed}
    assert tracked(ds) == (before - renamed) | at_new
    summary = update(ds, "--reckless", "fast", "--remove-gone")
    assert (summary["moved"], summary["gone"], summary["removed"]) == (0, len(deleted),
                                                                       len(deleted)), summary
    assert tracked(ds) == (before - renamed - deleted) | at_new

    scan = next(p for p in sorted(at_new) if p.startswith("SUBJ01_renamed/SUBJ01_MR1/"))
    folder = scan.rsplit("/", 1)[0]
    scan_id, scan_type = folder.rsplit("/", 1)[1].split("_", 1)
    xnat.set_scan("SUBJ01_MR1", scan_id, type=scan_type + "x", project="PUBLIC1")
    in_scan = {p for p in at_new if p.startswith(folder + "/")}
    summary = update(ds, "--reckless", "fast")
    assert (summary["moved"], summary["added"], summary["gone"]) == (len(in_scan),
                                                                     len(in_scan), 0), summary
    assert update(ds, "--reckless", "fast")["moved"] == 0
    for repo in (ds, ds / "SUBJ01", ds / "SUBJ01_renamed", ds / "SUBJ02"):
        assert run(["git", "status", "--porcelain"], cwd=repo).stdout == "", repo


def test_update_from_inside_a_subdataset_refuses(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", "{subject}//{session}/{scan}/", "-c", "NIFTI")
    update(ds, "--reckless", "fast")
    sub = ds / "SUBJ01"
    head = run(["git", "rev-parse", "HEAD"], cwd=sub).stdout
    records = results("xnat-update", "--reckless", "fast", cwd=sub)
    refused = [r for r in records if r["status"] in ("impossible", "error")]
    assert refused and "superdataset" in refused[0]["message"], records
    assert run(["git", "rev-parse", "HEAD"], cwd=sub).stdout == head
    assert not (sub / "SUBJ01").exists() and not (sub / "SUBJ02").exists()


def test_assessor_resources_are_tracked_under_their_session(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    summary = update(ds)
    base = "SUBJ01/SUBJ01_MR1/assessors/SUBJ01_MR1_QC/QC"
    assert (ds / base / "qc_report.txt").read_text() == "QC passed for SUBJ01_MR1.\n"
    assert (ds / base / "metrics" / "metrics.json").exists()
    listed = sum(1 for f in xnat.iter_files("PUBLIC1") if f.session_id == "XNAT_E00001")
    assert summary["added"] == listed
    xnat.delete_session("SUBJ01_MR1_QC", project="PUBLIC1")
    assert update(ds, "--reckless", "fast")["gone"] == 2


def test_a_shared_subject_appears_under_its_label_in_the_tracked_project(xnat, alice, ds):
    init(ds, xnat.url, "-p", "SHARED2", "-c", "DICOM")
    update(ds, "--reckless", "fast")
    assert (ds / "SHR_SUBJ01" / "SHR_SUBJ01_MR1" / "1").is_dir()
    assert not (ds / "SUBJ01").exists()


def test_reckless_fast_without_digests_downloads_nothing_and_later_copies_verify(
        xnat, alice, ds):
    xnat.faults.drop_digests = True  # the server's checksum preference is off
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1", "-c", "MAT")
    xnat.counters.reset()
    summary = update(ds, "--reckless", "fast")
    downloads = sum(n for route, n in xnat.counters.snapshot()["by_route"].items()
                    if "/files/" in route and route.startswith("GET"))
    assert downloads == 0, xnat.counters.snapshot()
    assert summary["added"] == 2 and summary["no_digest"] == 2, summary
    path = "SUBJ01/SUBJ01_MR1/BOLD_1/motion.par"
    key = annex_key(ds, path)
    size = next(f.size for f in xnat.iter_files("PUBLIC1") if f.path == "motion.par")
    assert key.startswith(f"VURL-s{size}--"), key
    # the first download records the checksum; a later copy with other bytes is refused
    datalad("get", path, cwd=ds)
    first = (ds / path).read_bytes()
    run(["git", "annex", "fsck", path], cwd=ds)
    run(["git", "annex", "drop", "--force", path], cwd=ds)
    xnat.change_file("motion.par", bytes(len(first)), resource="MAT", session="XNAT_E00001",
                     scan="BOLD_1", digest=None)
    refused = run(["git", "annex", "get", path], cwd=ds, check=False)
    assert refused.returncode != 0 and not (ds / path).exists()
    # the default mode, which downloads anyway, keeps making MD5E keys, and re-keys a VURL one
    assert update(ds)["failed"] == 0
    assert annex_key(ds, path).startswith("MD5E-") and (ds / path).read_bytes() == bytes(
        len(first))
    ds2 = ds.parent / "ds2"
    datalad("create", str(ds2))
    init(ds2, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1", "-c", "MAT")
    assert update(ds2)["no_digest"] == 2
    assert annex_key(ds2, path).startswith("MD5E-")


def test_a_dataset_made_by_datalad_xnat_0_2_1_is_adopted(xnat, alice, ds):
    """0.2.1 stored `path` (its {subject}/{session} were accession IDs) and a blank-separated
    `collection`, and registered URL- keys of http URLs: its layout stays, no second tree."""
    config = ds / ".datalad" / "config"
    for key, value in (("url", xnat.url), ("project", "PUBLIC1"),
                       ("path", "{subject}/{session}/{scan}/"),
                       ("credential-name", default_credential_name(xnat.url)),
                       ("collection", "DICOM NIFTI")):
        run(["git", "config", "-f", str(config), f"datalad.xnat.default.{key}", value], cwd=ds)
    old = next(f for f in xnat.iter_files("PUBLIC1")
               if f.session_id == "XNAT_E00001" and f.scan_id == "2" and f.resource == "NIFTI")
    old_path = f"XNAT_S00001/XNAT_E00001/2/{old.path}"
    run(["git", "annex", "addurl", "--relaxed", "--raw", "--file", old_path,
         f"{xnat.url}/data/experiments/XNAT_E00001/scans/2/resources/NIFTI/files/{old.path}"],
        cwd=ds)
    datalad("save", "-m", "as datalad-xnat 0.2.1 left it", cwd=ds)
    assert annex_key(ds, old_path).startswith(("URL-", "VURL-"))

    summary = update(ds, "--reckless", "fast")
    assert summary["status"] == "ok", summary
    assert not (ds / "SUBJ01").exists() and not (ds / "SUBJ02").exists()
    assert annex_key(ds, old_path).startswith(f"MD5E-s{old.size}--{old.md5}")  # re-keyed
    wanted = {f"{f.subject_id}/{f.session_id}/{f.scan_id}/{f.path}"
              for f in xnat.iter_files("PUBLIC1")
              if f.level == "scan" and f.resource in ("DICOM", "NIFTI")}
    assert wanted <= tracked(ds)
    assert not any("/resources/" in p or p.endswith(".gif") for p in tracked(ds))
    assert update(ds, "--reckless", "fast")["added"] == 0


def _top_folders(ds: Path) -> set[str]:
    return {p.split("/", 1)[0] for p in tracked(ds)}


def test_several_subjects_or_sessions_are_one_selection(xnat, alice, ds):
    """-s and -e repeat like -c, on the command line and as a list from Python; the instance
    owns exactly the selection, and a name the project lacks is named."""
    from datalad.api import xnat_init, xnat_update

    quiet = dict(result_renderer="disabled", return_type="list", on_failure="ignore")
    xnat.add_subject("PUBLIC1", "SUBJ03")
    xnat.add_session("PUBLIC1", "SUBJ03", "SUBJ03_MR1")
    xnat.add_file("a.dcm", b"third subject", resource="DICOM", session="SUBJ03_MR1", scan="1")

    xnat_init(xnat.url, dataset=str(ds), project="PUBLIC1", subject=["SUBJ01", "XNAT_S00002"],
              **quiet)
    stored = run(["git", "config", "-f", str(ds / ".datalad" / "config"), "--get-all",
                  "datalad.xnat.default.subject"], cwd=ds).stdout.split()
    assert stored == ["SUBJ01", "XNAT_S00002"]
    records = xnat_update(dataset=str(ds), reckless="fast", **quiet)
    assert [r for r in records if r.get("type") == "dataset"][-1]["status"] == "ok", records
    assert _top_folders(ds) == {"SUBJ01", "SUBJ02"}

    # a narrower selection given to one update owns only its part: nothing else is gone
    summary = update(ds, "--reckless", "fast", "--remove-gone", "-s", "SUBJ03")
    assert (summary["added"], summary["gone"]) == (1, 0), summary
    assert _top_folders(ds) == {"SUBJ01", "SUBJ02", "SUBJ03"}
    summary = update(ds, "--reckless", "fast", "--remove-gone", "-e", "SUBJ01_MR1",
                     "-e", "XNAT_E00002")
    assert (summary["added"], summary["gone"]) == (0, 0), summary

    xnat.delete_session("SUBJ03_MR1", project="PUBLIC1")
    summary = update(ds, "--reckless", "fast", "--remove-gone", "-s", "SUBJ02", "-s", "SUBJ03")
    assert (summary["gone"], summary["removed"]) == (1, 1), summary
    assert _top_folders(ds) == {"SUBJ01", "SUBJ02"}

    failed = [r for r in results("xnat-update", "-s", "SUBJ01", "-s", "NOPE", cwd=ds)
              if r.get("status") not in ("ok", "notneeded")]
    assert failed and "no subject NOPE (" in failed[0]["message"], failed
    failed = [r for r in init(ds, xnat.url, "-p", "PUBLIC1", "-f", "-s", "SUBJ01", "-s", "NOPE")
              if r.get("status") not in ("ok", "notneeded")]
    assert failed and "subject NOPE" in failed[0]["message"], failed

    listed = [r for r in results("xnat-query-files", xnat.url, "-p", "PUBLIC1", "-s", "SUBJ01",
                                 "-s", "SUBJ03", cwd=ds) if r.get("type") == "xnat-file"]
    assert {r["subject_label"] for r in listed} == {"SUBJ01"} and listed
