"""The bench's Kairos systems are snapshotted right after their bulk load
(bench.systems.populate_and_snapshot, as bench.load and populated_kairos load them), so no
partition the load dirtied is left for the background checkpoint to write inside a measured
step."""
from __future__ import annotations

import ray

from bench.systems import populate, populate_and_snapshot, shard_actors
from kairos.cluster.control import runtime

CUSTOMERS = 300
# the background checkpoint out of the way: whatever is snapshotted, the bench asked for
TUNING = {"KAIROS_SNAPSHOT_AFTER_S": "3600"}


def dirty_partitions() -> int:
    return sum(s["dirty_partitions"] for s in ray.get([a.stats.remote() for a in
                                                       shard_actors()]))


def test_the_bulk_load_leaves_no_partition_to_snapshot(ray_cluster, tmp_path):
    ray_cluster(nodes=1, env=TUNING, cpus_per_node=2)
    runtime.start(n_shards=2, n_partitions=16, store=str(tmp_path / "store"))
    try:
        populate(CUSTOMERS // 2, lambda n: None)
        assert dirty_partitions() > 0  # what a load leaves, unless snapshotted
        loaded = populate_and_snapshot(CUSTOMERS, lambda n: None)
        assert loaded["events"] == CUSTOMERS and loaded["snapshot_s"] >= 0
        assert dirty_partitions() == 0
    finally:
        runtime.stop()
