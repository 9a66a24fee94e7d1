"""The commands say what they do: no silent no-ops, messages that name the real cause, no
secret in any output, and names a file system cannot hold skipped by name.

End to end against the emulator, like tests/test_xnat_commands.py: real DataLad, git-annex and
HTTP over loopback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run
from tests.test_xnat_commands import alice, ds, init, results, state  # noqa: F401


def datalad_json(*args: str, cwd: Path | str | None = None
                 ) -> tuple[list[dict], subprocess.CompletedProcess]:
    """`datalad -f json ...`: its records and the process (exit code, stderr's log lines)."""
    proc = run(["datalad", "-f", "json", *args], cwd=cwd, check=False)
    records = [json.loads(line) for line in proc.stdout.splitlines()
               if line.strip().startswith("{")]
    assert "Traceback" not in proc.stderr, proc.stderr
    return records, proc


def summary_of(records: list[dict]) -> dict:
    found = [r for r in records if r.get("action") == "xnat_update" and r.get("type") == "dataset"]
    assert found, records
    return found[-1]


def session_files(xnat, session: str = "XNAT_E00001") -> int:
    return sum(1 for f in xnat.iter_files("PUBLIC1") if f.session_id == session)


# ----------------------------------------------------------------------------- item 1


def test_init_again_with_other_settings_is_refused_and_names_them(xnat, alice, ds):
    """Re-running xnat-init with other settings and without --force changed nothing and said
    notneeded, which DataLad does not even show: it is refused, naming what differs."""
    assert init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM")[-1]["status"] == "ok"
    before = state(ds)
    same = init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM")
    assert [r["status"] for r in same] == ["notneeded"], same

    other = init(ds, xnat.url, "-p", "PUBLIC1", "-c", "DICOM", "-F", "{subject}/{scan}/",
                 "-s", "SUBJ01")
    assert [r["status"] for r in other] == ["impossible"], other
    message = other[0]["message"]
    assert "pathfmt" in message and "{subject}/{scan}/" in message, message
    assert "subject" in message and "SUBJ01" in message, message
    assert "collection" not in message, message  # the same as before: not named
    assert "-f/--force" in message, message
    assert state(ds) == before

    fewer = init(ds, xnat.url, "-p", "PUBLIC1")  # without -c: --force would drop the filter
    assert [r["status"] for r in fewer] == ["impossible"], fewer
    assert "collection" in fewer[0]["message"] and "DICOM" in fewer[0]["message"], fewer
    assert state(ds) == before

    forced = init(ds, xnat.url, "-p", "PUBLIC1", "-f", "-F", "{subject}/{scan}/")
    assert forced[-1]["status"] == "ok", forced
    assert "{subject}/{scan}/" in (ds / ".datalad/config").read_text()


# ----------------------------------------------------------------------------- item 2


def test_update_with_an_unknown_collection_warns_and_names_the_labels(xnat, alice, ds):
    """`-c NOPE` registered nothing and said ok, nothing more: the update stays ok, and a
    warning names the resource labels the listing has."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    records, proc = datalad_json("xnat-update", "--reckless", "fast", "-c", "NOPE", cwd=ds)
    summary = summary_of(records)
    assert summary["status"] == "ok" and summary["added"] == 0, summary
    warnings = [line for line in proc.stderr.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1, proc.stderr
    assert "NOPE" in warnings[0] and "DICOM" in warnings[0] and "NIFTI" in warnings[0], warnings
    assert summary.get("unknown_collections") == ["NOPE"], summary

    # one known, one not: the known one is registered, the other named
    records, proc = datalad_json("xnat-update", "--reckless", "fast", "-c", "MAT", "-c", "NOPE2",
                                 cwd=ds)
    summary = summary_of(records)
    assert summary["status"] == "ok" and summary["added"] == 2, summary
    warnings = [line for line in proc.stderr.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1 and "NOPE2" in warnings[0] and "'MAT'" not in warnings[0], warnings


def test_query_with_an_unknown_collection_warns_and_names_the_labels(xnat, alice, ds):
    """xnat-query-files -c NOPE listed nothing and said nothing."""
    records, proc = datalad_json("xnat-query-files", xnat.url, "-p", "PUBLIC1", "-e",
                                 "SUBJ01_MR1", "-c", "NOPE", cwd=ds)
    assert records == [] and proc.returncode == 0, records
    warnings = [line for line in proc.stderr.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1 and "NOPE" in warnings[0] and "DICOM" in warnings[0], proc.stderr


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("option, label, words", [
    ("-s", "NOBODY", "project PUBLIC1 has no subject NOBODY"),
    ("-e", "NOSESSION", "project PUBLIC1 has no experiment NOSESSION"),
])
def test_init_names_the_missing_subject_or_experiment(xnat, alice, ds, option, label, words):
    """A readable project was called "no readable project PUBLIC1" when the subject or
    experiment was missing: the message names what is missing, and only that."""
    records = init(ds, xnat.url, "-p", "PUBLIC1", option, label)
    assert [r["status"] for r in records] == ["error"], records
    message = records[0]["message"]
    assert words in message, message
    assert "no readable project" not in message, message
    assert "xnat-query" in message, message  # how to list what there is


# ----------------------------------------------------------------------------- item 4


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_a_positive_number(xnat, alice, ds, jobs):
    """-J 0 and negative -J were taken silently: one line says what -J takes, nothing runs."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    before = state(ds)
    records, proc = datalad_json("xnat-update", "--reckless", "fast", "-J", jobs, cwd=ds)
    assert [r["status"] for r in records] == ["error"], records
    message = records[0]["message"]
    assert "-J/--jobs" in message and jobs in message and "auto" in message, message
    assert "\n" not in message and proc.returncode != 0
    assert state(ds) == before


# ----------------------------------------------------------------------------- item 5


@pytest.mark.parametrize("shape", ["http://alice:{pw}@{host}/", "htp://alice:{pw}@{host}",
                                   "alice:{pw}@{host}", "http://alice:{pw}/x@{host}"])
def test_a_password_in_the_url_is_never_printed(xnat, alice, ds, shape):
    """xnat-query-files and xnat-init refuse a URL with credentials, and printed it, password
    included; xnat-update took one from .datalad/config and stopped on an unexpected error."""
    secret = "S3CRET-PW"
    url = shape.format(pw=secret, host=xnat.url.split("://", 1)[1])
    for command in (["xnat-query-files", url], ["xnat-init", url, "-p", "PUBLIC1"]):
        records, proc = datalad_json(*command, cwd=ds)
        assert records and records[-1]["status"] == "error", records
        assert secret not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert "user name or password" in records[-1]["message"] \
            or "not an XNAT server URL" in records[-1]["message"], records

    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    run(["git", "config", "-f", ".datalad/config", "datalad.xnat.default.url", url], cwd=ds)
    records, proc = datalad_json("xnat-update", "--reckless", "fast", cwd=ds)
    assert [r["status"] for r in records] == ["error"], records
    assert ".datalad/config" in records[0]["message"], records
    assert secret not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- item 6


def test_names_the_file_system_cannot_hold_are_skipped_and_the_rest_registered(xnat, alice, ds):
    """A file name of more than 255 bytes stopped every update after the listing ('commit or
    discard local changes'); a name that is not valid UTF-8 ended in an encode error naming no
    file. Both are skipped by name, the rest is registered, the status is an error."""
    init(ds, xnat.url, "-p", "PUBLIC1", "-e", "SUBJ01_MR1")
    listed = session_files(xnat)
    long_name = "x" * 252 + "é.dcm"  # 258 bytes in UTF-8, 257 characters
    xnat.add_file(long_name, b"long", resource="DICOM", session="XNAT_E00001", scan="1")
    xnat.add_file("sub/bad\udcff.dcm", b"bad", resource="DICOM", session="XNAT_E00001",
                  scan="2")
    xnat.add_file("lone\ud800.txt", b"lone", resource="notes", session="XNAT_E00001")

    files, proc = datalad_json("xnat-query-files", xnat.url, "-p", "PUBLIC1", "-e",
                               "SUBJ01_MR1", cwd=ds)
    assert len([r for r in files if r.get("type") == "xnat-file"]) == listed + 3, proc.stderr

    records, proc = datalad_json("xnat-update", "--reckless", "fast", cwd=ds)
    errors = [r["message"] for r in records
              if r["status"] == "error" and r["message"].startswith("skipped")]
    assert len(errors) == 3, records
    assert any("xxxxxx" in m and "255" in m and "rename it on the server" in m
               for m in errors), errors
    assert any("bad%" in m and "UTF-8" in m for m in errors), errors
    assert any("lone%" in m and "UTF-8" in m for m in errors), errors
    summary = summary_of(records)
    assert summary["status"] == "error" and summary["added"] == listed, summary
    assert summary["failed"] == 3 and proc.returncode != 0
    assert run(["git", "status", "--porcelain"], cwd=ds).stdout == ""
    # the next update is not blocked: the same three skipped, nothing else to do
    again = summary_of(datalad_json("xnat-update", "--reckless", "fast", cwd=ds)[0])
    assert again["unchanged"] == listed and again["failed"] == 3, again


# --------------------------------------------------------------------- rewritten labels


def test_a_rewritten_label_is_reported_once_with_its_folder(xnat, alice, ds):
    """A label the layout rewrites to be safe (`../x` -> `_._x`) was silent: it is reported
    once per label, naming the folder used."""
    subject = xnat.add_subject("PUBLIC1", "../evil")
    session = xnat.add_session("PUBLIC1", subject, "EVIL_MR1")
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        xnat.add_file(name, name.encode(), resource="DICOM", session=session, scan="1")
    init(ds, xnat.url, "-p", "PUBLIC1", "-s", "../evil")
    records, proc = datalad_json("xnat-update", "--reckless", "fast", cwd=ds)
    summary = summary_of(records)
    assert summary["status"] == "ok" and summary["added"] == 3, records
    notes = [r for r in records if "../evil" in r.get("message", "")]
    assert len(notes) == 1, records
    assert "_._evil" in notes[0]["message"] and notes[0]["path"] == str(ds / "_._evil"), notes
    assert (ds / "_._evil" / "EVIL_MR1" / "1" / "a.dcm").is_symlink()
