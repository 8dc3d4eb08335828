"""Passivation stores: the same contract in memory and in a directory; the directory's
customers outlive the shard that wrote them."""
from __future__ import annotations

import pytest

from kairos.cluster.partitions import partition_of
from kairos.cluster.store import DirectoryStore, MemoryStore
from kairos.core.catalog import load_default_catalog
from kairos.core.compiler import compile_catalog

from .test_shard import N_PARTITIONS, T0, Clock, journey, profile, shard


@pytest.fixture(scope="module")
def compiled():
    return compile_catalog(load_default_catalog())


@pytest.fixture(params=["memory", "directory"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else DirectoryStore(tmp_path)


def test_the_store_contract(store):
    store.put(3, "ana", b"a1")
    store.put(3, "ana", b"a2")  # a later passivation replaces the blob
    store.put(3, "bob", b"b")
    store.put(4, "eve", b"e")
    assert store.count() == 3
    assert store.take(3, "ana") == b"a2" and store.take(3, "ana") is None
    assert store.take_partition(3) == {"bob": b"b"} and store.take_partition(3) == {}
    assert store.count() == 1 and store.take(4, "eve") == b"e" and store.count() == 0


def test_a_directory_store_outlives_its_process_and_ignores_half_writes(tmp_path):
    DirectoryStore(tmp_path).put(7, "ana", b"blob")
    (tmp_path / "p7" / "deadbeef.tmp").write_bytes(b"half")  # a crash before the rename
    again = DirectoryStore(tmp_path)
    assert again.count() == 1 and again.take(7, "ana") == b"blob"
    assert not list(tmp_path.glob("p7/*.tmp"))


def test_passivated_customers_come_back_bit_identical_after_a_restart(compiled, tmp_path):
    clock = Clock()
    first = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=10**7)
    customers = [f"c{i}" for i in range(20)]
    for i, c in enumerate(customers):
        first.process(journey(c, 30, seed=i))
    clock.now += 10**6
    first.tick()  # due timers fire (a customer waiting for one is never passivated)
    before = {c: first.process([profile(c, T0 + 7200)])[0][0] for c in customers}
    rows = {c: first.engine.table.export(c) for c in customers}
    first.idle_s = 0
    assert first.passivate(clock.now) == len(customers)
    # a new shard process on the same directory (the old one is gone)
    second = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    for c in customers:
        assert second.process([profile(c, T0 + 7200)])[0][0] == before[c]
        assert second.engine.table.export(c).equals(rows[c])
    assert second.store.count() == 0
    assert partition_of("c0", N_PARTITIONS) in second.owned
