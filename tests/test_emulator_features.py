"""Emulator faults, mutations, zip downloads, counters, presets, keep-alive and the CLI."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import subprocess
import sys
import time
import zipfile
from urllib.parse import urlsplit

import pytest
import requests

ALICE = ("alice", "alice-pass")
ADMIN = ("admin", "admin-pass")
E1 = "/data/experiments/XNAT_E00001"


def files(emu, path, auth=ALICE):
    r = requests.get(emu.url + path, auth=auth, timeout=10)
    assert r.status_code == 200, r.text[:200]
    return r.json()["ResultSet"]["Result"]


def dicom_uris(emu):
    return [r["URI"] for r in files(emu, f"{E1}/scans/2/resources/DICOM/files?format=json")]


# -- faults ----------------------------------------------------------------------------------

def test_error_rate_and_status(xnat):
    xnat.faults.error_rate = 1.0
    r = requests.get(xnat.url + "/data/projects?format=json", auth=ALICE)
    assert r.status_code == 503 and "<title>Status page</title>" in r.text
    xnat.faults.error_status = 502
    assert requests.get(xnat.url + "/data/projects", auth=ALICE).status_code == 502
    xnat.faults.clear()
    assert requests.get(xnat.url + "/data/projects", auth=ALICE).status_code == 200


def test_error_rate_is_deterministic(xnat):
    s = requests.Session()
    s.auth = ALICE

    def run():
        xnat.faults.clear()
        xnat.faults.error_rate = 0.5
        return [s.get(xnat.url + "/data/projects?format=json").status_code for _ in range(16)]
    first = run()
    assert set(first) == {200, 503}
    assert run() == first


def test_fail_every_nth_download(xnat):
    uris = dicom_uris(xnat)
    xnat.faults.fail_every_nth_download = 3
    s = requests.Session()
    s.auth = ALICE
    codes = [s.get(xnat.url + u).status_code for u in uris]
    assert codes == [200, 200, 500, 200, 200]
    # HEAD is not a download
    assert s.head(xnat.url + uris[0]).status_code == 200


def test_truncated_and_corrupt_downloads(xnat):
    uri = xnat.url + dicom_uris(xnat)[0]
    good = requests.get(uri, auth=ALICE).content
    xnat.faults.truncate_downloads = True
    u = urlsplit(uri)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", u.path, headers={"Authorization": requests.auth._basic_auth_str(*ALICE)})
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(good)
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    try:
        short = requests.get(uri, auth=ALICE)
    except requests.exceptions.RequestException:
        pass  # urllib3 2 holds the body to its Content-Length
    else:  # urllib3 1.26 (Python < 3.10, where botocore caps it) ends it quietly, short
        assert len(short.content) < len(good)
    xnat.faults.clear()
    xnat.faults.corrupt_downloads = True
    bad = requests.get(uri, auth=ALICE)
    assert bad.status_code == 200 and len(bad.content) == len(good) and bad.content != good
    xnat.faults.corrupt_downloads = False
    assert requests.get(uri, auth=ALICE).content == good


def test_delay_drop_digests_and_login_page(xnat):
    xnat.faults.delay = 0.3
    t = time.monotonic()
    requests.get(xnat.url + "/data/projects", auth=ALICE)
    assert time.monotonic() - t >= 0.3
    xnat.faults.clear()
    xnat.faults.listing_delay = 0.3
    t = time.monotonic()
    listing = files(xnat, f"{E1}/scans/ALL/files?format=json")
    assert time.monotonic() - t >= 0.3
    t = time.monotonic()
    requests.get(xnat.url + listing[0]["URI"], auth=ALICE).raise_for_status()
    assert time.monotonic() - t < 0.3  # a file download is not a listing
    xnat.faults.clear()
    xnat.faults.drop_digests = True
    assert {r["digest"] for r in files(xnat, f"{E1}/scans/ALL/files?format=json")} == {""}
    xnat.faults.clear()
    xnat.faults.login_page_instead_of_401 = True
    r = requests.get(xnat.url + "/data/projects?format=json")
    assert r.status_code == 200 and "Login.vm" in r.text
    xnat.faults.clear()


# -- mutations -------------------------------------------------------------------------------

def test_add_change_delete_scan_file(xnat):
    before = {r["Name"] for r in files(xnat, f"{E1}/scans/2/files?format=json")}
    xnat.add_file("extra/new file.dcm", b"new content", session="XNAT_E00001", scan="2",
                  resource="DICOM")
    rows = {r["Name"]: r for r in files(xnat, f"{E1}/scans/2/files?format=json")}
    assert set(rows) == before | {"new file.dcm"}
    row = rows["new file.dcm"]
    assert row["digest"] == hashlib.md5(b"new content").hexdigest() and row["Size"] == "11"
    assert row["URI"].endswith("/files/extra/new file.dcm")
    got = requests.get(xnat.url + row["URI"].replace(" ", "%20"), auth=ALICE)
    assert got.content == b"new content"
    with pytest.raises(FileExistsError):
        xnat.add_file("extra/new file.dcm", b"x", session="XNAT_E00001", scan="2",
                      resource="DICOM")
    # change a generated file: new bytes, new digest, same URI
    victim = next(r for r in rows.values() if r["Name"].endswith(".dcm") and r is not row)
    path = victim["URI"].split("/files/", 1)[1]
    xnat.change_file(path, b"changed!", session="SUBJ01_MR1", scan="2", resource="DICOM")
    changed = {r["Name"]: r for r in files(xnat, f"{E1}/scans/2/files?format=json")}[victim["Name"]]
    assert changed["digest"] == hashlib.md5(b"changed!").hexdigest() != victim["digest"]
    assert requests.get(xnat.url + victim["URI"], auth=ALICE).content == b"changed!"
    # delete
    xnat.delete_file(path, session="XNAT_E00001", scan="2", resource="DICOM")
    names = {r["Name"] for r in files(xnat, f"{E1}/scans/2/files?format=json")}
    assert victim["Name"] not in names
    assert requests.get(xnat.url + victim["URI"], auth=ALICE).status_code == 404
    with pytest.raises(KeyError):
        xnat.delete_file(path, session="XNAT_E00001", scan="2", resource="DICOM")
    with pytest.raises(KeyError):
        xnat.change_file("nope.dcm", b"", session="XNAT_E00001", scan="2", resource="DICOM")
    res = {r["label"]: r for r in files(xnat, f"{E1}/scans/2/resources?format=json")}
    assert res["DICOM"]["file_count"] == "5"         # +1 added, -1 deleted
    infos = {(i.scan_id, i.resource, i.path): i for i in xnat.iter_files("PUBLIC1")}
    assert infos[("2", "DICOM", "extra/new file.dcm")].content() == b"new content"
    assert ("2", "DICOM", path) not in infos


def test_add_without_digest_new_scan_and_session_resource(xnat):
    xnat.add_file("nodigest.txt", b"abc", session="XNAT_E00002", resource="BIDS", digest=False)
    xnat.add_file("stale.txt", b"abc", session="XNAT_E00002", resource="BIDS",
                  digest="0" * 32)
    rows = {r["Name"]: r for r in files(xnat, "/data/experiments/XNAT_E00002/resources/BIDS/"
                                              "files?format=json")}
    assert rows["nodigest.txt"]["digest"] == "" and rows["stale.txt"]["digest"] == "0" * 32
    info = next(i for i in xnat.iter_files("PUBLIC1") if i.path == "nodigest.txt")
    assert info.md5 is None and info.level == "session"
    xnat.add_file("a.dcm", b"\0" * 100, session="XNAT_E00002", scan="7", scan_type="T2w",
                  resource="DICOM")
    scans = files(xnat, "/data/experiments/XNAT_E00002/scans?format=json")
    assert scans[-1]["ID"] == "7" and scans[-1]["type"] == "T2w"
    assert [r["Name"] for r in files(xnat, "/data/experiments/XNAT_E00002/scans/T2w/files"
                                           "?format=json")] == ["a.dcm"]
    xnat.add_file("b.txt", b"b", project="PUBLIC1", resource="protocol")
    assert "b.txt" in {r["Name"] for r in files(xnat, "/data/projects/PUBLIC1/files?format=json")}


# -- zip -------------------------------------------------------------------------------------

def test_zip_download_layout(xnat):
    r = requests.get(xnat.url + f"{E1}/scans/ALL/files?format=zip", auth=ALICE)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert r.headers["Content-Disposition"] == 'attachment; filename="SUBJ01_MR1.zip"'
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    listed = files(xnat, f"{E1}/scans/ALL/files?format=json")
    assert len(names) == len(listed)
    assert all(re.match(r"SUBJ01_MR1/scans/[^/]+/resources/[^/]+/files/.+", n) for n in names)
    assert any(n.startswith("SUBJ01_MR1/scans/2-T1w/resources/DICOM/files/") for n in names)
    assert "SUBJ01_MR1/scans/BOLD_1-bold/resources/MAT/files/bold xfm+run #1.mat" in names
    for row in listed:
        if row["digest"]:
            rel = row["URI"].split("/files/", 1)[1]
            cand = [n for n in names if n.endswith("/files/" + rel)
                    and f"/resources/{row['collection']}/" in n]
            assert hashlib.md5(zf.read(cand[0])).hexdigest() == row["digest"]
    one = requests.get(xnat.url + f"{E1}/scans/2/resources/DICOM/files?format=zip", auth=ALICE)
    assert len(zipfile.ZipFile(io.BytesIO(one.content)).namelist()) == 5
    sess = requests.get(xnat.url + f"{E1}/resources/BIDS/files?format=zip", auth=ALICE)
    assert "SUBJ01_MR1/resources/BIDS/files/sub-01/anat/sub-01_T1w.nii.gz" in \
        zipfile.ZipFile(io.BytesIO(sess.content)).namelist()
    proj = requests.get(xnat.url + "/data/projects/PUBLIC1/resources/protocol/files?format=zip",
                        auth=ALICE)
    assert proj.headers["Content-Disposition"] == 'attachment; filename="PUBLIC1.zip"'
    assert "PUBLIC1/resources/protocol/files/README.txt" in \
        zipfile.ZipFile(io.BytesIO(proj.content)).namelist()
    assert requests.get(xnat.url + f"{E1}/files/nothing/?format=zip",
                        auth=ALICE).status_code == 404


# -- counters --------------------------------------------------------------------------------

def test_counters(xnat):
    xnat.counters.reset()
    s = requests.Session()
    s.auth = ALICE
    s.post(xnat.url + "/data/JSESSION")
    rows = s.get(xnat.url + f"{E1}/scans/ALL/files?format=json").json()["ResultSet"]["Result"]
    s.get(xnat.url + "/data/archive/experiments/XNAT_E00002/scans/2/files?format=json")
    body = s.get(xnat.url + rows[0]["URI"]).content
    s.head(xnat.url + rows[0]["URI"])
    c = xnat.counters
    assert c.total == 5
    assert c["POST /data/JSESSION"] == 1
    assert c["GET /data/experiments/{E}/scans/{SC}/files"] == 1
    assert c["GET /data/archive/experiments/{E}/scans/{SC}/files"] == 1
    assert c["GET /data/experiments/{E}/scans/{SC}/resources/{R}/files/{path}"] == 1
    assert c["HEAD /data/experiments/{E}/scans/{SC}/resources/{R}/files/{path}"] == 1
    assert c.by_status[200] == 5
    assert c.bytes_sent > len(body) + 32
    c.reset()
    assert c.total == 0 and c.bytes_sent == 0 and not c.by_route


# -- transport -------------------------------------------------------------------------------

def test_keep_alive_and_concurrency(xnat):
    u = urlsplit(xnat.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    hdr = {"Authorization": requests.auth._basic_auth_str(*ALICE)}
    for _ in range(3):                                 # one connection, several requests
        conn.request("GET", "/data/projects?format=json", headers=hdr)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.version == 11
        resp.read()
    conn.close()
    from concurrent.futures import ThreadPoolExecutor
    uris = [r["URI"] for r in files(xnat, f"{E1}/scans/ALL/files?format=json")]
    with ThreadPoolExecutor(8) as ex:
        sizes = list(ex.map(lambda p: len(requests.get(xnat.url + p.replace(" ", "%20")
                                                       .replace("+", "%2B").replace("#", "%23"),
                                                       auth=ALICE).content), uris))
    assert all(sizes)


# -- presets ---------------------------------------------------------------------------------

def test_files_preset_shape(emulator_factory):
    emu = emulator_factory(preset="files", files=1000, file_size=1024, require_login=False)
    exps = files(emu, "/data/projects/BENCH/experiments?format=json", auth=None)
    assert len(exps) == 3          # 450 files per session
    total = 0
    for e in exps:
        rows = files(emu, f"/data/experiments/{e['ID']}/scans/ALL/files?format=json", auth=None)
        assert all(r["Size"] == "1024" for r in rows)
        total += len(rows)
    assert total == 1000
    infos = list(emu.iter_files("BENCH"))
    assert len(infos) == 1000 and sum(i.md5 is None for i in infos) == 0
    assert len(list(emulator_factory(preset="files", files=20000).iter_files("BENCH"))) == 20000


def test_demo_preset_names(emulator_factory):
    emu = emulator_factory(preset="demo")
    infos = list(emu.iter_files("DEMO"))
    names = [i.path for i in infos]
    assert any(re.fullmatch(r"[\d.]+-2-\d+-[0-9a-z]{6}\.dcm", n) for n in names)
    assert any(n.endswith("_qc_t.gif") for n in names)
    assert any(n.endswith(".nii.gz") for n in names) and any(n.endswith(".json") for n in names)
    assert "sub-01/anat/sub-01_T1w.nii.gz" in names
    assert any(i.md5 is None for i in infos)
    dicom_per_scan = {}
    for i in infos:
        if i.resource == "DICOM":
            dicom_per_scan[(i.session_id, i.scan_id)] = dicom_per_scan.get(
                (i.session_id, i.scan_id), 0) + 1
    assert max(dicom_per_scan.values()) >= 30


def test_cli_prints_url_and_serves(tmp_path):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "xnat_emulator", "--port", "0", "--preset",
                             "small", "--require-login", "--error-rate", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert requests.get(url + "/data/projects?format=json").status_code == 401
        assert requests.get(url + "/data/projects?format=json", auth=ALICE).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_large_files_stream_and_match_digest(emulator_factory):
    emu = emulator_factory(preset="files", files=2, file_size=3 * 1024 * 1024 + 17)
    exp = files(emu, "/data/projects/BENCH/experiments?format=json")[0]["ID"]
    rows = files(emu, f"/data/experiments/{exp}/scans/ALL/files?format=json")
    assert len(rows) == 2
    bodies = []
    for row in rows:
        body = requests.get(emu.url + row["URI"], auth=ALICE).content
        assert len(body) == int(row["Size"]) == 3 * 1024 * 1024 + 17
        assert hashlib.md5(body).hexdigest() == row["digest"]
        bodies.append(body)
    assert bodies[0] != bodies[1]


def test_generation_is_deterministic_per_seed():
    from xnat_emulator import Emulator

    def digest(seed):
        emu = Emulator("files", files=300, seed=seed)
        return [(i.path, i.md5, i.size) for i in emu.iter_files("BENCH")]
    assert digest(1) == digest(1)
    assert digest(1) != digest(2)
