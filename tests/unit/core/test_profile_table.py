"""The profile table's rows: taken as empty profiles, kept through growth, reused after
eviction; rows never taken are never written (reserved capacity is address space only)."""
from __future__ import annotations

import numpy as np

from kairos.core.compiler import default_compiled
from kairos.core.state import EMPTY, ProfileTable


def _is_empty_profile(table: ProfileTable, row: int) -> bool:
    return (np.array_equal(table.values[row], table.defaults, equal_nan=True)
            and (table.ring_action[row] == EMPTY).all() and table.applied[row] == 0
            and table.ring_head[row] == 0 and table.lsn[row] == 0)


def test_a_table_grows_past_its_capacity_and_keeps_every_profile():
    table = ProfileTable(default_compiled(), capacity=2)
    rows = {}
    for i in range(5):
        rows[f"c{i}"] = row = table.row(f"c{i}")
        assert _is_empty_profile(table, row)
        table.values[row, 0] = float(i)
        table.applied[row] = i + 1
    assert table.capacity >= 5 and table.generation > 1
    assert [table.values[rows[f"c{i}"], 0] for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [int(table.applied[rows[f"c{i}"]]) for i in range(5)] == [1, 2, 3, 4, 5]
    assert table.ids[:5] == [f"c{i}" for i in range(5)]


def test_an_evicted_row_is_taken_again_as_an_empty_profile():
    table = ProfileTable(default_compiled(), capacity=4)
    row = table.row("gone")
    table.values[row, 0] = 7.0
    table.ring_action[row, 0] = 3
    table.applied[row] = 9
    table.evict("gone")
    assert "gone" not in table and table.ids[row] is None
    assert table.row("next") == row and _is_empty_profile(table, row)


def test_rows_never_taken_are_never_written():
    table = ProfileTable(default_compiled(), capacity=1000)
    for i in range(3):
        table.row(f"c{i}")
    assert table.used == 3 and len(table.ids) == 3
    for name in ("values", "ring_action", "ring_channel", "ring_outcome", "ring_time",
                 "ring_head", "applied", "lsn"):
        assert not getattr(table, name)[3:].any(), name  # zero pages nothing touched
