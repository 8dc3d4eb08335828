"""A test's Ray node start, tried again when it times out (tests/support/ray_nodes.py): a
joining node's raylet, or a head's GCS, late on a busy machine."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.ray_nodes import started


@pytest.mark.parametrize("timed_out", [
    Exception("The current node timed out during startup. This could happen ..."),
    RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_0123"),
])
def test_a_timed_out_start_is_tried_again_after_what_it_spawned_is_killed(timed_out):
    spawned = []

    def start() -> str:
        spawned.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        if len(spawned) == 1:
            raise timed_out
        return "node"

    try:
        assert started(start) == "node"
        assert spawned[0].wait(timeout=10) != 0  # killed
        assert spawned[1].poll() is None
    finally:
        for process in spawned:
            process.kill()
            process.wait()


def test_other_failures_and_a_second_time_out_are_raised():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("no such binary")

    with pytest.raises(RuntimeError, match="no such binary"):
        started(broken)
    assert len(calls) == 1

    def slow() -> None:
        calls.append(1)
        raise Exception("The current node timed out during startup.")

    with pytest.raises(Exception, match="timed out during startup"):
        started(slow)
    assert len(calls) == 3
