"""The build lock: a second build on the same output folder stops with a clear message; a dead holder frees it."""

import subprocess
import sys
import time

import pytest

from pipeline.errors import CrowdsegError
from pipeline.run import build_lock

HOLD = "import sys, time; from pathlib import Path; from pipeline.run import build_lock\n" \
       "with build_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n"


def test_a_second_build_on_the_same_folder_is_refused_until_the_first_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CrowdsegError) as e, build_lock(tmp_path):
            pass
        assert f"pid {holder.pid}" in e.value.reason and e.value.file == str(tmp_path)
    finally:
        holder.kill()  # as kill -9 would: the kernel drops the lock with the process
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with build_lock(tmp_path):
                break
        except CrowdsegError:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)


def test_builds_in_sequence_each_take_and_release_the_lock(tmp_path):
    for _ in range(2):
        with build_lock(tmp_path / "out"):
            assert (tmp_path / "out" / ".crowdseg.lock").read_text().startswith("pid ")
    assert (tmp_path / "out" / ".crowdseg.lock").read_text() == ""
