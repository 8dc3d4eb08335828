"""A customer block's columns as the types the profile table holds (issue 18): integers where
the table's columns are integers, numbers as values, text as names, outcome codes the Outcome
enum knows. Whatever a block read back from a store or a peer holds, `validate` answers
BlockCorrupt or lets it load: a float ring head (NaN, cast to -2**31 as an int32) would be an
index the kernel writes unchecked, and any other exception fails a shard's whole round."""
from __future__ import annotations

import numpy as np
import pytest

from kairos.cluster.storage import block_checks, blocks
from kairos.core.compiler import Outcome, default_compiled
from kairos.core.state import ProfileTable
from tests.unit.shard.test_shard import shard
from tests.unit.storage.test_blocks import exported

INTEGERS = ("ring_action", "ring_channel", "ring_outcome", "ring_time", "ring_head", "applied",
            "lsn")  # the table's integer columns


def with_history(compiled) -> dict:
    """Two customers' block whose first customer's ring holds an impression and an accept."""
    block = exported(compiled)
    block["ring_action"][0, :2] = 0
    block["ring_channel"][0, :2] = 0
    block["ring_outcome"][0, :2] = (Outcome.IMPRESSION, Outcome.ACCEPT)
    block["ring_head"][0] = 2
    return block


def set_item(name, at, value):
    return lambda b: b[name].__setitem__(at, value)


def replace(name, change):
    return lambda b: b.__setitem__(name, change(b[name]))


DAMAGES = {
    "ring_head NaN": replace("ring_head", lambda v: np.full(v.shape, np.nan)),
    "ring_head 0.0": replace("ring_head", lambda v: v.astype(np.float64)),
    "ring_action float": replace("ring_action", lambda v: v.astype(np.float32)),
    "ring_channel float": replace("ring_channel", lambda v: v.astype(np.float64)),
    "ring_time float": replace("ring_time", lambda v: v.astype(np.float64)),
    "applied float": replace("applied", lambda v: v.astype(np.float64)),
    "lsn NaN": replace("lsn", lambda v: np.full(v.shape, np.nan)),
    "ring_outcome 99": set_item("ring_outcome", (0, 0), 99),
    "ring_outcome 0 used": set_item("ring_outcome", (0, 1), 0),
    "values as text": replace("values", lambda v: np.full(v.shape, "x")),
    "values as none": replace("values", lambda v: np.full(v.shape, None)),
    "ragged ring": replace("ring_time", lambda v: [list(v[0]), list(v[1][:-1])]),
    "id not text": replace("ids", lambda v: [7, v[1]]),
    "action not text": replace("actions", lambda v: [[1], *v[1:]]),
    "string not text": replace("strings", lambda v: [1.5] * len(v)),
    "head of two": replace("ring_head", lambda v: np.stack([v, v], axis=1)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_column_of_another_type_is_corrupt_and_loads_nothing(compiled, damage):
    block = with_history(compiled)
    DAMAGES[damage](block)
    target = shard(compiled, "t")
    with pytest.raises(blocks.BlockCorrupt):
        blocks.validate(block, shard=True)
    with pytest.raises(blocks.BlockCorrupt):
        blocks.import_block(target.engine, block, shard=True)
    assert len(target.engine.table) == 0


def test_a_nan_head_read_back_from_bytes_is_corrupt(compiled):
    """As a store or a peer's handoff hands it over: packed, with the dtype it was packed as."""
    block = with_history(compiled)
    block["ring_head"] = np.array([np.nan, 0.0])
    with pytest.raises(blocks.BlockCorrupt, match="ring_head of type float64, not integers"):
        blocks.validate(blocks.unpack(blocks.pack(block)), shard=True)


def test_an_unused_entrys_outcome_is_not_read_and_the_block_loads(compiled):
    block = with_history(compiled)
    block["ring_outcome"][0, 5] = 99  # behind the head, and its action EMPTY
    target = shard(compiled, "t")
    assert blocks.import_block(target.engine, block, shard=True) == ["ana", "bob"]
    assert [h["outcome"] for h in target.engine.history("ana")] == ["accept", "impression"]


def test_integers_of_another_width_still_load(compiled):
    """Any integer type is taken (a peer may hold wider ones); its values are range-checked."""
    block = with_history(compiled)
    for name in INTEGERS:
        block[name] = block[name].astype(np.int64)
    target = shard(compiled, "t")
    assert blocks.import_block(target.engine, block, shard=True) == ["ana", "bob"]
    assert len(target.engine.history("ana")) == 2


RING = (2, default_compiled().history_size)  # the `compiled` fixture's, two customers
ODD = [None, "x", 3.5, -1, [], [[1], [2, 3]], {"a": 1}, np.array([np.nan]),
       np.array([["x"]]), b"\x00", np.arange(2), np.array([]),  # no truth value compared
       # lists of Python ints past the table's types (int64 or uint64 arrays to the checks)
       [2**63, 0], [-2**63, 0], [2**31, 0], np.full(RING, 2**40).tolist(),
       np.full(RING, 1000).tolist(), np.full(RING, -129).tolist()]


@pytest.mark.parametrize("key", ["ids", "slots", "values", "strings", "string_columns",
                                 "actions", "channels", "meanings", "extras", "format",
                                 "journal", *INTEGERS])
def test_whatever_a_part_holds_validate_raises_block_corrupt_or_it_loads(compiled, key):
    for odd in ODD:
        block = with_history(compiled)
        journal, block[key] = block["journal"], odd  # the load compares the journal's
        target = shard(compiled, "t")
        try:
            loaded = blocks.import_block(target.engine, block, journal, shard=True)
        except blocks.BlockCorrupt:
            loaded = []
        t = target.engine.table
        assert len(t) == len(loaded)
        heads = t.ring_head[[t.index[c] for c in loaded]]
        assert np.all((heads >= 0) & (heads < compiled.history_size)), (key, odd)


def test_the_checks_know_the_tables_integer_types(compiled):
    table = ProfileTable(compiled, 1)
    assert {name: getattr(table, name).dtype for name in INTEGERS} == \
        {name: np.dtype(kind) for name, kind in block_checks.TABLE_TYPES.items()}


def test_outcome_codes_are_one_range():
    """validate checks a used entry's outcome as a range, not as a set."""
    assert sorted(o.value for o in Outcome) == list(
        range(block_checks.FIRST_OUTCOME, block_checks.LAST_OUTCOME + 1))


def _on_path(block: dict, path: str) -> dict:
    """The block as the load's path reads it: this catalog's codes (copied as they are),
    its actions in another order (mapped), or an entry of an action it lacks (rebuilt entry
    by entry, that entry dropped)."""
    if path == "mapped":
        block["actions"] = list(reversed(block["actions"]))
    elif path == "rebuilt":
        block["actions"] = [*block["actions"], "gone"]
        block["ring_action"][0, 2] = len(block["actions"]) - 1
        block["ring_outcome"][0, 2] = Outcome.IMPRESSION
        block["ring_head"][0] = 3
    return block


def _as_lists(block: dict) -> dict:
    """The block as another writer's msgpack may hold it: integer columns as lists."""
    return blocks.unpack(blocks.pack({**block, **{n: block[n].tolist() for n in INTEGERS}}))


AT = {  # where each column's value is set: where the checks read it
    "ring_time": (0, 0), "ring_outcome": (1, 3),  # an unused entry
    "ring_action": (0, 0), "ring_channel": (0, 0), "applied": (0,), "lsn": (1,)}
WIDE = ("applied", "lsn")  # int64 columns: only an unsigned array is wider, none lower
CODES = ("ring_action", "ring_channel")


def _with_value(block: dict, name: str, value: int, as_list: bool) -> dict:
    """The block with `value` in `name`'s column at AT, as a list of Python ints or as an array
    wider than the table's type; codes as high as the lists are long, so that only the table's
    type can refuse them (wrapped, a value outside it is a code the lists hold)."""
    column = np.array(block[name], object)
    column[AT[name]] = value
    block[name] = column.tolist()
    block["actions"] += [f"a{i}" for i in range(2**15 + 1 - len(block["actions"]))] \
        if name == "ring_action" else []
    block["channels"] += [f"c{i}" for i in range(129)] if name == "ring_channel" else []
    if not as_list:
        block[name] = np.array(block[name], np.uint64 if name in WIDE else np.int64)
    return blocks.unpack(blocks.pack(block))


RANGES = {name: np.iinfo(kind) for name, kind in block_checks.TABLE_TYPES.items()}
OUTSIDE = [(name, RANGES[name].max + 1) for name in AT] + \
    [(name, RANGES[name].min - 1) for name in AT if name not in WIDE]


@pytest.mark.parametrize("path", ["copied", "mapped", "rebuilt"])
@pytest.mark.parametrize("name, value", OUTSIDE, ids=[f"{n}={v}" for n, v in OUTSIDE])
@pytest.mark.parametrize("as_list", [True, False])
def test_an_integer_past_the_tables_type_is_corrupt_and_loads_nothing(compiled, path, name,
                                                                      value, as_list):
    """A list of Python ints raised OverflowError at the write (the rebuilt path's TypeError
    first), a wider array wrapped silently; either way the block is corrupt, above the type's
    range or below it."""
    wide = name in WIDE
    block = _with_value(_on_path(with_history(compiled), path), name, value, as_list)
    target = shard(compiled, "t")
    # NumPy reads a list of 2**63 and 0 as float64, refused as no integers
    refusal = f"{name} of type float64" if wide and as_list else f"{name} values outside"
    with pytest.raises(blocks.BlockCorrupt, match=refusal):
        blocks.import_block(target.engine, block, shard=True)
    assert len(target.engine.table) == 0


@pytest.mark.parametrize("path", ["copied", "mapped", "rebuilt"])
@pytest.mark.parametrize("name", list(AT))
@pytest.mark.parametrize("as_list", [True, False])
def test_each_columns_largest_and_smallest_values_load(compiled, path, name, as_list):
    """The range is the type's own, both ends included: a column's max and min load, and are
    written as they are where the block's codes are the catalog's (the code columns' are not:
    their lists are longer than the catalog's, and such an entry is dropped); the LSN kept, as
    the block names the journal."""
    # a code column's low end is its codes' (test_blocks), and a uint64 array (the one wider
    # than an int64 column) holds no negative value
    lows = [] if name in CODES or (name in WIDE and not as_list) else [RANGES[name].min]
    for value in (RANGES[name].max, *lows):
        block = _with_value(_on_path(with_history(compiled), path), name, value, as_list)
        target = shard(compiled, "t")
        assert blocks.import_block(target.engine, block, block["journal"], shard=True) == \
            ["ana", "bob"], value
        if path == "copied" and name not in CODES:
            row = target.engine.table.index[block["ids"][AT[name][0]]]
            assert getattr(target.engine.table, name)[row][AT[name][1:]] == value


@pytest.mark.parametrize("path", ["copied", "mapped", "rebuilt"])
def test_integer_columns_as_lists_load_as_the_arrays_do(compiled, path):
    as_arrays, as_lists = shard(compiled, "a"), shard(compiled, "l")
    blocks.import_block(as_arrays.engine, _on_path(with_history(compiled), path), shard=True)
    blocks.import_block(as_lists.engine, _as_lists(_on_path(with_history(compiled), path)),
                        shard=True)
    for customer in ("ana", "bob"):
        assert as_lists.engine.history(customer) == as_arrays.engine.history(customer)
    assert len(as_lists.engine.history("ana")) == 2
    for name in (*INTEGERS, "values"):
        assert np.array_equal(getattr(as_lists.engine.table, name)[:2],
                              getattr(as_arrays.engine.table, name)[:2], equal_nan=True), name
