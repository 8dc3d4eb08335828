"""A bench terminated while its Ray runs, or while Ray's nodes start, unwinds with the run's
own handler: each node started and ray.init put Ray's in its place (exit status 1, 15), and
bench.systems.ray_nodes sets the run's again after each. Ray's files go under the test
session's RAY_TMPDIR, which the child inherits."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, sys, time
from bench.lifetime import exit_on_sigterm
from bench import systems
exit_on_sigterm()
if sys.argv[1] == 'starting':  # terminated after the head node started, before ray.init
    wait = systems.Cluster.wait_for_nodes
    def terminated(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return wait(self, *args, **kwargs)
    systems.Cluster.wait_for_nodes = terminated
try:
    with systems.ray_nodes(1):
        print('ready', flush=True)
        time.sleep(120)
finally:
    print('cleaned up', flush=True)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["running", "starting"])
def test_sigterm_with_ray_running_or_starting_unwinds_with_143(when):
    with subprocess.Popen([sys.executable, "-c", CHILD, when], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            if when == "running":
                assert proc.stdout.readline() == "ready\n"
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 143
            assert proc.stdout.read() == "cleaned up\n"
        finally:
            if proc.poll() is None:
                proc.kill()
