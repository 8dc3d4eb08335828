"""A Ray the test session or the bench starts writes nothing into the user's ~/.ray: a local
ray.init() with RAY_AUTH_MODE unset writes a token there readable by others (Ray 2.60), which
a later `kairos up` refuses (cluster/raytuning.py `own_token`)."""
from __future__ import annotations

import os
import subprocess
import sys

STARTS_RAY = """import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
ray.shutdown()
"""


def test_a_ray_the_session_starts_leaves_the_users_home_alone(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}  # the session's environment, a home to watch
    subprocess.run([sys.executable, "-c", STARTS_RAY], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert not (tmp_path / ".ray").exists()
