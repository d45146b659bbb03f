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


def test_the_cli_refuses_a_held_folder_in_one_line_before_starting_a_server(tmp_path):
    cli = [sys.executable, "-c", "from pipeline.cli import main; main()"]
    subprocess.run([*cli, "simulate", str(tmp_path), "--photos", "3", "--users", "2", "--annotators", "2",
                    "--size", "320x240"], capture_output=True, check=True)
    out = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = subprocess.run([*cli, "build", "--config", str(tmp_path / "config.toml"), "--out", str(out)],
                             capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 1
    assert run.stderr.strip() == (f"crowdseg: error: {out}: another build is running on this output folder "
                                  f"(pid {holder.pid}); wait for it to end")
