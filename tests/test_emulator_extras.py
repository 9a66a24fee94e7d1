"""Emulator options beyond the core: context path, Range, tar, session caps, session mutations,
paging/sorting/filters, item documents, clean stop, thread-safe counters."""

from __future__ import annotations

import io
import tarfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

ALICE = ("alice", "alice-pass")
ADMIN = ("admin", "admin-pass")
E1 = "/data/experiments/XNAT_E00001"


def rs(emu, path, auth=ALICE):
    r = requests.get(emu.url + path, auth=auth, timeout=10)
    assert r.status_code == 200, (path, r.status_code, r.text[:200])
    return r.json()["ResultSet"]


def test_context_path(emulator_factory):
    emu = emulator_factory(preset="small", context_path="/xnat")
    assert emu.url.endswith("/xnat")
    r = requests.post(emu.url + "/data/JSESSION", auth=ALICE)
    assert r.status_code == 200 and "Path=/xnat;" in r.headers["Set-Cookie"]
    res = rs(emu, f"{E1}/scans/2/files?format=json")
    assert res["Columns"] == [{"key": "URI", "serverRoot": "/xnat"}]
    uri = res["Result"][0]["URI"]
    assert uri.startswith("/data/experiments/")          # relative to serverRoot
    assert requests.get(emu.url + uri, auth=ALICE).status_code == 200
    root = emu.url.rsplit("/xnat", 1)[0]
    assert requests.get(root + "/data/projects", auth=ALICE).status_code == 404
    loc = requests.get(emu.url + "/data/projects", headers={"User-Agent": "Mozilla/5.0"},
                       allow_redirects=False).headers["Location"]
    assert loc.endswith("/xnat/app/template/Login.vm")


def test_range_ignored_by_default_and_optional(xnat):
    uri = xnat.url + rs(xnat, f"{E1}/scans/2/files?format=json")["Result"][0]["URI"]
    full = requests.get(uri, auth=ALICE).content
    r = requests.get(uri, auth=ALICE, headers={"Range": "bytes=10-19"})
    assert r.status_code == 200 and r.content == full          # XNAT ignores Range
    xnat.honor_range = True
    r = requests.get(uri, auth=ALICE, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == full[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    r = requests.get(uri, auth=ALICE, headers={"Range": "bytes=100-"})
    assert r.content == full[100:]
    r = requests.get(uri, auth=ALICE, headers={"Range": f"bytes={len(full)}-"})
    assert r.status_code == 416


def test_tar_downloads(xnat):
    for fmt, mode in (("tar", "r:"), ("tar.gz", "r:gz")):
        r = requests.get(xnat.url + f"{E1}/scans/2/files?format={fmt}", auth=ALICE)
        assert r.status_code == 200
        assert r.headers["Content-Disposition"].endswith(f'SUBJ01_MR1.{fmt}"')
        tf = tarfile.open(fileobj=io.BytesIO(r.content), mode=mode)
        names = tf.getnames()
        assert len(names) == 9
        assert all(n.startswith("SUBJ01_MR1/scans/2-T1w/resources/") for n in names)


def test_max_sessions_per_user(emulator_factory):
    emu = emulator_factory(preset="small", max_sessions_per_user=2)
    codes = [requests.post(emu.url + "/data/JSESSION", auth=ALICE).status_code for _ in range(3)]
    assert codes == [200, 200, 401]
    assert requests.post(emu.url + "/data/JSESSION", auth=ADMIN).status_code == 200


def test_session_mutations(xnat):
    sid = xnat.add_subject("PUBLIC1", "SUBJ03")
    assert sid == "XNAT_S00006"
    eid = xnat.add_session("PUBLIC1", "SUBJ03", "SUBJ03_MR1")
    assert eid == "XNAT_E00007"
    xnat.add_file("x.dcm", b"x" * 10, session=eid, scan="1", scan_type="T1w", resource="DICOM")
    exps = rs(xnat, "/data/experiments?project=PUBLIC1&subject_ID=XNAT_S00006&format=json")
    assert [e["ID"] for e in exps["Result"]] == [eid]
    rows = rs(xnat, f"/data/experiments/{eid}/scans/ALL/files?format=json")["Result"]
    assert [r["Name"] for r in rows] == ["x.dcm"]
    xnat.delete_session("XNAT_E00002")
    ids = [e["ID"] for e in rs(xnat, "/data/projects/PUBLIC1/experiments?format=json")["Result"]]
    assert ids == ["XNAT_E00001", eid]
    assert requests.get(xnat.url + "/data/experiments/XNAT_E00002?format=json",
                        auth=ALICE).status_code == 404
    assert not any(i.session_id == "XNAT_E00002" for i in xnat.iter_files("PUBLIC1"))
    with pytest.raises(FileExistsError):
        xnat.add_session("PUBLIC1", "SUBJ03", "SUBJ03_MR1")


def test_paging_sorting_filters(xnat):
    res = rs(xnat, "/data/experiments?format=json&limit=2", auth=ADMIN)
    assert len(res["Result"]) == 2 and res["totalRecords"] == "2"
    res = rs(xnat, "/data/experiments?format=json&limit=2&offset=4", auth=ADMIN)
    assert len(res["Result"]) == 2 and "totalRecords" not in res
    res = rs(xnat, "/data/projects/PUBLIC1/subjects?format=json&sortBy=label&sortOrder=DESC")
    assert [r["label"] for r in res["Result"]] == ["SUBJ02", "SUBJ01"]
    res = rs(xnat, "/data/projects/PUBLIC1/subjects?format=json&label=*02")
    assert [r["label"] for r in res["Result"]] == ["SUBJ02"]
    res = rs(xnat, "/data/experiments?format=json&label=SUBJ01_MR1,SUBJ02_MR1")
    assert {r["ID"] for r in res["Result"]} == {"XNAT_E00001", "XNAT_E00002"}
    res = rs(xnat, f"{E1}/scans/ALL/files?format=json&file_content=THUMBNAIL")
    assert {r["Name"] for r in res["Result"]} == {
        f"XNAT_E00001_{s}_qc_t.gif" for s in ("2", "501", "BOLD_1")}
    res = rs(xnat, f"{E1}/resources/BIDS/files/sub-01/func/?format=json")
    assert {r["Name"] for r in res["Result"]} == {"sub-01_task-rest_bold.nii.gz",
                                                   "sub-01_task-rest_bold.json"}


def test_item_documents(xnat):
    subj = requests.get(xnat.url + "/data/projects/SHARED2/subjects/SHR_SUBJ01?format=json",
                        auth=ALICE).json()["items"][0]
    assert subj["data_fields"]["ID"] == "XNAT_S00001"
    assert subj["data_fields"]["label"] == "SHR_SUBJ01"
    assert {c["field"] for c in subj["children"]} >= {"demographics", "sharing/share"}
    scan = requests.get(xnat.url + f"{E1}/scans/BOLD_1?format=json", auth=ALICE).json()
    df = scan["items"][0]["data_fields"]
    assert df["ID"] == "BOLD_1" and df["type"] == "bold"
    assert isinstance(df["xnat_imagescandata_id"], int)      # item JSON keeps types
    a = requests.get(xnat.url + "/data/experiments/XNAT_E00003?format=json", auth=ALICE).json()
    assert a["items"][0]["meta"]["xsi:type"] == "xnat:qcAssessmentData"
    assessors = rs(xnat, f"{E1}/assessors?format=json")["Result"]
    assert [(r["ID"], r["session_ID"]) for r in assessors] == [("XNAT_E00003", "XNAT_E00001")]
    assert assessors[0]["xnat:imageassessordata/id"] == "XNAT_E00003"
    projs = rs(xnat, f"{E1}/projects?format=json")["Result"]
    assert {p["ID"] for p in projs} == {"PUBLIC1", "SHARED2"}
    out = rs(xnat, f"{E1}/assessors/XNAT_E00003/files?format=json")["Result"]
    got = requests.get(xnat.url + next(r["URI"] for r in out if r["Name"] == "qc_report.txt"),
                       auth=ALICE)
    assert got.status_code == 200 and got.headers["Content-Type"] == "text/plain"
    assert got.text == "QC passed for SUBJ01_MR1.\n"


def test_stop_closes_keep_alive_connections(emulator_factory):
    emu = emulator_factory(preset="small")
    s = requests.Session()
    s.auth = ALICE
    assert s.get(emu.url + "/data/projects").status_code == 200
    emu.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        s.get(emu.url + "/data/projects", timeout=5)


def test_counters_are_thread_safe(xnat):
    xnat.counters.reset()

    def hit(_):
        with requests.Session() as s:
            s.auth = ALICE
            for _ in range(10):
                s.get(xnat.url + "/data/projects?format=json")
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(hit, range(8)))
    assert xnat.counters.total == 80
    assert xnat.counters["GET /data/projects"] == 80


def test_all_true_accept_not_found_and_kill_sessions(xnat):
    own = rs(xnat, f"{E1}/files?format=json")["Result"]
    everything = rs(xnat, f"{E1}/files?format=json&all=true")["Result"]
    assert len(own) == 5 and len(everything) > len(own) + 30
    assert any("/assessors/XNAT_E00003/out/resources/" in r["URI"] for r in everything)
    missing = xnat.url + f"{E1}/resources/BIDS/files/none.txt"
    assert requests.get(missing, auth=ALICE).status_code == 404
    assert requests.get(missing + "?accept-not-found=true", auth=ALICE).status_code == 204
    sid = requests.post(xnat.url + "/data/JSESSION", auth=ALICE).text
    assert requests.delete(xnat.url + "/xapi/users/active/alice", auth=ALICE).status_code == 403
    killed = requests.delete(xnat.url + "/xapi/users/active/alice", auth=ADMIN)
    assert killed.status_code == 200 and sid in killed.json()
    assert requests.get(xnat.url + "/data/projects", cookies={"JSESSIONID": sid}).status_code == 401


def test_download_rate(xnat):
    uri = xnat.url + rs(xnat, f"{E1}/scans/2/files?format=json")["Result"][0]["URI"]
    size = len(requests.get(uri, auth=ALICE).content)
    xnat.faults.download_rate = size * 4          # about a quarter of a second
    import time
    t = time.monotonic()
    assert len(requests.get(uri, auth=ALICE).content) == size
    assert time.monotonic() - t >= 0.2


def test_legacy_mode_checksums_off_and_agents(emulator_factory):
    old = emulator_factory(preset="small", version_mode="legacy", checksums=False,
                           interactive_agents=(r".*MyBrowser.*",))
    v = requests.get(old.url + "/data/version", auth=ALICE)
    assert v.status_code == 200 and v.text == "1.6.5"
    assert requests.get(old.url + "/xapi/siteConfig/buildInfo", auth=ALICE).status_code == 404
    tok = requests.get(old.url + "/data/services/tokens/issue", auth=ALICE).json()
    assert set(tok) == {"alias", "secret", "estimatedExpirationTime"}
    assert isinstance(tok["estimatedExpirationTime"], str)
    html = requests.get(old.url + "/data/projects", auth=ALICE)
    assert html.headers["Content-Type"].startswith("text/html")
    res = rs(old, "/data/experiments?format=json&limit=1&offset=1", auth=ADMIN)
    assert len(res["Result"]) > 1                         # paging ignored
    assert {r["digest"] for r in rs(old, f"{E1}/scans/ALL/files?format=json")["Result"]} == {""}
    assert requests.get(old.url + "/data/projects", allow_redirects=False,
                        headers={"User-Agent": "Mozilla/5.0"}).status_code == 401
    assert requests.get(old.url + "/data/projects", allow_redirects=False,
                        headers={"User-Agent": "MyBrowser/1"}).status_code == 302
