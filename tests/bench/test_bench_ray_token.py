"""The bench's Ray runs with a token of its own however the bench is started: with no
RAY_AUTH_* set, a driver that imported Ray before the token was set sent none to the Ray it
started (Unauthenticated), and a plain local Ray writes ~/.ray/auth_token readable by others
(bench/__init__.py, cluster/raytuning.py `own_token`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from bench.systems import ROOT

RUNS_A_TASK = """import ray
from bench.systems import ray_nodes
with ray_nodes(1):
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
"""


def test_the_bench_started_bare_runs_its_ray_with_a_token_of_its_own(tmp_path):
    ray_files = tempfile.mkdtemp(prefix="kr-")  # short: Ray's sockets live under it
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_files)
    ran = subprocess.run([sys.executable, "-c", RUNS_A_TASK], cwd=ROOT, env=env, timeout=180,
                         capture_output=True, text=True)
    shutil.rmtree(ray_files, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert not (tmp_path / ".ray").exists()


KEEPS_CONFIG = """import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
         _system_config={"metrics_report_interval_ms": 2000})

@ray.remote
def reads():
    before = ray._config.metrics_report_interval_ms()
    import bench  # as a worker unpickling a bench peer does
    return before, ray._config.metrics_report_interval_ms()
assert ray.get(reads.remote()) == (2000, 2000)
"""


def test_a_ray_worker_importing_the_bench_keeps_its_clusters_config(tmp_path):
    """A process connected to a Ray has its mode already: the bench's token set-up must not
    read Ray's config again there, which would drop the cluster's _system_config (review
    rev-mine M1)."""
    ray_files = tempfile.mkdtemp(prefix="kr-")
    env = {**os.environ, "HOME": str(tmp_path), "RAY_TMPDIR": ray_files, "PYTHONPATH": str(ROOT)}
    ran = subprocess.run([sys.executable, "-c", KEEPS_CONFIG], cwd=ROOT, env=env, timeout=180,
                         capture_output=True, text=True)
    shutil.rmtree(ray_files, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
