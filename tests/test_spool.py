"""LineSpool: per-dataset spools of xnat-update that hold no file descriptor while they grow."""

from __future__ import annotations

import os
import resource

import pytest

from xnat_init.update import spool
from xnat_init.update.spool import LineSpool


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def few_descriptors():
    """A soft limit of 40 descriptors above what is open now, restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_descriptors() + 40, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousands_of_spools_within_a_small_descriptor_limit(few_descriptors, monkeypatch):
    """A subdataset per subject means thousands of spools at once; an open file each ran out
    of descriptors ("Too many open files") at about 13 subdatasets under a limit of 40."""
    monkeypatch.setattr(spool, "PENDING_LINES", 500)
    before = open_descriptors()
    spools = [LineSpool("xnat-test-") for _ in range(1500)]
    try:
        for round_ in range(3):
            for n, one in enumerate(spools):
                one.write(f"{n}\t{round_}\tü\n")
                assert LineSpool._pending_total < 500
        assert open_descriptors() == before
        for n in (0, 777, 1499):
            assert list(spools[n]) == [f"{n}\t{r}\tü\n" for r in range(3)]
            assert spools[n].count == 3
    finally:
        for one in spools:
            one.close()
    assert not any(os.path.exists(one.path) for one in spools)
    assert LineSpool._pending_total == 0 and not LineSpool._dirty


def test_lines_read_back_in_order_after_partial_flushes(monkeypatch):
    monkeypatch.setattr(spool, "PENDING_LINES", 7)
    first, second = LineSpool("xnat-test-"), LineSpool("xnat-test-")
    try:
        for i in range(50):
            (first if i % 3 else second).write(f"line {i}\n")
        assert [line for line in first] == [f"line {i}\n" for i in range(50) if i % 3]
        first.write("late\n")
        assert list(first)[-1] == "late\n"
        assert list(second) == [f"line {i}\n" for i in range(0, 50, 3)]
    finally:
        first.close()
        second.close()


def test_update_plans_hold_no_descriptor_per_dataset(few_descriptors, tmp_path):
    """xnat-update's per-dataset plans (changes, keys, wanted content) for 300 subdatasets."""
    from xnat_init.update.spool import Entry, EntrySpool

    plans = [EntrySpool() for _ in range(300)]
    key = "MD5E-s3--" + "0" * 32 + ".dcm"
    try:
        for n, plan in enumerate(plans):
            plan.add(Entry(f"a/{n}.dcm", key, f"xnat:u{n}"), register=True, want=True)
        last = plans[-1]
        assert [c.path for c in last.registrations()] == ["a/299.dcm"]
        assert [w.url for w in last.wanted_entries()] == ["xnat:u299"]
        assert list(last.sorted_keys()) == [(key, "xnat:u299")]
    finally:
        for plan in plans:
            plan.close()
