"""The emulator's zip/tar downloads as XNAT's Java ZipOutputStream sends them: DEFLATED entries
with data descriptors, STORED ones without, the `structure` layouts, chunked transfer, the
corrupt_archives and truncate_archives faults and the archive counter key. Real HTTP over
loopback; archives read with stream-unzip (as our client reads them) and with zipfile."""

from __future__ import annotations

import hashlib
import http.client
import io
import struct
import tarfile
import zipfile
from urllib.parse import urlsplit

import pytest
import requests
from stream_unzip import CRC32IntegrityError, UnzipError, stream_unzip

from xnat_emulator.archives import ZipStream
from xnat_emulator.content import BytesBlob
from xnat_emulator.model import FileEntry

ALICE = ("alice", "alice-pass")
E1 = "/data/experiments/XNAT_E00001"
DICOM = f"{E1}/scans/2/resources/DICOM/files"
SCAN_TYPES = {"1": "Localizer", "2": "T1w", "501": "DTI", "BOLD_1": "bold"}


def rows(emu, path):
    r = requests.get(emu.url + path, params={"format": "json"}, auth=ALICE, timeout=10)
    assert r.status_code == 200, r.text[:200]
    return r.json()["ResultSet"]["Result"]


def raw_get(emu, path):
    """(status, headers, body, broken) by http.client, a chunked body decoded here so that a
    body that breaks off (broken True) still gives every byte that came."""
    u = urlsplit(emu.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", path, headers={"Authorization": requests.auth._basic_auth_str(*ALICE)})
    resp = conn.getresponse()
    if resp.headers.get("Transfer-Encoding") != "chunked":
        body, broken = resp.read(), False
    else:
        parts, broken = [], False
        while True:
            line = resp.fp.readline()
            if not line.endswith(b"\r\n"):
                broken = True
                break
            n = int(line, 16)
            if n == 0:
                assert resp.fp.readline() == b"\r\n"
                break
            data = resp.fp.read(n + 2)
            parts.append(data[:n])
            if len(data) < n + 2:
                broken = True
                break
        body = b"".join(parts)
    conn.close()
    return resp.status, resp.headers, body, broken


def unzip_stream(body: bytes, piece: int = 1000) -> dict[str, bytes]:
    """The members stream-unzip reads from `body`, fed in small pieces."""
    out = {}
    for name, _size, chunks in stream_unzip(body[i:i + piece] for i in range(0, len(body), piece)):
        out[name.decode()] = b"".join(chunks)
    return out


def local_headers(body: bytes, zf: zipfile.ZipFile):
    """(info, flags, crc, csize, usize, bytes after the data) per member, from its local header."""
    for zi in zf.infolist():
        sig, _ver, flags, _m, _t, _d, crc, csize, usize, nlen, xlen = struct.unpack(
            "<IHHHHHIIIHH", body[zi.header_offset:zi.header_offset + 30])
        assert sig == 0x04034B50
        end = zi.header_offset + 30 + nlen + xlen + zi.compress_size
        yield zi, flags, crc, csize, usize, body[end:end + 4]


# -- entries --------------------------------------------------------------------------------

def test_deflated_entries_carry_data_descriptors(xnat):
    status, headers, body, broken = raw_get(xnat, DICOM + "?format=zip")
    assert status == 200 and not broken
    assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert len(zf.infolist()) == 5
    for zi, flags, crc, csize, usize, after in local_headers(body, zf):
        assert zi.compress_type == zipfile.ZIP_DEFLATED and zi.compress_size < zi.file_size
        assert flags & 0x08 and (crc, csize, usize) == (0, 0, 0)
        assert after == b"PK\x07\x08"          # the data descriptor follows the data
        d_crc, d_csize, d_usize = struct.unpack("<III", body[
            zi.header_offset + 30 + len(zi.filename) + zi.compress_size + 4:][:12])
        assert (d_crc, d_csize, d_usize) == (zi.CRC, zi.compress_size, zi.file_size)
    listed = {r["Name"]: r["digest"] for r in rows(xnat, DICOM)}
    streamed = unzip_stream(body)
    assert {n.rsplit("/", 1)[1]: hashlib.md5(c).hexdigest() for n, c in streamed.items()} \
        == listed
    assert {n: zf.read(n) for n in zf.namelist()} == streamed
    # another level changes the deflate level, not the layout
    fast = zipfile.ZipFile(io.BytesIO(raw_get(xnat, DICOM + "?format=zip&compression=1")[2]))
    assert {n: fast.read(n) for n in fast.namelist()} == streamed


def test_stored_entries_have_sizes_up_front_and_no_descriptor(xnat):
    status, headers, body, broken = raw_get(xnat, DICOM + "?format=zip&compression=0")
    assert status == 200 and not broken and "Content-Length" not in headers
    zf = zipfile.ZipFile(io.BytesIO(body))
    for zi, flags, crc, csize, usize, after in local_headers(body, zf):
        assert zi.compress_type == zipfile.ZIP_STORED
        assert not flags & 0x08 and (crc, csize, usize) == (zi.CRC, zi.file_size, zi.file_size)
        assert after in (b"PK\x03\x04", b"PK\x01\x02")   # the next entry, or the directory
    streamed = unzip_stream(body)                        # no NotStreamUnzippable
    assert {n: zf.read(n) for n in zf.namelist()} == streamed
    deflated = zipfile.ZipFile(io.BytesIO(raw_get(xnat, DICOM + "?format=zip")[2]))
    assert {n: deflated.read(n) for n in deflated.namelist()} == streamed


@pytest.mark.parametrize("level", [0, 6])
def test_zip64_members_read_by_both_readers(level):
    entries = [(f"d/f{i}.bin", FileEntry(f"f{i}.bin", BytesBlob(bytes([i]) * (1000 * i))))
               for i in range(1, 4)]
    body = b"".join(ZipStream(entries, level, zip64_over=0).iter_bytes())
    zf = zipfile.ZipFile(io.BytesIO(body))
    want = {n: e.blob.read() for n, e in entries}
    assert {n: zf.read(n) for n in zf.namelist()} == want
    assert unzip_stream(body) == want
    assert all(b"\x01\x00\x10\x00" in body[zi.header_offset:zi.header_offset + 60]
               for zi in zf.infolist())                   # the local Zip64 extra field


# -- structure ------------------------------------------------------------------------------

def expected_names(listing, structure):
    """{archive name: digest} that `structure` gives the rows of E1's scans/ALL/files."""
    out = {}
    for r in listing:
        scan = r["URI"].split("/scans/", 1)[1].split("/", 1)[0]
        path = r["URI"].split("/files/", 1)[1]
        typ, res = SCAN_TYPES[scan], r["collection"]
        name = {
            "default": f"SUBJ01_MR1/scans/{scan}-{typ}/resources/{res}/files/{path}",
            "simplified": f"SUBJ01_MR1/scans/{scan}/{res}/{path}",
            "improved": f"scans/{scan}_{typ}/{res}/{path}",
            "legacy": f"SUBJ01_MR1/SCANS/{scan}/{res}/{path}",
        }[structure]
        out[name] = r["digest"]
    return out


@pytest.mark.parametrize("structure", ["", "default", "simplified", "improved", "legacy",
                                       "IMPROVED", "nonsense"])
@pytest.mark.parametrize("level", [0, 6])
def test_structure_layouts_read_by_both_readers(xnat, structure, level):
    path = f"{E1}/scans/ALL/files?format=zip&compression={level}"
    if structure:
        path += f"&structure={structure}"
    status, _h, body, broken = raw_get(xnat, path)
    assert status == 200 and not broken
    layout = structure.lower() if structure.lower() in ("simplified", "improved", "legacy") \
        else "default"
    want = expected_names(rows(xnat, f"{E1}/scans/ALL/files"), layout)
    streamed = unzip_stream(body)
    assert set(streamed) == set(want)
    for name, digest in want.items():
        if digest:
            assert hashlib.md5(streamed[name]).hexdigest() == digest, name
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert zf.namelist() == list(streamed)
    assert {n: zf.read(n) for n in zf.namelist()} == streamed


def test_structure_of_session_and_project_resources(xnat):
    def names(path, structure):
        body = raw_get(xnat, f"{path}?format=zip&structure={structure}")[2]
        return set(unzip_stream(body))
    bids = "sub-01/anat/sub-01_T1w.nii.gz"
    sess = f"{E1}/resources/BIDS/files"
    assert f"SUBJ01_MR1/resources/BIDS/files/{bids}" in names(sess, "default")
    assert f"SUBJ01_MR1/BIDS/{bids}" in names(sess, "simplified")
    assert f"resources/BIDS/{bids}" in names(sess, "improved")
    assert f"SUBJ01_MR1/RESOURCES/BIDS/{bids}" in names(sess, "legacy")
    proj = "/data/projects/PUBLIC1/resources/protocol/files"
    assert "PUBLIC1/resources/protocol/files/README.txt" in names(proj, "default")
    assert "PUBLIC1/protocol/README.txt" in names(proj, "simplified")
    assert "resources/protocol/README.txt" in names(proj, "improved")
    assert "/data/xnat/archive/PUBLIC1/resources/protocol/README.txt" in names(proj, "legacy")


def test_improved_tar_leaves_the_scan_type_out(xnat):
    r = requests.get(xnat.url + DICOM, params={"format": "tar", "structure": "improved"},
                     auth=ALICE, timeout=10)
    assert r.status_code == 200 and "Content-Length" not in r.headers
    names = tarfile.open(fileobj=io.BytesIO(r.content)).getnames()
    assert len(names) == 5 and all(n.startswith("scans/2/DICOM/") for n in names)


# -- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 6])
def test_corrupt_archives(xnat, level):
    path = DICOM + f"?format=zip&compression={level}"
    good = raw_get(xnat, path)[2]
    single = rows(xnat, DICOM)[0]["URI"]
    single_good = requests.get(xnat.url + single, auth=ALICE, timeout=10).content
    xnat.faults.corrupt_archives = True
    status, _h, bad, broken = raw_get(xnat, path)
    assert status == 200 and not broken and bad != good
    if level == 0:                  # STORED: the same bytes but the flipped ones
        assert len(bad) == len(good)
        assert sum(x != y for x, y in zip(bad, good)) == 16
    zf = zipfile.ZipFile(io.BytesIO(bad))
    second = zf.namelist()[1]
    assert zf.testzip() == second                       # the second member's CRC fails
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        zf.read(second)
    seen = []
    with pytest.raises(CRC32IntegrityError):
        for name, _size, chunks in stream_unzip(iter([bad])):
            data = b"".join(chunks)
            seen.append(name.decode())
    assert seen == zf.namelist()[:1]                    # the first member came through
    good_zf = zipfile.ZipFile(io.BytesIO(good))
    assert hashlib.md5(data).hexdigest() != hashlib.md5(good_zf.read(second)).hexdigest()
    assert len(data) == good_zf.getinfo(second).file_size
    # single-file downloads are not archives
    assert requests.get(xnat.url + single, auth=ALICE, timeout=10).content == single_good
    xnat.faults.clear()
    assert raw_get(xnat, path)[2] == good


def test_corrupt_tar(xnat):
    good = requests.get(xnat.url + DICOM + "?format=tar", auth=ALICE, timeout=10).content
    xnat.faults.corrupt_archives = True
    bad = requests.get(xnat.url + DICOM + "?format=tar", auth=ALICE, timeout=10).content
    g, b = (tarfile.open(fileobj=io.BytesIO(x)) for x in (good, bad))
    differ = [m.name for m in g.getmembers()
              if g.extractfile(m).read() != b.extractfile(b.getmember(m.name)).read()]
    assert differ == [g.getnames()[1]]


@pytest.mark.parametrize("level", [0, 6])
def test_truncate_archives_half(xnat, level):
    path = DICOM + f"?format=zip&compression={level}"
    full = raw_get(xnat, path)[2]
    single = rows(xnat, DICOM)[0]["URI"]
    xnat.faults.truncate_archives = True
    status, headers, part, broken = raw_get(xnat, path)
    assert status == 200 and broken and "Content-Length" not in headers
    assert len(part) == len(full) // 2 and full.startswith(part)
    with pytest.raises(UnzipError):
        unzip_stream(part)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(xnat.url + path, auth=ALICE, timeout=10)
    # single-file downloads are not archives
    one = requests.get(xnat.url + single, auth=ALICE, timeout=10)
    assert one.status_code == 200 and len(one.content) == int(one.headers["Content-Length"])
    xnat.faults.clear()
    assert raw_get(xnat, path)[2:] == (full, False)


def test_truncate_archives_after_bytes_and_by_chance(xnat):
    path = DICOM + "?format=zip"
    full = raw_get(xnat, path)[2]
    xnat.faults.truncate_archives = 1000
    _s, _h, part, broken = raw_get(xnat, path)
    assert broken and part == full[:1000]
    with pytest.raises(UnzipError):
        unzip_stream(part)
    xnat.faults.truncate_archives = len(full) + 10       # longer than the archive: whole
    assert raw_get(xnat, path)[2:] == (full, False)
    xnat.faults.truncate_archives = 0.5
    outcomes = {raw_get(xnat, path)[3] for _ in range(12)}
    assert outcomes == {True, False}
    xnat.faults.clear()
    assert xnat.faults.truncate_archives is False and xnat.faults.corrupt_archives is False


# -- counters -------------------------------------------------------------------------------

def test_archive_requests_have_their_own_counter_key(xnat):
    xnat.counters.reset()
    s = requests.Session()
    s.auth = ALICE
    listing = s.get(xnat.url + DICOM + "?format=json").json()["ResultSet"]["Result"]
    s.get(xnat.url + DICOM + "?format=zip")
    s.get(xnat.url + DICOM + "?format=application/zip")
    s.get(xnat.url + "/data/archive" + DICOM[len("/data"):] + "?format=tgz")
    s.get(xnat.url + listing[0]["URI"] + "?format=zip")
    s.get(xnat.url + listing[0]["URI"])
    s.get(xnat.url + f"{E1}/files/nothing/?format=zip")       # 404: counted all the same
    c = xnat.counters
    base = "GET /data/experiments/{E}/scans/{SC}/resources/{R}/files"
    assert c[base] == 1
    assert c[base + "?format=zip"] == 2
    assert c["GET /data/archive/experiments/{E}/scans/{SC}/resources/{R}/files?format=tar.gz"] \
        == 1
    assert c[base + "/{path}?format=zip"] == 1 and c[base + "/{path}"] == 1
    assert c["GET /data/experiments/{E}/files/{path}/?format=zip"] == 1
    assert c.total == 7
