"""The cluster tier may start Ray, through the one fixture that starts it (tests/conftest.py);
the unit tier's guard is tested in tests/unit/test_isolation.py."""
from __future__ import annotations


def test_a_cluster_tier_test_may_start_ray(ray_cluster):
    import ray
    ray_cluster(nodes=1)
    assert ray.is_initialized()
    assert ray.get(ray.put(41)) + 1 == 42
