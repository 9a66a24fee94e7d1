"""The xnat: URL format: both directions, claims, and the encodings XNAT needs."""

from __future__ import annotations

from functools import partial

import pytest

from git_annex_remote_xnat import urls
from tests.conftest import file_record


Rec = partial(file_record, path="a.dcm")


BASE = "https://XNAT.example.org/"


def test_scan_file_url_round_trip() -> None:
    url = urls.file_url(BASE, Rec(path="sub dir/a+b#c.dcm"))
    assert url == ("xnat://xnat.example.org/projects/P1/subjects/XNAT_S00001/experiments/"
                   "XNAT_E00001/scans/1/resources/DICOM/files/sub%20dir/a%2Bb%23c.dcm")
    assert " " not in url
    assert urls.claims(url, BASE)
    assert urls.rest_path(url, BASE) == (
        "/data/projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/scans/1/resources/DICOM"
        "/files/sub%20dir/a%2Bb%23c.dcm")
    assert urls.file_name(url) == "a+b#c.dcm"
    assert urls.relative_file_path(url) == "sub dir/a+b#c.dcm"


@pytest.mark.parametrize("level, expected", [
    ("session", "projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/resources/R/files/f"),
    ("assessor", "projects/P1/subjects/XNAT_S00001/experiments/XNAT_E00001/assessors/XNAT_E00003"
                 "/resources/R/files/f"),
    ("subject", "projects/P1/subjects/XNAT_S00001/resources/R/files/f"),
    ("project", "projects/P1/resources/R/files/f"),
])
def test_other_levels(level: str, expected: str) -> None:
    url = urls.file_url(BASE, Rec(level=level, resource="R", path="f", assessor_id="XNAT_E00003"))
    assert url == "xnat://xnat.example.org/" + expected
    assert urls.rest_path(url, BASE) == "/data/" + expected


def test_resource_named_files_and_odd_scan_ids() -> None:
    url = urls.file_url(BASE, Rec(scan_id="BOLD_1", resource="files", path="files/x"))
    assert "/scans/BOLD_1/" in url
    assert urls.relative_file_path(url) == "files/x"


def test_context_path_port_and_claims_are_per_server() -> None:
    base = "http://localhost:8080/xnat"
    url = urls.file_url(base, Rec())
    assert url.startswith("xnat://localhost:8080/xnat/projects/P1/subjects/")
    assert urls.claims(url, base)
    assert urls.claims(url, "https://LOCALHOST:8080/xnat/")  # scheme is not part of identity
    assert urls.claims(url, "http://localhost:8080/xnat/data")  # a pasted REST root
    assert not urls.claims(url, "http://localhost:8080")
    assert not urls.claims(url, "http://localhost:808/xnat")
    assert not urls.claims(url, "http://other:8080/xnat")
    assert not urls.claims("https://localhost:8080/xnat/data/x", base)
    assert not urls.claims(url + " x", base)
    assert not urls.claims(url, "not a url")  # never raises
    with pytest.raises(urls.XnatUrlError):
        urls.rest_path(url, "http://other:8080/xnat")


@pytest.mark.parametrize("bad", ["ftp://host", "host.org", "https://u:secret@host", "http://h/?a=1", ""])
def test_bad_base_urls(bad: str) -> None:
    with pytest.raises(urls.XnatUrlError):
        urls.normalize_base_url(bad)


def test_normalize_base_url() -> None:
    assert urls.normalize_base_url(" HTTPS://Host.ORG:8443/xnat/ ") == "https://host.org:8443/xnat"


@pytest.mark.parametrize("level", ["scan", "session", "assessor", "subject", "project"])
def test_parse_file_url_inverts_file_url(level: str) -> None:
    record = Rec(level=level, resource="a b+c", path="sub dir/x%y.dcm",
                 scan_id="1" if level == "scan" else "",
                 assessor_id="XNAT_E00003" if level == "assessor" else "")
    location = urls.parse_file_url(urls.file_url(BASE, record), BASE)
    assert location is not None
    assert (location.level, location.resource, location.path) == (level, "a b+c",
                                                                   "sub dir/x%y.dcm")
    assert location.project == "P1"
    assert location.subject_id == ("" if level == "project" else "XNAT_S00001")
    assert location.session_id == ("XNAT_E00001" if level in ("scan", "session", "assessor")
                                   else "")
    assert location.scan_id == ("1" if level == "scan" else "")
    assert location.assessor_id == ("XNAT_E00003" if level == "assessor" else "")


def test_urls_of_older_registrations_still_parse() -> None:
    old = "xnat://xnat.example.org/experiments/XNAT_E00001/scans/1/resources/DICOM/files/a.dcm"
    assert urls.claims(old, BASE)
    location = urls.parse_file_url(old, BASE)
    assert (location.level, location.project, location.session_id, location.scan_id) == \
        ("scan", "", "XNAT_E00001", "1")
    assert urls.rest_path(old, BASE) == \
        "/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files/a.dcm"


def test_parse_file_url_of_another_server_or_no_file() -> None:
    url = urls.file_url(BASE, Rec())
    assert urls.parse_file_url(url, "https://other.example.org") is None
    assert urls.parse_file_url("xnat://xnat.example.org/experiments/E1", BASE) is None
    assert urls.parse_file_url(urls.file_url(BASE, Rec(resource="")), BASE).resource == ""
