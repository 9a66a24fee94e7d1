"""zipstream: the members of a zip read as it arrives, each kept only when it is what was listed.

Archives made by Python's zipfile: written to a pipe-like sink, DEFLATED entries carry their
sizes in data descriptors as Java's ZipOutputStream writes them; STORED entries written to a
seekable file have them up front.
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

import pytest

from git_annex_remote_xnat.zipstream import ArchiveBroken, Wanted, extract, member_path

FILES = {f"dir/f{i}.dcm": random.Random(i).randbytes(1000 + 37 * i) for i in range(5)}
PREFIX = "SESS1/scans/1-T1w/resources/DICOM/files/"


class _Pipe(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += b
        return len(b)


def archive(method: int, files: dict[str, bytes] = FILES) -> bytes:
    sink: io.RawIOBase | io.BytesIO = _Pipe() if method == zipfile.ZIP_DEFLATED else io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=method) as zf:
        zf.writestr("SESS1/scans/2-DWI/resources/DICOM/files/other.dcm", b"not wanted" * 50)
        for path, content in files.items():
            zf.writestr(PREFIX + path, content)
    return bytes(sink.data) if isinstance(sink, _Pipe) else sink.getvalue()


def pieces(data: bytes, size: int = 777):
    return (data[i:i + size] for i in range(0, len(data), size))


def wanted_in(tmp_path: Path, files: dict[str, bytes] = FILES) -> dict[str, Wanted]:
    return {path: Wanted(tmp_path / path.replace("/", "_"), len(content),
                         hashlib.md5(content).hexdigest()) for path, content in files.items()}


def test_member_path_takes_what_follows_the_resources_files_part():
    assert member_path(PREFIX + "a/b.dcm", "DICOM") == "a/b.dcm"
    assert member_path("resources/DICOM/files/x", "DICOM") == "x"
    assert member_path(PREFIX + "a/b.dcm", "NIFTI") is None
    assert member_path("SESS1/assessors/QC1/out/resources/QC/files/r.txt", "QC") == "r.txt"


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED],
                         ids=["deflated-descriptors", "stored"])
def test_every_wanted_member_is_verified_and_placed(tmp_path, method):
    data = archive(method)
    if method == zipfile.ZIP_DEFLATED:
        assert data[6] & 0x08, "the sizes follow the data, as Java writes them"
    wanted = wanted_in(tmp_path)
    results = list(extract(pieces(data), "DICOM", wanted, limit=10 ** 6))
    assert results == [(path, None) for path in FILES]
    for path, content in FILES.items():
        assert wanted[path].dest.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(w.dest.name for w in wanted.values())


def test_a_member_that_is_not_what_was_listed_is_not_kept(tmp_path):
    wanted = wanted_in(tmp_path)
    wanted["dir/f1.dcm"] = Wanted(wanted["dir/f1.dcm"].dest, wanted["dir/f1.dcm"].size, "0" * 32)
    wanted["dir/f2.dcm"] = Wanted(wanted["dir/f2.dcm"].dest, 5, None)
    results = dict(extract(pieces(archive(zipfile.ZIP_DEFLATED)), "DICOM", wanted, 10 ** 6))
    assert "MD5" in results["dir/f1.dcm"] and "more than the 5 bytes" in results["dir/f2.dcm"]
    assert results["dir/f0.dcm"] is None and results["dir/f4.dcm"] is None
    assert not wanted["dir/f1.dcm"].dest.exists() and not wanted["dir/f2.dcm"].dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(wanted[p].dest.name for p in ("dir/f0.dcm", "dir/f3.dcm", "dir/f4.dcm"))


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED],
                         ids=["deflated-descriptors", "stored"])
def test_a_truncated_archive_keeps_what_came_whole_and_says_so(tmp_path, method):
    data = archive(method)
    wanted = wanted_in(tmp_path)
    cut = data.index((PREFIX + "dir/f3.dcm").encode()) + 200   # inside the fourth member
    got = []
    with pytest.raises(ArchiveBroken):
        for path, error in extract(pieces(data[:cut]), "DICOM", wanted, 10 ** 6):
            got.append((path, error))
    assert got == [(p, None) for p in ("dir/f0.dcm", "dir/f1.dcm", "dir/f2.dcm")]
    assert not wanted["dir/f3.dcm"].dest.exists()
    assert len(list(tmp_path.iterdir())) == 3   # no partial file left


def test_not_a_zip_and_a_limit_are_errors(tmp_path):
    with pytest.raises(ArchiveBroken, match="not a readable zip"):
        list(extract(pieces(b"<html>login</html>" * 10), "DICOM", wanted_in(tmp_path), 10 ** 6))
    with pytest.raises(ArchiveBroken, match="more than the 3000 bytes"):
        list(extract(pieces(archive(zipfile.ZIP_DEFLATED)), "DICOM", wanted_in(tmp_path), 3000))
