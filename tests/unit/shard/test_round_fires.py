"""An event's overdue timers fire inside its request round (review rev41 d-timer, finding 1):
an ingest key sends add_to_cart for many long ids, then any event past the timers' due time,
and each event adds a Fire record per timer to the round's one journal frame. With 41 timers,
2,048 events of 1 KB ids made a 104 MB frame: past MAX_FRAME the round failed, the shard was
rebuilt, and every caller in the round was answered UNAVAILABLE on every retry. The host now
counts an event's possible fires into the round's bytes (rounds.py) and splits the round. The
frame limit and the round's bytes are lowered here (a quarter, as by default) so the scenario
takes dozens of customers, not thousands."""
from __future__ import annotations

import asyncio

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.cluster.protocol import EventAck, Fire
from kairos.cluster.shard.rounds import fire_bytes
from kairos.cluster.storage import frames
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import T0, event
from tests.unit.shard.test_shard_host import run

CART = dict(product_id="tv", category="electronics", price=199.0)
AFTER = 1800.0  # the added timers' delay, as cart_abandoned's
BUDGET = 64 << 10  # a quarter of MAX_FRAME, as SHARD_ROUND_BYTES by default


def with_timers(k: int) -> str:
    """The default catalog with `k` timers more started by add_to_cart, of long names."""
    extra = "".join(f"  t{i:02d}_{'x' * 190}:\n    start: add_to_cart\n    cancel: purchase\n"
                    f"    after: 30m\n    fire: cart_abandoned\n" for i in range(k))
    text = default_catalog_text().replace("timers:\n", "timers:\n" + extra, 1)
    return text.replace('version: "2026.12.3"', f'version: "timers-{k}"', 1)


def long_id(i: int) -> str:
    return f"{i:07d}" + "\U0001F600" * 249  # 256 characters (the cap), 1,003 bytes


@pytest.fixture
def small_frames(monkeypatch):
    monkeypatch.setattr(frames, "MAX_FRAME", 256 << 10)


def counted_rounds(host) -> list[int]:
    """The size of each round the host's Shard processes from now on."""
    rounds: list[int] = []
    process = host.shard.process
    host.shard.process = lambda requests, *rest: rounds.append(len(requests)) or \
        process(requests, *rest)
    return rounds


def test_a_round_of_events_firing_overdue_timers_is_split_under_the_frame_limit(
        tmp_path, small_frames):
    """48 events of 1 KB ids (50 KB, under the round's 64 KB) each fire 9 timers (some 530 KB
    of Fire records, past the 256 KB frame limit): the round failed as a whole."""
    compiled = compiled_from_text(with_timers(8))
    ids = [long_id(i) for i in range(48)]
    opens = [event(c, "app_open", T0 + AFTER + 1) for c in ids]
    assert len(msgpack.packb(opens)) < BUDGET

    async def test(host):
        shard = host.shard
        carts = await host.handle("a", 0, [event(c, "add_to_cart", T0, **CART) for c in ids],
                                  [0] * len(ids))
        assert all(type(r) is EventAck for r in carts)
        assert len(shard.timers) == 48 * 9
        rounds = counted_rounds(host)
        replies = await host.handle("a", 1, opens, [0] * len(opens))
        assert all(type(r) is EventAck for r in replies), replies[0]
        assert host.shard is shard  # no rebuild
        assert shard.counts["timers_fired"] == 48 * 9 and len(shard.timers) == 0
        assert len(rounds) > 1 and sum(rounds) == 48
    run(compiled, DirectoryStore(tmp_path, fsync=False), test, round_bytes=BUDGET)


def test_a_batch_queued_before_a_catalog_switch_is_costed_by_the_new_catalog(
        tmp_path, small_frames):
    """A batch that fit the round by the default catalog (one timer) is cut again when a
    switch to 32 timers comes before its round: each customer's add_to_cart arms 33 timers
    that its app_open, later in the batch, fires (some 490 KB of Fire records)."""
    ids = [long_id(i) for i in range(12)]
    batch = [e for c in ids for e in (event(c, "add_to_cart", T0, **CART),
                                      event(c, "app_open", T0 + AFTER + 1))]
    text = with_timers(32)

    async def test(host):
        shard = host.shard
        version = shard.prepare(text)
        rounds = counted_rounds(host)
        process = shard.process

        def switching(requests, *rest):  # the switch lands between two rounds
            replies = process(requests, *rest)
            if len(rounds) == 1:
                shard.commit(version)
            return replies
        shard.process = switching
        first, replies = await asyncio.gather(
            host.handle("b", 0, [event("bob", "app_open", T0)], [0]),
            host.handle("a", 0, batch, [0] * len(batch)))
        assert first == [EventAck(sequence=1)]
        assert all(type(r) is EventAck for r in replies), replies[0]
        assert host.shard is shard and shard.catalog_version == "timers-32"
        assert shard.counts["timers_fired"] == 12 * 33
        assert len(rounds) > 2 and sum(rounds) == 1 + len(batch)
    run(compiled_from_text(default_catalog_text()), DirectoryStore(tmp_path, fsync=False), test,
        round_bytes=BUDGET, round_limit=1)


def test_an_event_whose_possible_fires_alone_pass_the_budget_is_invalid(tmp_path):
    """64 timers of 194-character names and a 1 KB id: some 79 KB of Fire records for one
    event, past a 64 KB round; the rest of the batch is served, the shard kept."""
    compiled = compiled_from_text(with_timers(63))

    async def test(host):
        shard = host.shard
        replies = await host.handle("a", 0, [event(long_id(0), "app_open", T0),
                                             event("ana", "app_open", T0)], [0, 0])
        assert replies[0].status == "invalid" and replies[0].field == "request"
        assert "for the timers it may fire, over a round's 65536-byte budget " \
               "(SHARD_ROUND_BYTES)" in replies[0].reason
        assert replies[1] == EventAck(sequence=1) and host.shard is shard
    run(compiled, DirectoryStore(tmp_path, fsync=False), test, round_bytes=BUDGET)


@given(customer_id=st.text(max_size=70_000), timer=st.text(min_size=1, max_size=300),
       partition=st.integers(-1 << 63, (1 << 63) - 1),
       due=st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_a_fire_record_packs_to_at_most_what_rounds_and_ticks_price_it(customer_id, timer,
                                                                      partition, due):
    """Rounds (overdue fires) and ticks (firings) both price a Fire by `fire_bytes` without
    packing it: the price must cover the record the journal writes."""
    fire = Fire(partition=partition, customer_id=customer_id, timer=timer, due=due)
    packed = msgpack.packb(fire, use_bin_type=True)
    assert len(packed) <= fire_bytes(len(customer_id.encode()), len(timer.encode()))
