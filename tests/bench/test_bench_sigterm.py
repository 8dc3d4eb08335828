"""A bench terminated while its Ray runs unwinds with the run's own handler: ray.init puts
Ray's in its place (exit status 15), and bench.systems.ray_nodes sets the run's again. Ray's
files go under the test session's RAY_TMPDIR, which the child inherits."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
from bench.lifetime import exit_on_sigterm
from bench.systems import ray_nodes
import time
exit_on_sigterm()
try:
    with ray_nodes(1):
        print('ready', flush=True)
        time.sleep(120)
finally:
    print('cleaned up', flush=True)
"""


@pytest.mark.timeout(180)
def test_sigterm_with_ray_running_unwinds_with_143():
    with subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 143
            assert proc.stdout.read() == "cleaned up\n"
        finally:
            if proc.poll() is None:
                proc.kill()
