"""`kairos down` stops the shards of a controller that cannot list them (gone, or refusing
calls once it lost its store: a shard it created as it stood down may outlive it) by their
names, as it stops the gateways."""
from __future__ import annotations

from kairos.cluster.control.controller import SHARD_PREFIX
from kairos.cluster.settings import CONTROLLER_NAME, NAMESPACE


def test_stop_finds_the_shards_by_name_when_the_controller_cannot_list_them(ray_cluster,
                                                                            tmp_path):
    import ray

    from kairos.cluster.control import runtime

    ray_cluster()

    def shards() -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE and a["name"].startswith(SHARD_PREFIX)]
    try:
        runtime.start(n_shards=2, store=str(tmp_path))
        assert len(shards()) == 2
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
        runtime.stop()
        assert shards() == []
    finally:
        runtime.stop()
