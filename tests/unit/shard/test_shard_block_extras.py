"""A shard's blocks (homes, snapshots, handoffs) always carry a map of extras per customer;
none, as in the decision log's blocks, is damage: a home with it refuses its customer alone
(it passed validation, and reading its timers failed the whole round: review rev43
d-durability finding 3), and a snapshot with it is SnapshotCorrupt."""
from __future__ import annotations

from typing import Callable

import pytest

from kairos.cluster.protocol import Unavailable
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.sealed import SnapshotCorrupt, seal, unseal
from tests.unit.shard.test_homes import passivated
from tests.unit.shard.test_shard import T0, Clock, event, p_of, shard
from tests.unit.storage.test_blocks import exported


def test_a_home_with_no_extras_refuses_its_customer_and_the_round_goes_on(compiled, tmp_path):
    s, _ = passivated(compiled, tmp_path, "ana", "bob")
    block = blocks.unpack(unseal(s.store.get(p_of("ana"), "ana"), "home")[0])
    block["extras"] = [None]
    s.store.put(p_of("ana"), "ana", seal(blocks.pack(block)))
    replies, _ = s.process([event("bob", "app_open", T0 + 1), event("ana", "app_open", T0 + 1)])
    assert replies[0].status == "ok"
    assert isinstance(replies[1], Unavailable) and "damaged" in replies[1].reason


def snapshot_of_ana(compiled, root, clock: Clock) -> tuple[dict, int, Callable[[dict], None]]:
    """A shard's snapshot of ana's partition, unpacked; the partition; and what puts a changed
    one back in its place (sealed as the shard seals it)."""
    s = shard(compiled, store=DirectoryStore(root), clock=clock)
    s.recover()
    s.process([event("ana", "app_open", T0)])
    p = p_of("ana")
    s.durability.snapshot([p])
    snap = blocks.unpack(unseal(s.store.get_snapshot(p), "snapshot")[0])
    return snap, p, lambda changed: s.store.put_snapshots({p: seal(blocks.pack(changed))})


def test_a_snapshot_with_no_extras_is_corrupt(compiled, tmp_path):
    clock = Clock()
    snap, _, put = snapshot_of_ana(compiled, tmp_path, clock)
    snap["block"]["extras"] = [None]
    put(snap)
    with pytest.raises(SnapshotCorrupt, match="extras"):
        shard(compiled, store=DirectoryStore(tmp_path), clock=clock).recover()


def test_the_decision_log_s_blocks_may_still_have_none(compiled):
    block = exported(compiled)
    blocks.validate({**block, "extras": [None] * len(block["ids"])})
    with pytest.raises(blocks.BlockCorrupt, match="extras"):
        blocks.validate({**block, "extras": [None] * len(block["ids"])}, shard=True)
