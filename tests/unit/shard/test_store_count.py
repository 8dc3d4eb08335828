"""The store count of a shard (storecount.py, issue 17: idle CPU): an idle shard lists its
store's homes once every STORE_RECOUNT_S, not every STORE_COUNT_S (most of an idle shard's CPU
before), and the count still follows every write and delete of homes the shard makes
(passivations, a tick's among them, a Forget's delete at the snapshot, a partition released)
within STORE_COUNT_S, and one it did not make within STORE_RECOUNT_S."""
from __future__ import annotations

import asyncio
import time

import pytest

from kairos.cluster.shard import shard as shard_module
from kairos.cluster.shard import storecount
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore

from tests.support.waiting import until

from . import test_shard_host as shard_host
from .test_shard import T0, event, forget, p_of

COUNT_S = 0.02


class Counted(DirectoryStore):
    """A directory store that notes each count (each lists every partition's folder), and
    the host's stirs as each one started (`host`: set by the test)."""

    def __init__(self, root):
        super().__init__(root)
        self.counted = 0
        self.host = None
        self.after: list[int] = []  # the stirs as each count started, noted as it ended

    def count(self, partitions):
        self.counted += 1
        stirs = self.host and self.host.stirs
        n = super().count(partitions)
        self.after.append(stirs)
        return n


@pytest.fixture
def often(monkeypatch):
    monkeypatch.setattr(storecount, "STORE_COUNT_S", COUNT_S)


def run(compiled, store, test, **options) -> None:
    shard_host.run(compiled, store, test, tick_s=0.02, **options)


async def listed_since_stir(host, store: Counted, what: str) -> None:
    """Once a listing that started after the host's latest stir has ended: the count loop
    took that stir into account."""
    stirs = host.stirs
    await until(lambda: store.after and store.after[-1] >= stirs, 5.0, what)


def test_an_idle_shards_store_is_listed_once_not_every_count_interval(compiled, tmp_path,
                                                                      often):
    store = Counted(tmp_path)

    async def test(host):
        await until(lambda: store.counted, 5.0, "the first count")
        await asyncio.sleep(50 * COUNT_S)
        assert store.counted == 1  # 50 before: one every STORE_COUNT_S

    run(compiled, store, test)


def test_the_count_follows_the_homes_the_shard_writes_and_deletes(compiled, tmp_path, often,
                                                                  monkeypatch):
    store = Counted(tmp_path)
    customers = [f"c{i}" for i in range(6)]

    async def test(host):
        store.host = host
        await host.handle("a", 0, [event(c, "app_open", time.time()) for c in customers],
                          [0] * len(customers))
        await listed_since_stir(host, store, "a count after the events")
        assert host.shard.stored == 0  # none passivated yet
        # a tick's passivation, past the resident limit: nothing stirs the host
        host.shard.residency.resident_limit = 0
        await until(lambda: host.shard.stored == 6, 5.0, "the passivated homes counted")
        # a Forget's delete waits for its partition's snapshot, which a later tick takes
        await host.handle("a", 1, [forget("c0")], [0])
        await listed_since_stir(host, store, "a count after the forget")
        assert host.shard.stored == 6  # deleted only once a snapshot covers the forget
        monkeypatch.setattr(shard_module, "SNAPSHOT_AFTER_S", 0.0)
        await until(lambda: host.shard.stored == 5, 5.0, "the deleted home counted")
        # a partition released takes its homes away from this shard's count
        p = p_of("c1")
        gone = sum(1 for c in customers[1:] if p_of(c) == p)
        await host.run(Shard.freeze, [p], 1)
        await host.run(Shard.release, [p], 1)
        await until(lambda: host.shard.stored == 5 - gone, 5.0, "the released homes gone")

    run(compiled, store, test)


def test_homes_the_shard_did_not_write_are_counted_at_the_next_recount(compiled, tmp_path,
                                                                        often, monkeypatch):
    monkeypatch.setattr(storecount, "STORE_RECOUNT_S", 0.3)
    store = Counted(tmp_path)

    async def test(host):
        await until(lambda: store.counted, 5.0, "the first count")
        store.put(p_of("restored"), "restored", b"an operator's backup")  # nothing stirs
        await until(lambda: host.shard.stored == 1, 5.0, "the restored home counted")

    run(compiled, store, test)


def test_a_count_that_fails_keeps_the_last_and_is_tried_again_at_the_next_interval(
        compiled, tmp_path, often):
    class Failing(Counted):
        down = False

        def count(self, partitions):
            if self.down:
                raise OSError("the disk went away")
            return super().count(partitions)
    store = Failing(tmp_path)

    async def test(host):
        await host.handle("a", 0, [event("ana", "app_open", T0)], [0])
        await host.run(Shard.passivate, T0 + 10**7)
        await until(lambda: host.shard.stored == 1, 5.0, "the home counted")
        store.down = True
        await host.handle("a", 1, [event("bob", "app_open", T0)], [0])
        await host.run(Shard.passivate, T0 + 10**7)
        await asyncio.sleep(5 * COUNT_S)
        assert host.shard.stored == 1
        store.down = False  # nothing the shard does changes its homes from now on
        await until(lambda: host.shard.stored == 2, 5.0, "bob's home counted")

    run(compiled, store, test)
