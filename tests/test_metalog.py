"""The metadata log format (xnat_init/update/metalog.py) against real git-annex: what it writes
is what `git annex metadata --json` reads back, and byte for byte what git-annex itself writes
for the same change at the same time."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run
from xnat_init.update import metalog
from xnat_init.update.gitannex import FastImport

T0 = 1_700_000_000


def annex_repo(tmp_path: Path, files: dict[str, bytes]) -> Path:
    repo = tmp_path / "repo"
    run(["git", "init", "-q", str(repo)])
    run(["git", "annex", "init", "-q"], cwd=repo)
    for name, content in files.items():
        (repo / name).write_bytes(content)
    run(["git", "annex", "add", "-q", *files], cwd=repo)
    run(["git", "commit", "-q", "-m", "files"], cwd=repo)
    return repo


def log_path(repo: Path, name: str) -> str:
    key = run(["git", "annex", "lookupkey", name], cwd=repo).stdout.strip()
    hashdir = run(["git", "annex", "examinekey", "--format=${hashdirlower}", key],
                  cwd=repo).stdout.strip()
    return f"{hashdir}{key}.log.met"


def read_log(repo: Path, name: str) -> bytes | None:
    proc = subprocess.run(["git", "cat-file", "blob", f"git-annex:{log_path(repo, name)}"],
                          cwd=repo, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def write_log(repo: Path, name: str, content: bytes) -> None:
    """Put `content` on git-annex's branch as the file's metadata log, the way xnat-update
    does (a fast-import commit)."""
    importer = FastImport(repo, "refs/heads/git-annex", b"test", "refs/heads/git-annex")
    importer.file(log_path(repo, name), content)
    importer.finish("test")


def annex_fields(repo: Path, name: str) -> dict[str, list[str]]:
    """What git-annex reads: the file's fields, without its generated *lastchanged ones."""
    record = json.loads(run(["git", "annex", "metadata", "--json", name], cwd=repo).stdout)
    return {field: sorted(values) for field, values in record["fields"].items()
            if not field.endswith("lastchanged")}


def annex_set(repo: Path, name: str, when: int, *settings: str) -> None:
    args = [arg for setting in settings for arg in ("-s", setting)]
    run(["git", "annex", "metadata", *args, name], cwd=repo,
        env=dict(os.environ, GIT_ANNEX_VECTOR_CLOCK=str(when)))


AWKWARD = {"series_description": {"T1 MPRAGE sag"}, "note": {"!bang"},
           "site": {"Zürich"}, "tabbed": {"a\tb"}, "scan_type": {"T1w", "T2w"},
           "quality": {"+usable"}, "session": {"-5"}}


def test_what_it_writes_git_annex_reads(tmp_path):
    repo = annex_repo(tmp_path, {"a.dcm": b"a"})
    content = metalog.updated(None, AWKWARD, {}, T0)
    write_log(repo, "a.dcm", content)
    assert annex_fields(repo, "a.dcm") == {name: sorted(v) for name, v in AWKWARD.items()}
    assert metalog.current(metalog.parse(content)) == {
        name: {value.encode() for value in values} for name, values in AWKWARD.items()}

    changed = metalog.updated(content, {"quality": {"unusable"}, "scan_type": {"T1w"}},
                              {"quality": {"+usable"}, "scan_type": {"T2w"}}, T0 + 5)
    write_log(repo, "a.dcm", changed)
    expected = {name: sorted(v) for name, v in AWKWARD.items()}
    expected.update(quality=["unusable"], scan_type=["T1w"])
    assert annex_fields(repo, "a.dcm") == expected
    # nothing to change: nothing to write
    assert metalog.updated(changed, {"quality": {"unusable"}}, {"quality": {"usable"}},
                           T0 + 9) is None


@pytest.mark.parametrize("steps", [
    # (settings for `git annex metadata -s`, what `updated` is asked for)
    [(("scan_type=T1w", "quality=usable", "series_description=T1 MPRAGE"),
      ({"scan_type": {"T1w"}, "quality": {"usable"}, "series_description": {"T1 MPRAGE"}}, {})),
     (("quality-=usable", "quality+=unusable"),
      ({"quality": {"unusable"}}, {"quality": {"usable"}}))],
    # the second change makes the first line superfluous: git-annex simplifies the log
    [(("quality=usable",), ({"quality": {"usable"}}, {})),
     (("quality-=usable", "quality+=unusable"),
      ({"quality": {"unusable"}}, {"quality": {"usable"}})),
     (("quality-=unusable", "quality+=questionable"),
      ({"quality": {"questionable"}}, {"quality": {"unusable"}}))],
])
def test_byte_for_byte_what_git_annex_writes(tmp_path, steps):
    repo = annex_repo(tmp_path, {"theirs.dcm": b"x", "ours.dcm": b"y"})
    ours = None
    for n, (settings, (wanted, unwanted)) in enumerate(steps):
        when = T0 + 10 * n
        annex_set(repo, "theirs.dcm", when, *settings)
        ours = metalog.updated(ours, wanted, unwanted, when)
        assert ours == read_log(repo, "theirs.dcm")
    write_log(repo, "ours.dcm", ours)
    assert annex_fields(repo, "ours.dcm") == annex_fields(repo, "theirs.dcm")


def test_fields_are_case_insensitive_and_hand_set_values_stay(tmp_path):
    repo = annex_repo(tmp_path, {"a.dcm": b"a"})
    annex_set(repo, "a.dcm", T0, "Quality=usable", "tag=mine")
    content = metalog.updated(read_log(repo, "a.dcm"), {"quality": {"unusable"}},
                              {"quality": {"usable"}}, T0 + 1)
    write_log(repo, "a.dcm", content)
    fields = annex_fields(repo, "a.dcm")
    assert fields["tag"] == ["mine"]
    assert [values for name, values in fields.items() if name.lower() == "quality"] == \
        [["unusable"]]


def test_a_newer_line_in_the_log_is_outrun(tmp_path):
    """Two updates within one second (or a clock behind the log's): the new line gets a
    later timestamp than every line there, so it wins."""
    repo = annex_repo(tmp_path, {"a.dcm": b"a"})
    annex_set(repo, "a.dcm", T0 + 100, "quality=usable")
    content = metalog.updated(read_log(repo, "a.dcm"), {"quality": {"unusable"}},
                              {"quality": {"usable"}}, T0)
    assert content.splitlines()[-1].startswith(f"{T0 + 101}s ".encode())
    write_log(repo, "a.dcm", content)
    assert annex_fields(repo, "a.dcm") == {"quality": ["unusable"]}


def test_parse_leaves_out_what_git_annex_cannot_read():
    content = (b"garbage line\n"
               b"1700000000.250s a +x +!eSB6 b -w\n"
               b"\n"
               b"1700000001s a -x\n")
    lines = metalog.parse(content)
    assert [metalog.format_stamp(line.stamp) for line in lines] == ["1700000000.25s",
                                                                    "1700000001s"]
    assert metalog.current(lines) == {"a": {b"y z"}}
    writer = metalog.LogWriter(T0)
    change = metalog.MetaChange({"a": {"n"}}, {}, token=1)
    assert writer.updated(None, change) == metalog.updated(None, {"a": {"n"}}, {}, T0)
    assert writer.updated(None, change) is writer.updated(None, change)  # cached
