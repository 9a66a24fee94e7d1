"""XNAT's values as git-annex metadata of every registered file, and the instance's tables.

Against the emulator, with real DataLad, git-annex and HTTP: the fields of a file at each
level, a value changed on the server updated by the next update (and a no-op update that
writes nothing), `git annex find/get --metadata` and `git annex view`, a key that several
files share, and the tables in a fresh clone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run
from tests.conftest import file_record
from tests.test_xnat_commands import alice, datalad, ds, init, update  # noqa: F401 (fixtures)

SCAN_FILE = "SUBJ01/SUBJ01_MR1/2/SUBJ01_MR1_2_T1w.nii.gz"
SHARED_JSON = ("SUBJ01/SUBJ01_MR1/2/SUBJ01_MR1_2_T1w.json",
               "SUBJ02/SUBJ02_MR1/2/SUBJ02_MR1_2_T1w.json")   # one content: one key
SESSION_1 = dict(project=["PUBLIC1"], subject=["SUBJ01"], subject_id=["XNAT_S00001"],
                 session=["SUBJ01_MR1"], session_id=["XNAT_E00001"], date=["2024-01-15"],
                 xsitype=["xnat:mrSessionData"])


def fields(ds: Path, path: str) -> dict[str, list[str]]:
    """The file's metadata as git-annex reads it, without the generated *lastchanged."""
    record = json.loads(run(["git", "annex", "metadata", "--json", path], cwd=ds).stdout)
    return {name: sorted(values) for name, values in record["fields"].items()
            if not name.endswith("lastchanged")}


def found(ds: Path, *args: str) -> set[str]:
    return set(run(["git", "annex", "find", "--include", "*", *args], cwd=ds)
               .stdout.splitlines())


def keys(ds: Path) -> dict[str, str]:
    """path -> key of every annexed file."""
    lines = run(["git", "annex", "find", "--include", "*", "--format", "${file}\t${key}\n"],
                cwd=ds).stdout.splitlines()
    return dict(line.split("\t") for line in lines)


def sharing(ds: Path, paths: set[str]) -> set[str]:
    """`paths` and every other file with the content of one of them: metadata is per key,
    so `find --metadata` names them all (the small preset's sidecar JSONs are the same in
    both sessions)."""
    known = keys(ds)
    wanted = {known[path] for path in paths}
    return {path for path, key in known.items() if key in wanted}


def tsv(path: Path) -> list[dict[str, str]]:
    """A table's rows by its header (read here as a user's script would)."""
    header, *rows = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


def heads(ds: Path) -> tuple[str, str]:
    return tuple(run(["git", "rev-parse", ref], cwd=ds).stdout.strip()
                 for ref in ("HEAD", "git-annex"))


def scan_files(xnat, **where) -> set[str]:
    """Paths the default pathfmt gives the scan files of PUBLIC1 that match `where`."""
    return {f"{f.subject_label}/{f.session_label}/{f.scan_id}/{f.path}"
            for f in xnat.iter_files("PUBLIC1")
            if f.level == "scan" and all(getattr(f, k) == v for k, v in where.items())}


def test_every_file_gets_xnat_values_at_its_level(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    assert fields(ds, SCAN_FILE) == dict(
        SESSION_1, scan=["2"], scan_type=["T1w"], series_description=["T1w MPRAGE"],
        quality=["usable"], resource=["NIFTI"], level=["scan"])
    assert fields(ds, "SUBJ01/SUBJ01_MR1/resources/BIDS/sub-01/anat/sub-01_T1w.json") == dict(
        SESSION_1, resource=["BIDS"], level=["session"])
    assert fields(ds, "SUBJ01/SUBJ01_MR1/assessors/SUBJ01_MR1_QC/QC/qc_report.txt") == dict(
        SESSION_1, assessor=["SUBJ01_MR1_QC"], resource=["QC"], level=["assessor"])
    assert fields(ds, "SUBJ01/resources/notes/intake.txt") == dict(
        project=["PUBLIC1"], subject=["SUBJ01"], subject_id=["XNAT_S00001"],
        resource=["notes"], level=["subject"])
    assert fields(ds, "resources/protocol/README.txt") == dict(
        project=["PUBLIC1"], resource=["protocol"], level=["project"])
    # the file without digest (a VURL key with --reckless fast) has its values too
    assert fields(ds, "SUBJ01/SUBJ01_MR1/BOLD_1/motion.par")["scan_type"] == ["bold"]
    # every registered file has some
    assert found(ds, "--metadata", "level=*") == found(ds)


def test_a_key_two_files_share_holds_the_values_of_both(xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    assert run(["git", "annex", "lookupkey", SHARED_JSON[0]], cwd=ds).stdout == \
        run(["git", "annex", "lookupkey", SHARED_JSON[1]], cwd=ds).stdout
    both = fields(ds, SHARED_JSON[0])
    assert both == fields(ds, SHARED_JSON[1])
    assert (both["subject"], both["session"], both["quality"]) == \
        (["SUBJ01", "SUBJ02"], ["SUBJ01_MR1", "SUBJ02_MR1"], ["usable"])
    # one of them rated unusable: the key holds both ratings
    xnat.set_scan("XNAT_E00002", "2", quality="unusable")
    update(ds, "--reckless", "fast")
    assert fields(ds, SHARED_JSON[0])["quality"] == ["unusable", "usable"]
    # the other too: "usable" is no file's any more
    xnat.set_scan("XNAT_E00001", "2", quality="unusable")
    update(ds, "--reckless", "fast")
    assert fields(ds, SHARED_JSON[0])["quality"] == ["unusable"]
    assert found(ds, "--metadata", "quality=usable") & set(SHARED_JSON) == set()


@pytest.mark.parametrize("method", ["fast-import", "batch"])
def test_a_value_changed_on_the_server_is_updated(xnat, alice, ds, method):
    run(["git", "config", "datalad.xnat.register-method", method], cwd=ds)
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    before = heads(ds)
    tables = (ds / ".xnat" / "default" / "scans.tsv").read_bytes()
    # nothing changed on the server: no commit on either branch, tables byte-identical
    summary = update(ds, "--reckless", "fast")
    assert heads(ds) == before and summary["commits"] == 0 and summary["relabelled"] == 0
    assert (ds / ".xnat" / "default" / "scans.tsv").read_bytes() == tables

    xnat.set_scan("XNAT_E00001", "501", type="DWI", quality="questionable")
    xnat.set_session("XNAT_E00002", date="2024-02-01")
    summary = update(ds, "--reckless", "fast")
    scan = scan_files(xnat, session_id="XNAT_E00001", scan_id="501")
    session = {path for path in found(ds) if path.startswith("SUBJ02/")}
    assert summary["relabelled"] == len(scan | session) and summary["added"] == 0
    one = fields(ds, "SUBJ01/SUBJ01_MR1/501/SUBJ01_MR1_501_DTI.nii.gz")
    assert (one["scan_type"], one["quality"]) == (["DWI"], ["questionable"])
    assert fields(ds, "SUBJ02/SUBJ02_MR1/2/SUBJ02_MR1_2_T1w.nii.gz")["date"] == ["2024-02-01"]
    # the DTI sidecar's content is SUBJ02's too (one key): it holds both scans' values
    assert found(ds, "--metadata", "scan_type=DWI") == sharing(ds, scan)
    assert found(ds, "--metadata", "scan_type=DTI") == \
        sharing(ds, scan_files(xnat, session_id="XNAT_E00002", scan_id="501"))
    assert "SUBJ01/SUBJ01_MR1/501/SUBJ01_MR1_501_DTI.json" in sharing(ds, session)
    assert found(ds, "--metadata", "date=2024-02-01") == sharing(ds, session)
    log = run(["git", "log", "-1", "--format=%s"], cwd=ds).stdout
    assert f"XNAT metadata of {len(scan | session)} files updated" in log
    assert "DWI\tDTI 64 directions\tquestionable" in \
        (ds / ".xnat" / "default" / "scans.tsv").read_text()
    before = heads(ds)
    assert update(ds, "--reckless", "fast")["commits"] == 0 and heads(ds) == before


def test_find_get_and_view_by_metadata(xnat, alice, ds, tmp_path):
    """The README's recipe: only the usable T1w scans of a subject."""
    for n in range(2):
        xnat.add_file(f"t1-rerun-{n}.dcm", b"rerun %d" % n, resource="DICOM",
                      session="XNAT_E00001", scan="7", scan_type="T1w")
    xnat.set_scan("XNAT_E00001", "7", quality="unusable")
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    t1w = scan_files(xnat, scan_type="T1w")
    assert found(ds, "--metadata", "scan_type=T1w") == sharing(ds, t1w) == t1w
    usable = scan_files(xnat, scan_type="T1w", session_id="XNAT_E00001", scan_id="2")
    run(["git", "annex", "get", "--metadata", "scan_type=T1w", "--metadata", "quality=usable",
         "SUBJ01"], cwd=ds)
    assert found(ds, "--in", "here", "SUBJ01") == usable
    # a clone searches without the server, and views by the same fields
    clone = tmp_path / "clone"
    datalad("clone", str(ds), str(clone))
    assert found(clone, "--metadata", "quality=unusable") == \
        scan_files(xnat, session_id="XNAT_E00001", scan_id="7")
    run(["git", "annex", "view", "scan_type=T1w", "subject=*"], cwd=clone)
    viewed = {str(p.relative_to(clone)): p.readlink().name for p in clone.rglob("*")
              if p.is_symlink() and ".git" not in p.parts}
    assert {path.split("/")[0] for path in viewed} == {"SUBJ01", "SUBJ02"}
    known = keys(ds)
    assert set(viewed.values()) == {known[path] for path in t1w}


def test_tables_in_a_fresh_clone(xnat, alice, ds, tmp_path):
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", "{subject}//{session}/{scan}/")
    update(ds, "--reckless", "fast")
    clone = tmp_path / "clone"
    datalad("clone", str(ds), str(clone))
    folder = clone / ".xnat" / "default"
    assert sorted(p.name for p in folder.iterdir()) == ["scans.tsv", "sessions.tsv",
                                                        "subjects.tsv"]
    files = [f for f in xnat.iter_files("PUBLIC1")]
    sessions = tsv(folder / "sessions.tsv")
    assert [(r["subject"], r["session"], r["session_id"], r["date"], r["xsitype"], r["scans"],
             int(r["files"])) for r in sessions] == [
        ("SUBJ01", "SUBJ01_MR1", "XNAT_E00001", "2024-01-15", "xnat:mrSessionData", "4",
         sum(f.session_id == "XNAT_E00001" for f in files)),
        ("SUBJ02", "SUBJ02_MR1", "XNAT_E00002", "2024-01-16", "xnat:mrSessionData", "4",
         sum(f.session_id == "XNAT_E00002" for f in files))]
    scans = tsv(folder / "scans.tsv")
    assert [(r["session"], r["scan"], r["scan_type"], r["quality"]) for r in scans[:4]] == [
        ("SUBJ01_MR1", "1", "Localizer", "usable"), ("SUBJ01_MR1", "2", "T1w", "usable"),
        ("SUBJ01_MR1", "501", "DTI", "usable"), ("SUBJ01_MR1", "BOLD_1", "bold", "usable")]
    for row in scans:
        listed = [f for f in files if f.level == "scan" and f.session_id == row["session_id"]
                  and f.scan_id == row["scan"]]
        assert (int(row["files"]), int(row["bytes"])) == (len(listed),
                                                          sum(f.size for f in listed))
    subjects = tsv(folder / "subjects.tsv")
    assert [(r["subject"], r["sessions"]) for r in subjects] == [("SUBJ01", "1"),
                                                                 ("SUBJ02", "1")]
    # plain blobs in git, kept out of the annex; the subdatasets have no tables
    listed = run(["git", "ls-files", "-s", ".xnat"], cwd=clone).stdout.splitlines()
    assert len(listed) == 4 and all(line.startswith("100644 ") for line in listed)
    assert run(["git", "check-attr", "annex.largefiles", ".xnat/default/scans.tsv"],
               cwd=clone).stdout.strip().endswith(": nothing")
    assert not (ds / "SUBJ01" / ".xnat").exists()
    # the metadata is in each subdataset's git-annex branch
    assert fields(ds / "SUBJ01", "SUBJ01_MR1/2/SUBJ01_MR1_2_T1w.nii.gz")["scan_type"] == \
        ["T1w"]


def test_tables_round_trip_and_narrower_runs_keep_other_rows():
    from xnat_init.update.tables import TableBuilder, Tables, parse, render

    builder = TableBuilder()
    builder.add(file_record(series_description="T1\tsag\\x\n", quality="usable", size=3))
    builder.add(file_record(path="c.dcm", size=4))
    builder.add(file_record(subject_id="XNAT_S00009", subject_label="SUBJ09",
                            session_id="XNAT_E00009", session_label="SUBJ09_MR1", scan_id="10"))
    old = Tables()
    old.scans[("XNAT_E00005", "1")] = {"session_id": "XNAT_E00005", "scan": "1"}
    old.sessions["XNAT_E00005"] = {"subject_id": "XNAT_S00005", "session_id": "XNAT_E00005"}
    tables = builder.finish(old, lambda table, row: row.get("session_id") != "XNAT_E00005")
    rows = parse(render("scans", tables.scans.values()))
    assert [(r["session_id"], r["scan"], r["files"], r["bytes"]) for r in rows] == [
        ("XNAT_E00005", "1", "", ""), ("XNAT_E00001", "1", "2", "7"),
        ("XNAT_E00009", "10", "1", "1")]
    assert rows[1]["series_description"] == "T1\tsag\\x\n"
    assert render("scans", rows) == render("scans", tables.scans.values())


def test_a_dataset_without_tables_gets_the_metadata_of_every_file(xnat, alice, ds):
    """A dataset registered before the metadata was written (here: its metadata removed, its
    tables deleted) gets it all with its next update, project resources included."""
    init(ds, xnat.url, "-p", "PUBLIC1")
    update(ds, "--reckless", "fast")
    every = found(ds)
    run(["git", "annex", "metadata", "--remove-all", "--force", "."], cwd=ds)
    run(["git", "rm", "-q", "-r", ".xnat"], cwd=ds)
    run(["git", "commit", "-q", "-m", "as before metadata"], cwd=ds)
    assert found(ds, "--metadata", "level=*") == set()
    summary = update(ds, "--reckless", "fast")
    assert summary["relabelled"] == len(every) and summary["added"] == 0
    assert found(ds, "--metadata", "level=*") == every
    assert fields(ds, "resources/protocol/README.txt") == dict(
        project=["PUBLIC1"], resource=["protocol"], level=["project"])
    assert (ds / ".xnat" / "default" / "scans.tsv").exists()
