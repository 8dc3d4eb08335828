"""Customer blocks read back from a store or another process: nothing in one is trusted as an
index, and a block that does not hold together is BlockCorrupt, never an IndexError or a row
half loaded."""
from __future__ import annotations

import numpy as np
import pytest

from kairos.cluster.storage import blocks
from tests.unit.shard.test_shard import T0, decide, event, shard


def exported(compiled, ids=("ana", "bob")) -> dict:
    s = shard(compiled)
    s.process([event(c, "app_open", T0) for c in ids])
    return blocks.unpack(blocks.pack(s.residency.export(list(ids))))


@pytest.mark.parametrize("damage, message", [
    (lambda b, size: b["ring_head"].__setitem__(0, size), "ring_head outside 0"),
    (lambda b, size: b["ring_head"].__setitem__(1, -1), "ring_head outside 0"),
    (lambda b, size: b["ring_action"].__setitem__((0, 0), len(b["actions"])),
     "ring_action codes outside"),
    (lambda b, size: b.__setitem__("ring_time", b["ring_time"][:, :-1]), "ring_time of shape"),
    (lambda b, size: b.__setitem__("lsn", b["lsn"][:1]), "1 lsn entries for 2 customers"),
    (lambda b, size: b.__setitem__("values", b["values"][:, :-1]), "values of shape"),
])
def test_a_block_with_an_index_out_of_range_is_corrupt_and_loads_nothing(compiled, damage,
                                                                         message):
    block = exported(compiled)
    damage(block, compiled.history_size)
    target = shard(compiled, "t")
    with pytest.raises(blocks.BlockCorrupt, match=message):
        blocks.import_block(target.engine, block)
    assert len(target.engine.table) == 0


def test_a_string_code_past_the_blocks_strings_is_corrupt(compiled):
    block = exported(compiled)
    column = int(np.flatnonzero(block["string_columns"])[0])
    block["values"][0, column] = len(block["strings"]) + 3
    with pytest.raises(blocks.BlockCorrupt, match="string codes outside"):
        blocks.import_block(shard(compiled, "t").engine, block)


def test_bytes_that_are_no_block_are_corrupt(compiled):
    data = blocks.pack(exported(compiled))
    with pytest.raises(blocks.BlockCorrupt, match="undecodable block data"):
        blocks.unpack(data[: len(data) // 2])
    with pytest.raises(blocks.BlockCorrupt, match="a customer block is a map"):
        blocks.validate([1, 2])
    assert issubclass(blocks.BlockCorrupt, ValueError)


def test_a_sound_block_still_loads(compiled):
    block = exported(compiled)
    blocks.validate(block)
    assert blocks.import_block(shard(compiled, "t").engine, block) == ["ana", "bob"]


def test_one_customer_packs_the_same_by_either_way(compiled):
    """pack_one (the decision log's) and pack(export_block) unpack to the same block; a block
    of several customers numbers their strings the same way as one of each."""
    s = shard(compiled)
    s.process([event("ana", "page_view", T0, category="home"),
               event("ana", "add_to_cart", T0 + 1, product_id="tv", price=499.0),
               event("bob", "page_view", T0, category="sports")])
    for customer in ("ana", "bob"):
        one = blocks.unpack(blocks.pack_one(s.engine, customer))
        slow = blocks.unpack(blocks.pack(blocks.export_block(s.engine, [customer])))
        assert one.keys() == slow.keys()
        for key, value in one.items():
            assert np.array_equal(value, slow[key], equal_nan=True) \
                if isinstance(value, np.ndarray) else value == slow[key], key
        loaded = shard(compiled, "t").engine
        assert blocks.import_block(loaded, one) == [customer]
        np.testing.assert_array_equal(loaded.table.values[loaded.table.index[customer]],
                                      s.engine.table.values[s.engine.table.index[customer]])
    both = blocks.export_block(s.engine, ["ana", "bob"])
    loaded = shard(compiled, "t").engine
    blocks.import_block(loaded, blocks.unpack(blocks.pack(both)))
    for customer in ("ana", "bob"):
        np.testing.assert_array_equal(loaded.table.values[loaded.table.index[customer]],
                                      s.engine.table.values[s.engine.table.index[customer]])


def test_a_block_in_another_order_loads_as_one_in_the_catalogs_own(compiled):
    """A block of this catalog's layout loads column by column as it is; one whose slots,
    actions and channels come in another order (as another catalog version's may) is matched
    by name: both give the same rows."""
    s = shard(compiled)
    s.process([event("ana", "page_view", T0, category="home"),
               event("ana", "add_to_cart", T0 + 1, product_id="tv", category="home",
                     price=499.0)])
    s.process([decide("ana", record_impression=True), decide("ana", "app", "home", now=T0 + 2,
                                                             record_impression=True)])
    own = blocks.unpack(blocks.pack_one(s.engine, "ana"))
    assert (own["ring_action"] != -1).any()  # a history to map
    other = dict(own)
    slots = np.arange(len(own["slots"]))[::-1]
    other["slots"] = [own["slots"][k] for k in slots]
    other["string_columns"] = [own["string_columns"][k] for k in slots]
    other["values"] = own["values"][:, slots]
    other["actions"], other["channels"] = own["actions"][::-1], own["channels"][::-1]
    known = own["ring_action"] != -1
    other["ring_action"] = np.where(known, len(own["actions"]) - 1 - own["ring_action"], -1)
    other["ring_channel"] = np.where(known, len(own["channels"]) - 1 - own["ring_channel"], 0)
    rows = []
    for block in (own, other):
        engine = shard(compiled, "t").engine
        blocks.import_block(engine, block)
        rows.append(engine.table.export("ana"))
    assert rows[0].equals(rows[1]) and rows[0].equals(s.engine.table.export("ana"))
