"""Download helper processes (xnat_init.update.helpers): when they are used, and that the secret
never shows in their command line or environment. End to end: test_xnat_commands.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xnat_init.update.helpers import MIN_FILES_FOR_PROCESSES, _Helper, helper_processes


def test_helper_processes_count():
    cpus = os.cpu_count() or 1
    assert helper_processes(8, MIN_FILES_FOR_PROCESSES - 1, None) == 1  # too few to be worth it
    assert helper_processes(8, 10_000, None) == min(cpus, 2)
    assert helper_processes(4, 10_000, None) == 1
    assert helper_processes(64, 10_000, None) == min(cpus, 16)
    assert helper_processes(8, 3, "3") == 3  # the setting decides, also for few files
    assert helper_processes(8, 10_000, "0") == 1
    with pytest.raises(ValueError, match="fetch-processes"):
        helper_processes(8, 10_000, "many")


def test_secret_goes_through_the_pipe(tmp_path):
    secret = "s3cret-for-the-helper"
    helper = _Helper({"url": "http://127.0.0.1:9", "repo": str(tmp_path), "threads": 1,
                      "credential": {"name": "n", "user": "u", "password": secret,
                                     "source": "env"}})
    try:
        proc = Path("/proc") / str(helper.proc.pid)
        assert secret.encode() not in (proc / "cmdline").read_bytes()
        assert secret.encode() not in (proc / "environ").read_bytes()
    finally:
        helper.close_input()
        helper.proc.wait(timeout=30)
