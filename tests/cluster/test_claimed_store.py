"""A start on a store another cluster holds writes nothing there, the learner included: the
controller claims the store before the learner is created, which writes to the store as it
starts (a saved posterior it cannot read is kept aside under DAMAGED_KEY)."""
from __future__ import annotations

import pytest

from kairos.cluster.control.learner import DAMAGED_KEY, STATE_KEY
from kairos.cluster.settings import NAMESPACE
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import StoreInUse

DAMAGED = b"\x92\x01"  # a saved posterior that does not unpack


def test_a_start_refused_its_store_leaves_the_store_as_it_was(ray_cluster, tmp_path):
    import ray

    from kairos.cluster.control import runtime

    ray_cluster()
    store = DirectoryStore(tmp_path)
    store.put_meta(STATE_KEY, DAMAGED)
    store.claim("other", "the other cluster's controller")  # this process: its controller's
    try:
        with pytest.raises(StoreInUse, match="its controller: the other cluster's controller"):
            runtime.start(n_shards=1, store=str(tmp_path))
        assert store.get_meta(DAMAGED_KEY) is None
        assert [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE] == []
        store.release("other")  # it stopped: the store is this cluster's to start on
        runtime.start(n_shards=1, store=str(tmp_path))
        assert store.get_meta(DAMAGED_KEY) == DAMAGED
    finally:
        runtime.stop()
