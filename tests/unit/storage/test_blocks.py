"""Customer blocks read back from a store or another process: nothing in one is trusted as an
index, and a block that does not hold together is BlockCorrupt, never an IndexError or a row
half loaded."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from kairos.cluster.storage import blocks
from kairos.core.catalog import default_catalog_text, load_catalog
from kairos.core.compiler import CompiledCatalog, compile_catalog
from kairos.core.engine import DecisionEngine
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
    n = blocks.MEANING_BYTES
    other["meanings"] = b"".join(own["meanings"][k * n:k * n + n] for k in slots)
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


def _edited(edit) -> CompiledCatalog:
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "edited"
    edit(doc)
    return compile_catalog(load_catalog(yaml.safe_dump(doc, sort_keys=False)))


def _count_carts(doc) -> None:
    doc["features"]["since_cart"] = {"kind": "count", "event": "add_to_cart"}


def _birth_year_a_timestamp(doc) -> None:
    doc["attributes"]["birth_year"] = {"type": "timestamp"}
    for action in doc["actions"]:  # the one rule that reads it as a number
        if "birth_year" in action.get("eligibility", ""):
            action["eligibility"] = "known(birth_year)"


def _cart_value_by_the_hour(doc) -> None:
    doc["features"]["cart_value"]["half_life"] = "1h"


def _last_price_of_carts(doc) -> None:
    doc["features"]["last_view_price"]["event"] = "add_to_cart"


@pytest.mark.parametrize("edit, changed", [
    (_count_carts, "since_cart"), (_birth_year_a_timestamp, "birth_year"),
    (_cart_value_by_the_hour, "cart_value"), (_last_price_of_carts, "last_view_price")])
def test_a_slot_whose_meaning_changed_under_its_name_starts_from_its_default(compiled, edit,
                                                                           changed):
    """A feature of another kind, event or half-life, or an attribute of another type, keeps
    nothing of the old slot's number (a cart's epoch time is no count of carts); every other
    slot keeps its value."""
    s = shard(compiled)
    s.process([event("ana", "profile_updated", T0, tier="gold", birth_year=1980),
               event("ana", "page_view", T0, category="home", price=20.0),
               event("ana", "add_to_cart", T0 + 1, product_id="tv", category="home",
                     price=499.0)])
    before = s.engine.profile("ana", T0 + 60)
    new = _edited(edit)
    engine = DecisionEngine(new)
    blocks.import_block(engine, blocks.unpack(blocks.pack_one(s.engine, "ana")))
    engine.activate(["nobody"])
    after, fresh = engine.profile("ana", T0 + 60), engine.profile("nobody", T0 + 60)
    for part in ("attributes", "features"):
        for name, value in after[part].items():
            expected = fresh[part][name] if name == changed else before[part][name]
            assert value == expected, name
    assert before["features" if changed != "birth_year" else "attributes"][changed] != \
        fresh["features" if changed != "birth_year" else "attributes"][changed]
    if changed == "last_view_price":  # the time of the last value starts over with it
        helper = new.layout.slot[changed] + 1
        assert np.isnan(engine.table.values[engine.table.index["ana"], helper])


def _widened(doc) -> None:
    doc["attributes"]["loyalty_points"] = {"type": "float", "default": 0}
    doc["attributes"]["tier"]["values"].append("diamond")
    doc["features"]["views_total"] = {"kind": "count", "event": "page_view"}
    doc["features"]["since_late_delivery"]["when"]["status"] = ["lost", "delayed"]  # a set


def test_a_slot_that_means_the_same_keeps_its_value(compiled):
    """An int attribute declared float, a string attribute with one more declared value, a
    `when` filter listing its values in another order, and slots moved by a new feature mean
    what they meant: they keep their values."""
    s = shard(compiled)
    s.process([event("ana", "profile_updated", T0, tier="gold"),
               event("ana", "loyalty_points_changed", T0, balance=1200, expiring=0,
                     expires_at=T0 + 86400),
               event("ana", "delivery_update", T0, order_id="o1", status="delayed")])
    engine = DecisionEngine(_edited(_widened))
    blocks.import_block(engine, blocks.unpack(blocks.pack_one(s.engine, "ana")))
    before, after = s.engine.profile("ana", T0), engine.profile("ana", T0)
    assert after["attributes"] == before["attributes"]
    assert after["attributes"]["loyalty_points"] == 1200.0
    assert after["attributes"]["tier"] == "gold"
    assert after["features"] == dict(before["features"], views_total=0.0)


def test_a_block_written_before_slots_had_meanings_is_matched_by_name(compiled):
    """Homes and snapshots written before blocks named meanings still load: a slot of the same
    name and kind of value (string or not) is taken as it is."""
    s = shard(compiled)
    s.process([event("ana", "add_to_cart", T0, product_id="tv", category="home", price=9.0)])
    block = blocks.export_block(s.engine, ["ana"])
    del block["meanings"]
    engine = DecisionEngine(_edited(_cart_value_by_the_hour))
    blocks.import_block(engine, block)
    assert engine.profile("ana", T0)["features"] == s.engine.profile("ana", T0)["features"]


def test_meanings_that_do_not_fit_the_slots_are_corrupt(compiled):
    block = exported(compiled)
    block["meanings"] = block["meanings"][:-1]
    with pytest.raises(blocks.BlockCorrupt, match="meanings"):
        blocks.import_block(shard(compiled, "t").engine, block)
