"""pauses.py: survivors leave the collector's sight; garbage is still collected first."""
from __future__ import annotations

import gc
import weakref

import pytest

from kairos.cluster import pauses


@pytest.fixture(autouse=True)
def unfrozen():
    yield
    gc.unfreeze()


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it


def test_settle_collects_cycles_then_freezes_the_survivors():
    kept = [["customer", i] for i in range(1000)]
    dropped = Node()
    del dropped
    pauses.settle()
    assert not any(isinstance(o, Node) for o in gc.get_objects())
    assert gc.get_freeze_count() >= len(kept)
    assert not any(o is kept[0] for o in gc.get_objects(generation=2))


def test_keep_short_freezes_once_the_oldest_generation_grows(monkeypatch):
    pauses.settle()
    monkeypatch.setattr(pauses, "OLDEST_FREEZE_AT", 500)
    assert not pauses.keep_short()
    aged = [["customer", i] for i in range(2000)]
    gc.collect()  # they age into the oldest generation
    frozen = gc.get_freeze_count()
    assert pauses.keep_short()
    assert gc.get_freeze_count() >= frozen + len(aged)
    assert len(gc.get_objects(generation=2)) < 500


def test_keep_short_settles_now_and_then_so_cycles_that_died_frozen_are_freed(monkeypatch):
    node = Node()
    alive = weakref.ref(node)
    pauses.settle()  # frozen while in use
    del node  # now cyclic garbage, but frozen: no pass sees it
    gc.collect()
    assert alive() is not None
    monkeypatch.setattr(pauses, "SETTLE_EVERY_S", 0.0)
    assert pauses.keep_short()
    assert alive() is None


def test_tracked_collections_are_counted_per_generation_and_the_long_ones_kept(monkeypatch):
    pauses.track()
    pauses.track()  # once per process, however often asked
    assert gc.callbacks.count(pauses._timed) == 1
    before = pauses.observed()
    monkeypatch.setattr(pauses, "LONG_MS", 0.0)  # every collection counts as long
    gc.collect()
    after = pauses.observed()
    assert after["collections"][2] == before["collections"][2] + 1
    assert after["seconds"][2] > before["seconds"][2]
    when, generation, ms = after["long"][-1]
    assert generation == 2 and ms >= 0.0 and when > 0
