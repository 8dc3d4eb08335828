"""What a shard holds per resident customer besides its profile row: its id once (the table's
copy, whichever request's copy named it), no float object of its own for its last use, no
index entry or row number object (core/state.py RowIndex), and no set entry for its
partition's members (the table's `partition` column)."""
from __future__ import annotations

import gc
import pathlib
import tracemalloc

from kairos.cluster.protocol import Event, Outcome
from kairos.cluster.shard import outcomes
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore

from tests.unit.shard.test_shard import N_PARTITIONS, T0, p_of

PROFILE = "profile_updated"


class Ticking:
    """A clock that moves a microsecond a reading: a fresh float each time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


def _copy(text: str) -> str:
    return (text + " ")[:-1]  # equal, not the same object: as each request off the wire


def _served(s: Shard, customers: list[str], action: str, channel: str) -> None:
    """A profile event then an offline impression per customer (bench.resident's load)."""
    replies, _ = s.process(
        [Event(partition=p_of(c), customer_id=_copy(c), event_type=PROFILE, time=T0,
               attributes={}) for c in customers] +
        [Outcome(partition=p_of(c), customer_id=_copy(c), action_id=action, channel=channel,
                 outcome="impression", when=T0) for c in customers])
    assert {type(r).__name__ for r in replies} <= {"EventAck", "Ok"}, replies[:3]


def _shown(compiled) -> tuple[str, str]:
    action = next(a for a in compiled.action_ids
                  if compiled.offered[compiled.action_index[a]].any())
    a = compiled.action_index[action]
    return action, next(ch for k, ch in enumerate(compiled.channel_names)
                        if compiled.offered[a, k])


def test_a_residents_id_is_held_once_and_its_last_use_shares_the_rounds_float(compiled):
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS, clock=Ticking())
    customers = [f"c{i:07d}" for i in range(200)]
    _served(s, customers, *_shown(compiled))
    table, residency = s.engine.table, s.residency
    assert sorted(residency.recent) == customers
    assert all(table.ids[table.index[c]] is c for c in residency.recent)
    assert all(table.ids[table.index[c]] is c for cs in table.members_of().values()
               for c in cs)
    assert len({id(seen) for seen in residency.recent.values()}) <= 2  # 400 readings


def test_a_served_customer_costs_the_shard_few_python_bytes(compiled, tmp_path, monkeypatch):
    """Python objects a served customer adds (its row's arrays are reserved ahead): its id,
    its place in the residency's order, a slot or two of the id index. A dict index (an
    entry and a row number object), a second copy of the id, a float of its own and a set
    entry for its partition's members held some 170 bytes more (125 measured without them:
    the bound catches the index or the id's second copy back; the first test the float).
    Neither the journal nor the outcome rate's window (cut to a few rounds) keeps anything
    here."""
    monkeypatch.setattr(outcomes, "OUTCOME_RATE_WINDOW_S", 0.001)
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS, clock=Ticking(),
              store=DirectoryStore(tmp_path, fsync=False), journal_policy="off",
              resident_limit=20_000)
    shown = _shown(compiled)
    _served(s, [f"w{i:04d}" for i in range(1000)], *shown)  # the parts' first allocations
    customers = [f"c{i:07d}" for i in range(10_000)]
    tracemalloc.start()
    try:
        gc.collect()  # what earlier tests left for the collector is not this test's
        before = tracemalloc.take_snapshot()
        for start in range(0, len(customers), 1000):
            _served(s, customers[start:start + 1000], *shown)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # pathlib interns each home's file name the store looks for: the process's table of
    # interned strings may grow meanwhile (by how many other tests left), not per customer
    apart = [tracemalloc.Filter(False, pathlib.__file__)]
    held = sum(d.size_diff for d in after.filter_traces(apart).compare_to(
        before.filter_traces(apart), "filename"))
    assert held / len(customers) <= 160, f"{held / len(customers):.0f} bytes a customer"
