"""pathfmt parsing and rendering, sanitising, collisions, and MD5E extensions checked against
real `git annex calckey`."""

from __future__ import annotations

import random

import pytest

from git_annex_remote_xnat.keys import md5e_extension, md5e_key
from tests.conftest import file_record, run
from xnat_init.layout import (
    CollisionTracker,
    LayoutError,
    PathFormat,
    check_relative_path,
    sanitize_label,
)


Rec = file_record


def test_default_layout_for_every_level():
    fmt = PathFormat("{subject}/{session}/{scan}/")
    assert fmt.render(Rec()).path == "SUBJ01/SUBJ01_MR1/1/a/b.dcm"
    session = Rec(level="session", scan_id="", scan_type="", resource="BIDS",
                  path="sub-01/anat/T1w.nii.gz")
    assert fmt.render(session).path == "SUBJ01/SUBJ01_MR1/resources/BIDS/sub-01/anat/T1w.nii.gz"
    subject = Rec(level="subject", session_id="", session_label="", scan_id="", resource="notes",
                  path="x.txt")
    assert fmt.render(subject).path == "SUBJ01/resources/notes/x.txt"
    project = Rec(level="project", subject_id="", subject_label="", session_id="",
                  session_label="", scan_id="", resource="protocol", path="README.txt")
    assert fmt.render(project).path == "resources/protocol/README.txt"
    # a scan called "resources" cannot clash with the non-scan resources folder
    assert fmt.render(Rec(scan_id="resources")).path == "SUBJ01/SUBJ01_MR1/resources_/a/b.dcm"


def test_all_placeholders_and_resource_levels():
    fmt = PathFormat("{project}/{subject_id}-{subject}/{session_id}_{session}/{scan}-{scan_type}/{resource}/")
    assert fmt.render(Rec()).path == "P1/XNAT_S00001-SUBJ01/XNAT_E00001_SUBJ01_MR1/1-T1w/DICOM/a/b.dcm"
    session = Rec(level="session", scan_id="", scan_type="", resource="BIDS", path="x")
    assert fmt.render(session).path == "P1/XNAT_S00001-SUBJ01/XNAT_E00001_SUBJ01_MR1/resources/BIDS/x"
    # {resource} before {scan}: non-scan resources stop there too
    fmt2 = PathFormat("{subject}/{resource}/{scan}/")
    assert fmt2.render(session).path == "SUBJ01/resources/BIDS/x"
    # a pathfmt without scan placeholders still separates session resources
    fmt3 = PathFormat("{subject}/{session}/")
    assert fmt3.render(session).path == "SUBJ01/SUBJ01_MR1/resources/BIDS/x"


def test_subdataset_split():
    fmt = PathFormat("{subject}//{session}//{scan}/")
    rendered = fmt.render(Rec())
    assert rendered.path == "SUBJ01/SUBJ01_MR1/1/a/b.dcm"
    assert rendered.dataset == "SUBJ01/SUBJ01_MR1"
    assert rendered.path_in_dataset == "1/a/b.dcm"
    assert fmt.datasets(rendered.dataset) == ["SUBJ01", "SUBJ01/SUBJ01_MR1"]
    subject = Rec(level="subject", session_id="", session_label="", scan_id="", resource="n",
                  path="x")
    assert fmt.render(subject) .dataset == "SUBJ01"
    assert fmt.render(subject).path == "SUBJ01/resources/n/x"
    project = Rec(level="project", subject_id="", subject_label="", resource="p", path="x")
    assert fmt.render(project).dataset == ""
    assert fmt.has_subdatasets and not PathFormat("{subject}/").has_subdatasets


@pytest.mark.parametrize("bad, words", [
    ("{subject}/{session}", "must end with '/'"),
    ("{subject}/{nonsense}/", "unknown placeholder {nonsense}"),
    ("/{subject}/", "relative"),
    ("{subject}//", "ends with '//'"),
    ("{subject}///{scan}/", "'///'"),
    ("../{subject}/", "leave the dataset"),
    (".git/{subject}/", "leave the dataset"),
    ("{subject!r}/", "no format spec"),
    ("{subject:>5}/", "no format spec"),
    ("{subject/", "placeholders"),
    ("", "empty"),
])
def test_bad_pathfmt(bad, words):
    with pytest.raises(LayoutError, match=None) as info:
        PathFormat(bad)
    assert words in str(info.value)


def test_labels_are_sanitised():
    assert sanitize_label("a/b\\c") == "a_b_c"
    assert sanitize_label("..") == "_."
    assert sanitize_label(".git") == "_git"
    assert sanitize_label("x\ny") == "x_y"
    fmt = PathFormat("{subject}/{session}/{scan}/")
    evil = Rec(subject_label="..", session_label="../../etc", scan_id=".git", scan_type="")
    path = fmt.render(evil).path
    assert path == "_./_._.._etc/_git/a/b.dcm"
    assert ".." not in path.split("/")
    assert fmt.render(Rec(scan_type="", subject_label="")).path.startswith("XNAT_S00001/")
    assert PathFormat("{scan_type}/").render(Rec(scan_type="")).path == "_/a/b.dcm"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", ".git/config",
                                  "a/.datalad/config", "a//b", "", "a/./b", "a\\b",
                                  "x/.gitattributes", "a\nb"])
def test_unsafe_file_paths_are_refused(path):
    with pytest.raises(LayoutError):
        check_relative_path(path)
    with pytest.raises(LayoutError):
        PathFormat("{subject}/").render(Rec(path=path))


def test_nested_and_unicode_paths_kept():
    fmt = PathFormat("{subject}/")
    assert fmt.render(Rec(path="sub dir/ä ö+#.nii.gz")).path == "SUBJ01/sub dir/ä ö+#.nii.gz"


def test_collisions_found():
    fmt = PathFormat("{subject}/{session}/{scan}/")
    tracker = CollisionTracker()
    a = fmt.render(Rec(resource="DICOM", path="x.dcm")).path
    b = fmt.render(Rec(resource="SECONDARY", path="x.dcm")).path
    c = fmt.render(Rec(resource="DICOM", path="y.dcm")).path
    fps = [tracker.add(p) for p in (a, b, c)]
    assert tracker.duplicates() == {fps[0]}
    # a file where another file needs a folder
    tracker = CollisionTracker()
    f1 = tracker.add("S/E/1/a")
    tracker.add("S/E/1/a/b")
    assert tracker.duplicates() == {f1}
    with_resource = PathFormat("{subject}/{session}/{scan}/{resource}/")
    assert with_resource.render(Rec(resource="DICOM", path="x.dcm")).path != \
        with_resource.render(Rec(resource="SECONDARY", path="x.dcm")).path


TRICKY_NAMES = [
    "a.nii.gz", "x.tar.gz.md5", "1.3.12.2.1107.5.2-4-92-o3dd3n.dcm", "README", "a.JPEG",
    "my file.nii.gz", "é.tar.gz", "a.é.gz", "a.abcde", "a.abcd", ".hidden", "a.", "a..gz",
    "a.b-c", "a.b_c", "x.1.2.3", "a.Ä", "a.tar.gz ", "a.b c", "a.ééé", "a.ß", "a.€", "a.b..gz",
    ".gz.x", "..gz", "a.~", "a....", "a.ab.abcde.gz", "a.x\u00a0", "sub-01_T1w.json", "a.DCM",
    "snap_qc_t.gif", "1.2.840.113619.2.5.1762583153.215519.978957063.78.dcm", "a b.c d.e",
]


def _calckey(tmp_path, names):
    repo = tmp_path / "repo"
    run(["git", "init", "-q", str(repo)])
    run(["git", "annex", "init", "-q"], cwd=repo)
    for index, name in enumerate(names):
        (repo / str(index)).mkdir()
        (repo / str(index) / name).write_bytes(b"")
    files = [f"{index}/{name}" for index, name in enumerate(names)]
    out = run(["git", "annex", "calckey", "--backend=MD5E", "--batch", "-z"], cwd=repo,
              input="\0".join(files) + "\0").stdout
    return out.splitlines()


def test_md5e_extension_matches_git_annex(tmp_path):
    rng = random.Random(4)
    alphabet = "ab1Z.. -_~é€ßx\u00a0"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    fuzz = [name for name in fuzz if name not in (".", "..")]
    names = TRICKY_NAMES + fuzz
    keys = _calckey(tmp_path, names)
    assert len(keys) == len(names)
    for name, key in zip(names, keys):
        assert md5e_key(0, "d41d8cd98f00b204e9800998ecf8427e", name) == key, name


def test_md5e_key_examples():
    md5 = "D41D8CD98F00B204E9800998ECF8427E"
    assert md5e_key(12, md5, "a.nii.gz") == "MD5E-s12--d41d8cd98f00b204e9800998ecf8427e.nii.gz"
    assert md5e_extension("README") == ""
    assert md5e_extension("x.tar.gz.md5") == ".gz.md5"
    assert md5e_extension("dir/a.JPEG") == ".JPEG"
    assert md5e_extension("a.abcde", max_length=5) == ".abcde"
    assert md5e_extension("a.b.c.d", max_extensions=3) == ".b.c.d"


def test_names_no_file_system_holds_are_refused():
    """A file name over 255 bytes, or one that is not valid UTF-8 (a lone surrogate from the
    server's JSON), is refused by name; a label is rewritten (surrogate) or refused (length)."""
    fmt = PathFormat("{subject}/{session}/{scan}/")
    assert fmt.render(Rec(path="a/" + "é" * 126 + "x.y")).path.endswith("x.y")  # 255 bytes
    with pytest.raises(LayoutError, match="is 256 bytes long.*at most 255"):
        check_relative_path("a/" + "é" * 127 + "xx")
    with pytest.raises(LayoutError, match="not valid UTF-8"):
        check_relative_path("a/bad\udcff.dcm")
    with pytest.raises(LayoutError, match="not valid UTF-8"):
        check_relative_path("lone\ud800")
    assert sanitize_label("S\udcff1") == "S_1"
    with pytest.raises(LayoutError, match="folder name for 'SSSS.*is 300 bytes"):
        fmt.render(Rec(subject_label="S" * 300))


def test_rewritten_labels_are_told_once_with_their_folder():
    fmt = PathFormat("{subject}//{session}/{scan}/")
    for path in ("a.dcm", "b.dcm"):
        fmt.render(Rec(subject_label="../x", path=path))
        fmt.render(Rec(subject_label="../x", session_id="E2", session_label=".hidden",
                       path=path))
    fmt.render(Rec(scan_id="resources"))
    fmt.render(Rec(level="session", scan_id="", resource="a/b"))
    assert sorted(fmt.rewritten()) == sorted([
        ("../x", "_._x"), (".hidden", "_._x/_hidden"),
        ("resources", "SUBJ01/SUBJ01_MR1/resources_"), ("a/b", "SUBJ01/SUBJ01_MR1/resources/a_b")])
    assert PathFormat("{subject}/").rewritten() == []
