"""The emulator's core behaviour, route by route, against xnat-rest.md (real HTTP, no mocks)."""

from __future__ import annotations

import hashlib
import re

import requests

ADMIN = ("admin", "admin-pass")
ALICE = ("alice", "alice-pass")
BOB = ("bob", "bob-pass")
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"


def get(emu, path, auth=ALICE, **kw):
    return requests.get(emu.url + path, auth=auth, timeout=10, **kw)


def result(resp):
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()["ResultSet"]


def all_strings(rows):
    return all(isinstance(v, str) for row in rows for v in row.values())


# -- listings ------------------------------------------------------------------------------------

def test_projects_listing(xnat):
    rs = result(get(xnat, "/data/projects?format=json"))
    ids = [r["ID"] for r in rs["Result"]]
    assert ids == ["PUBLIC1", "SHARED2", "PROT1"]          # PRIV1 is bob's
    assert rs["totalRecords"] == "3"
    row = rs["Result"][0]
    assert set(row) == {"ID", "secondary_ID", "name", "description", "pi_firstname",
                        "pi_lastname", "URI"}
    assert row["URI"] == "/data/projects/PUBLIC1"
    assert all_strings(rs["Result"])
    assert "PRIV1" in [r["ID"] for r in result(get(xnat, "/data/projects?format=json",
                                                     auth=BOB))["Result"]]
    assert len(result(get(xnat, "/data/projects?format=json", auth=ADMIN))["Result"]) == 4


def test_project_item_and_accessibility(xnat):
    r = get(xnat, "/data/projects/PUBLIC1?format=json")
    item = r.json()["items"][0]
    assert item["data_fields"]["ID"] == "PUBLIC1"
    assert item["meta"]["xsi:type"] == "xnat:projectData"
    for p, acc in (("PUBLIC1", "public"), ("PROT1", "protected")):
        r = get(xnat, f"/data/projects/{p}/accessibility")
        assert r.status_code == 200 and r.text == acc
    assert get(xnat, "/data/projects/PRIV1/accessibility", auth=BOB).text == "private"


def test_subjects_listing(xnat):
    rs = result(get(xnat, "/data/projects/PUBLIC1/subjects?format=json"))
    assert rs["totalRecords"] == "2"
    assert [(r["ID"], r["label"]) for r in rs["Result"]] == [
        ("XNAT_S00001", "SUBJ01"), ("XNAT_S00002", "SUBJ02")]
    row = rs["Result"][0]
    assert set(row) == {"ID", "project", "label", "insert_date", "insert_user", "URI"}
    assert row["URI"] == "/data/subjects/XNAT_S00001"
    # shared subject: shared label, owning project
    rs = result(get(xnat, "/data/projects/SHARED2/subjects?format=json"))
    shared = {r["ID"]: r for r in rs["Result"]}["XNAT_S00001"]
    assert shared["label"] == "SHR_SUBJ01" and shared["project"] == "PUBLIC1"
    # archive alias and global listing
    assert result(get(xnat, "/data/archive/projects/PUBLIC1/subjects?format=json"))[
        "totalRecords"] == "2"
    glob = result(get(xnat, "/data/subjects?format=json"))
    assert {r["ID"] for r in glob["Result"]} >= {"XNAT_S00001", "XNAT_S00004"}
    assert "XNAT_S00005" not in {r["ID"] for r in glob["Result"]}   # PRIV1


def test_experiments_global_columns(xnat):
    rs = result(get(xnat, "/data/experiments?project=PUBLIC1&format=json"))
    assert rs["title"] == "Matching experiments"
    row = rs["Result"][0]
    # plain project filter: root xnat:experimentData, no subject columns
    assert set(row) == {"ID", "project", "date", "xsiType", "label", "insert_date", "URI"}
    ids = [r["ID"] for r in rs["Result"]]
    assert "XNAT_E00003" in ids            # the assessor is an experiment too
    # subject_ID moves the root: subject columns appear, assessors go
    rs = result(get(xnat, "/data/experiments?project=PUBLIC1&subject_ID=XNAT_S00001&format=json"))
    assert [r["ID"] for r in rs["Result"]] == ["XNAT_E00001"]
    row = rs["Result"][0]
    assert row["subject_ID"] == "XNAT_S00001" and row["subject_label"] == "SUBJ01"
    assert row["URI"] == "/data/experiments/XNAT_E00001"
    assert rs["totalRecords"] == "1"
    rs = result(get(xnat, "/data/experiments?xsiType=xnat:mrSessionData&format=json"))
    assert "subject_ID" in rs["Result"][0]
    assert "XNAT_E00003" not in [r["ID"] for r in rs["Result"]]
    rs = result(get(xnat, "/data/experiments?xsiType=xnat:qcAssessmentData&format=json"))
    assert [(r["ID"], r["session_ID"]) for r in rs["Result"]] == [("XNAT_E00003", "XNAT_E00001")]
    rs = result(get(xnat, "/data/experiments?project=NOPE&subject_ID=NOPE&format=json"))
    assert rs["Result"] == [] and rs["totalRecords"] == "0"
    rs = result(get(xnat, "/data/experiments?project=PUBLIC1&columns=ID,label&format=json"))
    assert set(rs["Result"][0]) == {"ID", "label", "URI"}


def test_experiments_project_scoped(xnat):
    rs = result(get(xnat, "/data/projects/PUBLIC1/experiments?format=json"))
    assert [r["ID"] for r in rs["Result"]] == ["XNAT_E00001", "XNAT_E00002"]   # no assessor
    row = rs["Result"][0]
    assert row["xnat:subjectassessordata/id"] == "XNAT_E00001"
    assert row["URI"] == "/data/experiments/XNAT_E00001"
    assert all_strings(rs["Result"])
    rs = result(get(xnat, "/data/projects/SHARED2/experiments?format=json"))
    labels = {r["ID"]: r["label"] for r in rs["Result"]}
    assert labels["XNAT_E00001"] == "SHR_SUBJ01_MR1"
    rs = result(get(xnat, "/data/projects/PUBLIC1/subjects/SUBJ02/experiments?format=json"))
    assert [r["ID"] for r in rs["Result"]] == ["XNAT_E00002"]


def test_experiment_item(xnat):
    doc = get(xnat, "/data/experiments/XNAT_E00001?format=json").json()
    item = doc["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData"
    df = item["data_fields"]
    assert df["ID"] == df["id"] == "XNAT_E00001"
    assert df["label"] == "SUBJ01_MR1" and df["subject_ID"] == "XNAT_S00001"
    fields = {c["field"]: c for c in item["children"]}
    scans = [s["data_fields"]["ID"] for s in fields["scans/scan"]["items"]]
    assert scans == ["1", "2", "501", "BOLD_1"]
    assert fields["sharing/share"]["items"][0]["data_fields"] == {
        "label": "SHR_SUBJ01_MR1", "project": "SHARED2"}
    assert get(xnat, "/data/experiments/XNAT_E99999?format=json").status_code == 404
    # labels only under a project
    r = get(xnat, "/data/projects/PUBLIC1/experiments/SUBJ01_MR1?format=json")
    assert r.json()["items"][0]["data_fields"]["ID"] == "XNAT_E00001"
    assert get(xnat, "/data/experiments/SUBJ01_MR1?format=json").status_code == 404


def test_scans_listing(xnat):
    rs = result(get(xnat, "/data/experiments/XNAT_E00001/scans?format=json"))
    assert [r["ID"] for r in rs["Result"]] == ["1", "2", "501", "BOLD_1"]
    row = rs["Result"][1]
    assert set(row) == {"xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                        "series_description", "URI"}
    assert row["URI"] == "/data/experiments/XNAT_E00001/scans/2"
    assert row["type"] == "T1w" and row["xsiType"] == "xnat:mrScanData"
    assert row["xnat_imagescandata_id"].isdigit()
    assert rs["totalRecords"] == "4"


def test_resources_listing(xnat):
    rs = result(get(xnat, "/data/experiments/XNAT_E00001/scans/2/resources?format=json"))
    assert rs["title"] == "Resources" and rs["totalRecords"] == "3"
    rows = {r["label"]: r for r in rs["Result"]}
    assert set(rows) == {"DICOM", "NIFTI", "SNAPSHOTS"}
    d = rows["DICOM"]
    assert set(d) == {"xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                      "cat_desc", "format", "content", "tags", "file_count", "file_size"}
    assert d["element_name"] == "xnat:resourceCatalog" and d["category"] == "scans"
    assert d["cat_id"] == "2" and d["cat_desc"] == "T1w" and d["file_count"] == "5"
    assert all_strings(rs["Result"])
    sess = result(get(xnat, "/data/experiments/XNAT_E00001/resources?format=json"))
    assert [r["label"] for r in sess["Result"]] == ["BIDS"]
    assert sess["Result"][0]["category"] == "resources" and sess["Result"][0]["cat_id"] == ""
    proj = result(get(xnat, "/data/projects/PUBLIC1/resources?format=json"))
    assert [r["label"] for r in proj["Result"]] == ["protocol"]
    subj = result(get(xnat, "/data/projects/PUBLIC1/subjects/XNAT_S00001/resources?format=json"))
    assert [r["label"] for r in subj["Result"]] == ["notes"]
    # GET of one resource is catalog XML even with format=json
    r = get(xnat, "/data/experiments/XNAT_E00001/scans/2/resources/DICOM?format=json")
    assert r.status_code == 200 and "<cat:Catalog" in r.text


def test_files_listing_shape(xnat):
    rs = result(get(xnat, "/data/experiments/XNAT_E00001/scans/ALL/files?format=json"))
    assert rs["Columns"] == [{"key": "URI", "serverRoot": ""}]
    assert rs["title"] == "Files" and "totalRecords" not in rs
    rows = rs["Result"]
    assert {r["collection"] for r in rows} == {"DICOM", "NIFTI", "SNAPSHOTS", "MAT"}
    for r in rows:
        assert set(r) == {"Name", "Size", "URI", "collection", "file_tags", "file_format",
                          "file_content", "cat_ID", "digest"}
        m = re.fullmatch(r"/data/experiments/XNAT_E00001/scans/([^/]+)/resources/(\d+)/files/(.+)",
                         r["URI"])
        assert m, r["URI"]
        assert m.group(2) == r["cat_ID"]
        assert r["Name"] == m.group(3).rsplit("/", 1)[-1]
    assert all_strings(rows)
    digests = {r["Name"]: r["digest"] for r in rows}
    assert digests["motion.par"] == ""
    assert sum(1 for d in digests.values() if re.fullmatch(r"[0-9a-f]{32}", d)) == len(rows) - 1
    snaps = {r["Name"]: r["file_content"] for r in rows if r["collection"] == "SNAPSHOTS"}
    assert snaps["XNAT_E00001_2_qc.gif"] == "ORIGINAL"
    assert snaps["XNAT_E00001_2_qc_t.gif"] == "THUMBNAIL"
    dcm = [r["Name"] for r in rows if r["collection"] == "DICOM"]
    assert len(dcm) == 3 + 5 + 4 + 6
    assert all(re.fullmatch(r"[\d.]+-\d+-\d+-[0-9a-z]{6}\.dcm", n) for n in dcm)


def test_files_listing_variants(xnat):
    base = "/data/experiments/XNAT_E00001"

    def names(path):
        return sorted(r["Name"] for r in result(get(xnat, path))["Result"])
    by_label = names(f"{base}/scans/2/resources/DICOM/files?format=json")
    rid = result(get(xnat, f"{base}/scans/2/resources?format=json"))["Result"][0][
        "xnat_abstractresource_id"]
    assert names(f"{base}/scans/2/resources/{rid}/files?format=json") == by_label
    assert len(by_label) == 5
    two = names(f"{base}/scans/1,2/files?format=json")
    assert len(two) == 3 + 5 + 2 + 2
    assert names(f"{base}/scans/T1w/files?format=json") == names(f"{base}/scans/2/files?format=json")
    assert names(f"{base}/scans/*/files?format=json") == names(f"{base}/scans/ALL/files?format=json")
    assert len(names(f"{base}/scans/ALL/resources/DICOM/files?format=json")) == 18
    bids = result(get(xnat, f"{base}/resources/BIDS/files?format=json"))["Result"]
    uris = {r["URI"] for r in bids}
    assert any(u.endswith("/files/sub-01/anat/sub-01_T1w.nii.gz") for u in uris)
    assert {r["Name"] for r in bids} >= {"sub-01_T1w.nii.gz", "dataset_description.json"}
    assert len(names(f"{base}/files?format=json")) == len(bids)     # session-level only
    # non-numeric scan ID and project-path request
    mat = result(get(xnat, "/data/projects/PUBLIC1/subjects/SUBJ01/experiments/SUBJ01_MR1"
                           "/scans/BOLD_1/resources/MAT/files?format=json"))["Result"]
    assert {r["Name"] for r in mat} == {"bold xfm+run #1.mat", "motion.par"}
    proj = result(get(xnat, "/data/projects/PUBLIC1/resources/protocol/files?format=json"))
    assert {r["URI"].split("/files/", 1)[1] for r in proj["Result"]} == {
        "README.txt", "scanner/settings.json"}
    qc = result(get(xnat, f"{base}/assessors/XNAT_E00003/out/resources/QC/files?format=json"))
    assert {r["Name"] for r in qc["Result"]} == {"qc_report.txt", "metrics.json"}
    assert get(xnat, f"{base}/scans/2/resources/NOPE/files?format=json").status_code == 404
    assert get(xnat, f"{base}/scans/77/files?format=json").status_code == 404


def test_file_get_head_and_digests(xnat):
    rows = result(get(xnat, "/data/experiments/XNAT_E00001/scans/ALL/files?format=json"))["Result"]
    s = requests.Session()
    s.auth = ALICE
    for r in rows:
        if r["collection"] == "MAT":
            continue
        resp = s.get(xnat.url + r["URI"], timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == r["Size"] == str(len(resp.content))
        if r["digest"]:
            assert hashlib.md5(resp.content).hexdigest() == r["digest"]
    dcm = next(r for r in rows if r["Name"].endswith(".dcm"))
    h = s.head(xnat.url + dcm["URI"], timeout=10)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == dcm["Size"]
    assert h.headers["Content-Type"] == "application/octet-stream"
    assert "GMT" in h.headers["Last-Modified"]
    gif = next(r for r in rows if r["Name"].endswith("_qc.gif"))
    assert s.head(xnat.url + gif["URI"]).headers["Content-Type"] == "image/gif"
    # by resource label as well as id
    by_label = dcm["URI"].replace(f"/resources/{dcm['cat_ID']}/", "/resources/DICOM/")
    assert s.get(xnat.url + by_label).content == s.get(xnat.url + dcm["URI"]).content
    missing = s.get(xnat.url + dcm["URI"] + "x")
    assert missing.status_code == 404 and "<h3>Unable to find file.</h3>" in missing.text


def test_url_decoding_of_names(xnat):
    base = xnat.url + "/data/experiments/XNAT_E00001/scans/BOLD_1/resources/MAT/files/"
    ok = requests.get(base + "bold%20xfm%2Brun%20%231.mat", auth=ALICE)
    assert ok.status_code == 200 and len(ok.content) == 405
    # a raw '+' decodes to a space (Java URLDecoder), so the file is not found
    assert requests.get(base + "bold%20xfm+run%20%231.mat", auth=ALICE).status_code == 404
    # '+' for the spaces works for the same reason
    assert requests.get(base + "bold+xfm%2Brun+%231.mat", auth=ALICE).status_code == 200
    nested = (xnat.url + "/data/experiments/XNAT_E00001/resources/BIDS/files/"
              "sub-01/anat/sub-01_T1w.nii.gz")
    r = requests.get(nested, auth=ALICE)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
    basename_only = xnat.url + "/data/experiments/XNAT_E00001/resources/BIDS/files/sub-01_T1w.nii.gz"
    assert requests.get(basename_only, auth=ALICE).status_code == 404


def test_iter_files_matches_listings(xnat):
    infos = list(xnat.iter_files("PUBLIC1"))
    assert {i.level for i in infos} == {"project", "subject", "scan", "session", "assessor"}
    scan_infos = [i for i in infos if i.level == "scan" and i.session_id == "XNAT_E00001"]
    rows = result(get(xnat, "/data/experiments/XNAT_E00001/scans/ALL/files?format=json"))["Result"]
    assert sorted(i.uri for i in scan_infos) == sorted(r["URI"] for r in rows)
    nodigest = [i for i in infos if i.md5 is None]
    assert [(i.scan_id, i.resource, i.path) for i in nodigest] == [("BOLD_1", "MAT", "motion.par")]
    for i in infos[:10]:
        r = requests.get(xnat.url + i.url_path, auth=ALICE)
        assert r.content == i.content()
        assert i.md5 is None or hashlib.md5(r.content).hexdigest() == i.md5
    assert len(infos) < 200
    shared = list(xnat.iter_files("SHARED2"))
    assert {i.session_label for i in shared if i.session_id == "XNAT_E00001"} == {"SHR_SUBJ01_MR1"}


# -- formats and errors ----------------------------------------------------------------------

def test_format_negotiation(xnat):
    r = get(xnat, "/data/projects")
    assert r.status_code == 200 and not r.headers["Content-Type"].startswith("application/json")
    assert r.text.startswith("<?xml") and "<ResultSet" in r.text
    r = get(xnat, "/data/experiments/XNAT_E00001/scans/ALL/files")
    assert "<ResultSet" in r.text
    r = get(xnat, "/data/projects?format=csv")
    assert r.text.splitlines()[0].startswith("ID,secondary_ID")
    r = get(xnat, "/data/experiments/XNAT_E00001")
    assert r.text.startswith("<?xml") and "xnat:mrSessionData" in r.text


def test_status_pages_and_version(xnat):
    r = get(xnat, "/data/projects/NOPE?format=json")
    assert r.status_code == 404
    assert "<title>Status page</title>" in r.text and "<h3>" in r.text
    assert get(xnat, "/data/version").status_code == 404
    b = get(xnat, "/xapi/siteConfig/buildInfo")
    assert b.status_code == 200 and isinstance(b.json()["version"], str)
    assert requests.get(xnat.url + "/xapi/siteConfig/buildInfo").status_code == 401
