"""A Ray the test session or the bench starts writes nothing into the user's ~/.ray: a local
ray.init() with RAY_AUTH_MODE unset writes a token there readable by others (Ray 2.60), which
a later `kairos up` refuses (cluster/raytuning.py `own_token`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

STARTS_RAY = """import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
ray.shutdown()
"""


def test_a_ray_the_session_starts_leaves_the_users_home_alone(tmp_path):
    # the session's environment, a home to watch, and Ray's files apart from the session's
    # (a short path: Ray's sockets live under it)
    ray_files = tempfile.mkdtemp(prefix="kr-")
    env = {**os.environ, "HOME": str(tmp_path), "RAY_TMPDIR": ray_files}
    # a Ray of its own ("local"), not the session's cluster this worker may have started
    started = subprocess.run([sys.executable, "-c", STARTS_RAY], env=env, timeout=120,
                             capture_output=True, text=True)
    shutil.rmtree(ray_files, ignore_errors=True)
    assert started.returncode == 0, started.stderr[-2000:]
    assert not (tmp_path / ".ray").exists()
