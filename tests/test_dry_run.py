"""xnat-update --dry-run: the whole plan, counted per dataset, with nothing written.

Against the emulator with real DataLad and git-annex: HEAD, the git-annex branch, the work tree
and `.git`'s refs are compared byte for byte before and after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run
from tests.test_xnat_commands import alice, datalad, ds, init, results, update  # noqa: F401


def snapshot(top: Path) -> tuple:
    """What a dry run must leave as it was: every ref, the index, the work tree (with the
    subdatasets' own), and the list of the top's datasets."""
    refs = run(["git", "for-each-ref", "--format=%(refname) %(objectname)"], cwd=top).stdout
    status = run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                 cwd=top).stdout
    index = (top / ".git" / "index").read_bytes() if (top / ".git" / "index").exists() else b""
    files = sorted(str(p.relative_to(top)) for p in top.rglob("*")
                   if ".git" not in p.relative_to(top).parts)
    subs = run(["git", "submodule", "foreach", "--quiet", "--recursive",
                "echo $displaypath $(git rev-parse HEAD git-annex)"], cwd=top, check=False).stdout
    return refs, status, index, files, subs


def dry_run(ds: Path, *args: str) -> tuple[dict, list[dict]]:
    records = results("xnat-update", "--dry-run", *args, cwd=ds)
    summaries = [r for r in records if r.get("type") == "dataset" and "added" in r]
    assert len(summaries) == 1, records
    return summaries[0], records


@pytest.mark.parametrize("pathfmt", ["{subject}/{session}/{scan}/", "{subject}//{session}/{scan}/"])
def test_a_dry_run_counts_everything_and_writes_nothing(pathfmt, xnat, alice, ds):
    init(ds, xnat.url, "-p", "PUBLIC1", "-F", pathfmt)
    before = snapshot(ds)
    first, records = dry_run(ds)
    assert snapshot(ds) == before
    listed = [f for f in xnat.iter_files("PUBLIC1")]
    assert first["added"] == len(listed) and first["gone"] == 0, first
    assert first["bytes_added"] == sum(f.size for f in listed)
    assert 0 < first["would_fetch"] <= len(listed), first
    assert first["bytes_to_fetch"] > 0 and first["commits"] == 0
    assert "would" in first["message"], first["message"]
    per_dataset = [r for r in records if r.get("type") == "dataset" and "added" not in r
                   and r.get("action") == "xnat_update"]
    if "//" in pathfmt:  # one record per subdataset that would be made
        assert len(per_dataset) >= 2, records

    # after a real update, a dry run sees a change and a deletion without making them
    assert update(ds, "--reckless", "fast")["added"] == len(listed)
    session = next(f for f in listed if f.level == "scan")
    xnat.delete_session(session.session_id)
    before = snapshot(ds)
    second, records = dry_run(ds, "--remove-gone")
    assert snapshot(ds) == before
    assert second["gone"] > 0 and second["added"] == 0, second
    gone = [r for r in records if r.get("type") == "file" and "gone" in r.get("message", "")]
    assert gone and all("would be removed" in r["message"] for r in gone), gone
    # and the real run does what the dry run said
    real = update(ds, "--reckless", "fast", "--remove-gone")
    assert (real["gone"], real["removed"]) == (second["gone"], second["gone"])
