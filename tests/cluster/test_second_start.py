"""A second `kairos start` on a Ray cluster where Kairos already runs says so, and leaves the
running Kairos as it was (Ray's own error named an actor, kairos-learner, and told nothing of
what to do)."""
from __future__ import annotations

import os

from kairos.cluster.cli import local
from kairos.cluster.settings import NAMESPACE

from tests.cluster.test_kairos_up import kairos


def test_a_second_start_says_kairos_already_runs_and_leaves_it_serving(ray_cluster, tmp_path):
    import ray

    from kairos.cluster.control import runtime

    cluster = ray_cluster()
    env = {**os.environ, local.HOME_ENV: str(tmp_path / "home")}
    start = ["start", "--address", cluster.address, "--host", local.LOOPBACK, "--shards", "1",
             "--store", "memory", "--port", "0"]

    def actors() -> list[str]:
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["namespace"] == NAMESPACE)
    try:
        first = kairos(*start, env=env)
        assert first.returncode == 0, first.stderr
        running = actors()
        second = kairos(*start, env=env)
        assert second.returncode == 1, second.stdout
        assert (f"error: Kairos did not start on the Ray cluster at {cluster.address}: Kairos "
                f"already runs on this Ray cluster (namespace {NAMESPACE}): stop it first "
                f"(`kairos down`") in second.stderr, second.stderr
        assert "is already taken" not in second.stderr  # Ray's words, not Kairos's
        assert actors() == running
        target = first.stdout.split("gRPC on ")[1].split(";")[0]
        status = kairos("--target", target, "status", env=env, timeout_s=60)
        assert status.returncode == 0 and "kairos-shard-0000" in status.stdout, status.stderr
    finally:
        runtime.stop()
