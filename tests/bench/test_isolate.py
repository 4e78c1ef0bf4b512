"""bench.isolate: the spawned worker of a killed danet-bench does not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.isolate import run_isolated

PARENT = """
import os, sys
from bench.isolate import spawn_pool
pool = spawn_pool()
print(pool.submit(os.getpid).result(), flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_worker_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    try:
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)  # no chance to shut its pool down
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        parent.kill()
        if _alive(worker):  # the test failed: do not leave it behind
            os.kill(worker, signal.SIGKILL)


def test_run_isolated_returns_the_result_and_a_peak() -> None:
    result, peak = run_isolated(sum, [1, 2, 3])
    assert result == 6 and peak > 10 * 2**20
