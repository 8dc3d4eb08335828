"""Shards that Ray restarts: a shard's health by name, and waiting for a new incarnation."""
from __future__ import annotations

import ray

from tests.support.waiting import wait_until

RESTART_POLL_S = 0.2  # each poll asks the actor; it may be down, so don't hammer Ray


def shard_health(name: str) -> dict:
    return ray.get(ray.get_actor(name, namespace="kairos").health.remote(), timeout=30)


def wait_restarted(name: str, before: str, timeout_s: float = 60.0) -> None:
    """Until the shard `name` answers as a started incarnation other than `before` (while it
    is down, asking it raises: that counts as not yet)."""
    def restarted() -> bool:
        health = shard_health(name)
        return health["incarnation"] != before and health["started"]

    wait_until(restarted, timeout_s, f"{name} restarted (a new incarnation, started)",
               poll_s=RESTART_POLL_S)
