"""Ctrl-C (SIGINT to the process group) or a scheduler's SIGTERM to ``train-members --jobs``:
the members in training stop, nothing is left running, and the command says so in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _workers(pid: int) -> list[int]:
    """The member processes of ``pid`` (its spawned children, not the resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:  # fields[1]: the parent pid
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc for the worker processes")
@pytest.mark.parametrize("signum, group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_interrupted_members_stop_and_leave_nothing(tmp_path, signum, group):
    args = [sys.executable, "-m", "slimfuse", "train-members", "--model", "resnet1d",
            "--data", "mnist1d", "--n", "3", "--jobs", "2", "--epochs", "100", "--quiet",
            "--out", str(tmp_path / "m")]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        _interrupt_and_check(proc, signum, group, tmp_path)
    finally:  # nothing outlives the test, whatever it found
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _interrupt_and_check(proc: subprocess.Popen, signum: int, group: bool, tmp_path: Path) -> None:
    deadline = time.time() + 120
    while len(_workers(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _workers(proc.pid)
    time.sleep(5)  # the members are importing or training: either way they must stop
    assert proc.poll() is None, proc.communicate()
    sent = time.time()
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    name = signal.Signals(signum).name
    assert lines == [f"slimfuse train-members: error: interrupted by {name}"], err
    assert time.time() - sent < 20  # within a training step or two, not a whole member
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    assert not (tmp_path / "m").exists()
