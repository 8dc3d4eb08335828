"""The cluster tier may start Ray, through the one fixture that starts it (tests/conftest.py);
the unit tier's guard is tested in tests/unit/test_isolation.py."""
from __future__ import annotations

import psutil

from tests.support.listeners import LOOPBACK, listening


def test_a_cluster_tier_test_may_start_ray_on_loopback_only(ray_cluster):
    import ray
    ray_cluster(nodes=1)
    assert ray.is_initialized()
    assert ray.get(ray.put(41)) + 1 == 42
    # servers in tests bind 127.0.0.1 only: the GCS, the raylet, the agents and the workers
    procs = psutil.Process().children(recursive=True)
    assert {"gcs_server", "raylet"} <= {p.name() for p in procs}
    assert listening(procs) <= LOOPBACK
