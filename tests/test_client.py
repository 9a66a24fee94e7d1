"""XnatClient against the emulator: listings, enumeration cost, auth, retries, verified downloads."""

from __future__ import annotations

import hashlib

import pytest

from git_annex_remote_xnat.client import (
    AuthenticationError, DownloadError, FileRecord, NotFoundError, NotXnatError,
    ServerUnreachableError, USER_AGENT, XnatClient, XnatError,
)
from git_annex_remote_xnat.credentials import Credential, anonymous_credential
from git_annex_remote_xnat.urls import file_url, rest_path

ALICE = Credential("emu", "alice", "alice-pass", "test")


def client_for(emu, credential=ALICE, **kwargs) -> XnatClient:
    kwargs.setdefault("backoff_factor", 0.01)
    return XnatClient(emu.url, credential, **kwargs)


def public1_records(emu, **kwargs) -> list[FileRecord]:
    with client_for(emu) as client:
        return list(client.iter_files("PUBLIC1", **kwargs))


def test_user_agent_is_not_a_browser():
    assert USER_AGENT.startswith("git-annex-remote-xnat/")
    assert not any(word in USER_AGENT for word in ("Mozilla", "AppleWebKit", "MSIE", "Opera"))


def test_listings_are_typed(xnat):
    with client_for(xnat) as client:
        projects = {p.id: p for p in client.projects()}
        assert "PUBLIC1" in projects and "PRIV1" not in projects
        assert client.project("PUBLIC1").name == "Public test project"
        subjects = client.subjects("PUBLIC1")
        assert [(s.id, s.label) for s in subjects] == [("XNAT_S00001", "SUBJ01"),
                                                      ("XNAT_S00002", "SUBJ02")]
        experiments = client.experiments("PUBLIC1")
        assert {(e.id, e.label, e.subject_id) for e in experiments} >= {
            ("XNAT_E00001", "SUBJ01_MR1", "XNAT_S00001"), ("XNAT_E00002", "SUBJ02_MR1", "XNAT_S00002")}
        scans = client.scans("XNAT_E00001")
        assert [(s.id, s.type) for s in scans][:2] == [("1", "Localizer"), ("2", "T1w")]
        resources = client.resources("/data/experiments/XNAT_E00001/scans/2")
        dicom = next(r for r in resources if r.label == "DICOM")
        assert dicom.file_count == 5 and isinstance(dicom.file_size, int)
        files = client.files("/data/experiments/XNAT_E00001/scans/2/resources/DICOM")
        assert len(files) == 5 and all(f.size and f.md5 and f.resource == "DICOM" for f in files)
        with pytest.raises(NotFoundError, match="404"):
            client.project("PRIV1")


def test_enumeration_covers_every_level_with_few_requests(xnat):
    xnat.counters.reset()
    records = public1_records(xnat)
    sessions, assessors = 2, 1
    # subjects + experiments + per session (scans/ALL/files + scans) + project, subject and
    # session level batches (files, assessors) + per assessor its files: about one request per
    # session plus a handful.
    assert xnat.counters.total <= 2 * sessions + 9 + assessors, xnat.counters.snapshot()
    levels = {r.level for r in records}
    assert levels == {"scan", "session", "assessor", "subject", "project"}
    qc = [r for r in records if r.level == "assessor"]
    assert {(r.session_id, r.assessor_id, r.assessor_label, r.resource, r.path) for r in qc} == {
        ("XNAT_E00001", "XNAT_E00003", "SUBJ01_MR1_QC", "QC", "qc_report.txt"),
        ("XNAT_E00001", "XNAT_E00003", "SUBJ01_MR1_QC", "QC", "metrics/metrics.json")}
    by_path = {(r.session_id, r.scan_id, r.resource, r.path): r for r in records}
    mat = by_path[("XNAT_E00001", "BOLD_1", "MAT", "bold xfm+run #1.mat")]
    assert (mat.size, mat.scan_type, mat.subject_label, mat.session_label) == (
        405, "bold", "SUBJ01", "SUBJ01_MR1")
    # what the scans and experiments listings say besides, for the metadata: no request more
    assert (mat.series_description, mat.quality, mat.session_date, mat.session_xsi_type) == (
        "BOLD resting state", "usable", "2024-01-15", "xnat:mrSessionData")
    assert {(r.session_date, r.session_xsi_type) for r in qc} == {
        ("2024-01-15", "xnat:mrSessionData")}
    assert by_path[("XNAT_E00001", "BOLD_1", "MAT", "motion.par")].md5 is None
    assert ("XNAT_E00001", "", "BIDS", "sub-01/anat/sub-01_T1w.nii.gz") in by_path
    assert any(r.level == "project" and r.path == "scanner/settings.json" for r in records)
    assert any(r.level == "subject" and r.path == "intake.txt" and r.subject_id == "XNAT_S00001"
               for r in records)
    assert records == public1_records(xnat), "the order is deterministic"


def test_enumeration_filters(xnat):
    records = public1_records(xnat, subjects=["SUBJ02"], resources=["DICOM"])
    assert records and {(r.subject_id, r.resource) for r in records} == {("XNAT_S00002", "DICOM")}
    one = public1_records(xnat, experiments=["XNAT_E00001"], scan_types=False)
    assert {r.session_id for r in one} == {"XNAT_E00001"} and {r.scan_type for r in one} == {""}
    with pytest.raises(NotFoundError):
        public1_records(xnat, experiments=["NOPE"])
    both = public1_records(xnat, subjects=["SUBJ01", "XNAT_S00002"], resources=["DICOM"])
    assert {r.subject_id for r in both} == {"XNAT_S00001", "XNAT_S00002"}
    with pytest.raises(NotFoundError, match="no subject NOPE \\(its subjects"):
        public1_records(xnat, subjects=["SUBJ01", "NOPE"])


def test_download_verifies_and_reports_progress(xnat, tmp_path):
    record = next(r for r in public1_records(xnat) if r.md5 and r.resource == "DICOM")
    path = rest_path(file_url(xnat.url, record), xnat.url)
    seen = []
    dest = tmp_path / "f.dcm"
    with client_for(xnat) as client:
        assert client.download(path, dest, size=record.size, md5=record.md5,
                               progress=seen.append) == record.size
        assert hashlib.md5(dest.read_bytes()).hexdigest() == record.md5
        assert seen[-1] == record.size
        status = client.file_status(path)
        assert (status.exists, status.size) == (True, record.size)
        assert client.file_status(path + "-missing").exists is False
        with pytest.raises(DownloadError, match="MD5"):
            client.download(path, tmp_path / "bad", size=record.size, md5="0" * 32)
        assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == [dest], "no temporary file is left behind"


@pytest.mark.parametrize("fault", ["truncate_downloads", "corrupt_downloads"])
def test_broken_bodies_leave_nothing(xnat, tmp_path, fault):
    record = next(r for r in public1_records(xnat) if r.md5 and r.size > 2048)
    path = rest_path(file_url(xnat.url, record), xnat.url)
    dest = tmp_path / "f"
    dest.write_bytes(b"partial from before")
    setattr(xnat.faults, fault, True)
    with client_for(xnat, download_attempts=2) as client:
        with pytest.raises(DownloadError) as info:
            client.download(path, dest, size=record.size, md5=record.md5)
    assert "\n" not in str(info.value) and xnat.url.split("//")[1] in str(info.value)
    assert dest.read_bytes() == b"partial from before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_transient_faults_are_retried(xnat, tmp_path):
    xnat.faults.error_rate = 0.3
    records = public1_records(xnat)
    record = next(r for r in records if r.md5)
    xnat.faults.truncate_downloads = 0.5
    with client_for(xnat, download_attempts=6) as client:
        for n, rec in enumerate(r for r in records if r.md5 and r.resource == "DICOM"):
            path = rest_path(file_url(xnat.url, rec), xnat.url)
            client.download(path, tmp_path / str(n), size=rec.size, md5=rec.md5)
    assert record and xnat.counters.by_status.get(503, 0) > 0


def test_expired_session_is_renewed_once(xnat):
    xnat.faults.expire_sessions_after = 3
    xnat.counters.reset()
    with client_for(xnat) as client:
        for _ in range(10):
            assert client.subjects("PUBLIC1")
    logins = xnat.counters.snapshot()["by_route"].get("POST /data/JSESSION", 0)
    assert 2 <= logins <= 6


def test_downloads_carry_the_session_and_renew_it(xnat, tmp_path):
    """Downloads take a lighter path than listings (no requests.Session per file); it must
    still carry the session cookie (PUBLIC1 would answer a guest too) and renew it on 401."""
    records = [r for r in public1_records(xnat) if r.md5][:8]
    xnat.faults.expire_sessions_after = 3
    xnat.counters.reset()
    with client_for(xnat) as client:
        for n, rec in enumerate(records):
            path = rest_path(file_url(xnat.url, rec), xnat.url)
            client.download(path, tmp_path / str(n), size=rec.size, md5=rec.md5)
    routes = xnat.counters.snapshot()["by_route"]
    assert 2 <= routes.get("POST /data/JSESSION", 0) <= len(records)
    assert len(list(tmp_path.iterdir())) == len(records)


def test_round_trip_is_what_a_data_request_costs_up_to_its_headers(xnat):
    """None before any data request (a login does not count: its work is not a request's),
    at least the server's delay once one was answered, and the least of the recent answers,
    so that one quick answer shows the link is quick."""
    xnat.faults.delay = 0.05
    with client_for(xnat) as client:
        assert client.round_trip is None
        client.session.login()
        assert client.round_trip is None
        client.subjects("PUBLIC1")
        assert client.round_trip is not None and client.round_trip >= 0.05
        xnat.faults.delay = 0.0
        client.subjects("PUBLIC1")
        assert client.round_trip < 0.05


def test_session_is_created_once_and_deleted_at_close(xnat):
    xnat.counters.reset()
    with client_for(xnat) as client:
        client.projects()
        client.subjects("PUBLIC1")
    routes = xnat.counters.snapshot()["by_route"]
    assert routes.get("POST /data/JSESSION") == 1 and routes.get("DELETE /data/JSESSION") == 1


def test_auth_errors_are_one_clear_line(emulator_factory):
    closed = emulator_factory(require_login=True)
    with pytest.raises(AuthenticationError) as info:
        client_for(closed, Credential("emu", "alice", "wrong", "env")).login()
    message = str(info.value)
    assert "401" in message and "alice" in message and "wrong" not in message
    assert "DATALAD_CREDENTIAL_EMU_USER" in message and "\n" not in message
    with pytest.raises(AuthenticationError, match="needs a login"):
        client_for(closed, anonymous_credential()).projects()
    closed.faults.login_page_instead_of_401 = True
    with pytest.raises(AuthenticationError, match="HTML"):
        client_for(closed, anonymous_credential()).projects()


def test_anonymous_on_an_open_site(emulator_factory):
    open_site = emulator_factory(require_login=False)
    with client_for(open_site, anonymous_credential()) as client:
        assert "PUBLIC1" in {p.id for p in client.projects()}


def test_alias_token_works_as_user_and_password(xnat):
    with client_for(xnat) as client:
        token = client.session.get_json("/data/services/tokens/issue")
    with client_for(xnat, Credential("tok", token["alias"], token["secret"], "test")) as client:
        assert client.subjects("PUBLIC1")


def test_unreachable_and_not_xnat(tmp_path):
    with pytest.raises(ServerUnreachableError, match="cannot reach"):
        XnatClient("http://127.0.0.1:9", ALICE, retries=1, backoff_factor=0.01).login()


def test_error_messages_never_carry_secrets(xnat):
    with client_for(xnat) as client:
        with pytest.raises(XnatError) as info:
            client.files("/data/experiments/NOPE/scans/ALL")
    assert "alice-pass" not in str(info.value) and "404" in str(info.value)
    assert isinstance(info.value, NotFoundError) or isinstance(info.value, NotXnatError)


def test_request_count_scales_with_sessions(emulator_factory):
    """About one request per session (plus one per subject for subject resources here,
    because the emulator refuses comma lists of subjects) and a handful."""
    emu = emulator_factory(preset="files", files=10000, file_size=64)
    with client_for(emu, Credential("emu", "admin", "admin-pass", "test")) as client:
        project = client.projects()[0].id
        sessions = len(client.experiments(project))
        subjects = len(client.subjects(project))
        emu.counters.reset()
        records = list(client.iter_files(project, jobs=4))
    assert len(records) >= 10000 and sessions > 10
    assert emu.counters.total <= sessions + subjects + 8, emu.counters.snapshot()["by_route"]
    assert emu.counters["GET /data/experiments/{E}/scans/{SC}/files"] == sessions


def test_progress_at_least_every_mib(emulator_factory, tmp_path):
    emu = emulator_factory(preset="files", files=1, file_size=3 * 2**20 + 5)
    with client_for(emu, Credential("emu", "admin", "admin-pass", "test")) as client:
        record = next(client.iter_files(client.projects()[0].id))
        seen = []
        client.download(rest_path(file_url(emu.url, record), emu.url), tmp_path / "big",
                        size=record.size, md5=record.md5, progress=seen.append)
    assert seen[-1] == record.size and len(seen) >= 4
    assert all(b - a <= 2**20 for a, b in zip([0] + seen, seen))
