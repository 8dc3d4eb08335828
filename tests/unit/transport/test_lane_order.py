"""A customer's later request queued for its shard while an earlier one is in flight does not
overtake it when the earlier one comes back to wait in its lane (its batch never reached the
shard, or the shard answered MOVED for a move not settled): it waits behind it, also when the
partition moves to another shard meanwhile (review rev42 transport finding 1; LocalBackend).
Nor when it is in flight already, in a batch that never left and goes again in a fresh session
(review rev42 d-order finding 1)."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from kairos.cluster import protocol
from kairos.cluster.control import controller as controller_module
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.backend import NotSent
from kairos.cluster.transport.client import KairosClient

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

T0 = 1_795_629_600.0
E1, E2, SLOW = T0 + 1, T0 + 2, T0  # event times: the customer's two events, another's


class _Flaky(LocalBackend):
    """The batch carrying E1 fails `e1_fails` times, as never sent (a shard restarting: no
    connection opens, after a while) or answered MOVED naming the map it was routed by (its
    partition frozen by a move not settled), then goes through (always fails, as never sent,
    at the shard `away`); a batch with SLOW waits for `gate`. `applied` records the shard,
    event and sequence number of each event applied."""

    def __init__(self, n_shards: int, moved: bool) -> None:
        super().__init__()
        self.n_shards, self.moved = n_shards, moved
        self.e1_fails = 2 if not moved else 1
        self.failed = 0
        self.away = ""
        self.gate = asyncio.Event()
        self.applied: list[tuple[str, str, int]] = []

    async def send(self, name, session, seq, requests, routed):
        times = [getattr(r, "time", None) for r in requests]
        if E1 in times and (self.e1_fails or name == self.away):
            self.e1_fails = max(0, self.e1_fails - 1)
            await asyncio.sleep(0.05)
            self.failed += 1
            if self.moved:
                await super().send(name, session, seq, [], [])  # keep the session's numbers
                return [protocol.Moved(map_version=v) for v in routed]
            raise NotSent(f"{name}: no connection (restarting)")
        if SLOW in times:
            await self.gate.wait()
        replies = await super().send(name, session, seq, requests, routed)
        self.applied += [(name, {E1: "E1", E2: "E2"}[t], reply.sequence)
                         for t, reply in zip(times, replies) if t in (E1, E2)]
        return replies


async def _race(backend: _Flaky, move: bool) -> tuple[list, str, str]:
    """E2 of a customer queued behind E1 (the shard's two call slots busy: E1 and another
    customer's slow batch) while E1 fails; with `move`, E1 never reaches the customer's
    shard, which is then scaled away. The results of E1 and E2, the customer's shard before
    and after."""
    ctl = await backend.start_runtime(backend.n_shards, n_partitions=8)
    client = await KairosClient(backend).connect()
    shard = ctl.shards[-1]  # the one a scale to one shard moves away from
    customer, other = [c for c in (f"c{i}" for i in range(100)) if client.owner(c) == shard][:2]
    backend.away = shard if move else ""
    try:
        slow = asyncio.ensure_future(client.ingest(other, "app_open", SLOW))
        await asyncio.sleep(0.01)
        first = asyncio.ensure_future(client.ingest(customer, "app_open", E1))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(client.ingest(customer, "app_open", E2))
        await until(lambda: backend.failed >= (1 if backend.moved else 2), 5, "E1 to fail")
        await asyncio.sleep(0.05)  # time enough for E2 to go, were it not held back
        backend.gate.set()
        if move:
            await ctl.scale(1)
        results = await asyncio.wait_for(asyncio.gather(first, second, slow), 10)
        return results[:2], shard, client.owner(customer)
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(client_module, "CLIENT_REROUTE_S", 0.2)
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


@pytest.mark.parametrize("moved", [False, True], ids=["unsent", "held-by-a-move"])
def test_a_later_request_queued_behind_one_that_comes_back_waits_for_it(moved):
    backend = _Flaky(1, moved)
    acks, _, _ = asyncio.run(_race(backend, move=False))
    assert acks == [1, 2]
    assert [(event, seq) for _, event, seq in backend.applied] == [("E1", 1), ("E2", 2)]


def test_it_waits_for_it_when_the_partition_moves_to_another_shard_meanwhile(monkeypatch):
    monkeypatch.setattr(client_module, "CLIENT_REROUTES", 1000)
    backend = _Flaky(2, moved=False)
    acks, before, after = asyncio.run(_race(backend, move=True))
    assert before != after
    assert acks == [1, 2]
    assert backend.applied == [(after, "E1", 1), (after, "E2", 2)]


class _Scripted(LocalBackend):
    """The batch carrying E1 or E2 takes `script[(event, attempt)]` = (seconds, gapped) on
    that attempt, then fails as never sent (`gapped`: after batches left unanswered) unless
    gapped is None; attempts not scripted go at once. `applied` as _Flaky's, less the shard."""

    def __init__(self, script: dict) -> None:
        super().__init__()
        self.script, self.attempts = script, Counter()
        self.applied: list[tuple[str, int]] = []

    async def send(self, name, session, seq, requests, routed):
        names = {E1: "E1", E2: "E2"}
        events = [names.get(getattr(r, "time", None)) for r in requests]
        if first := next(filter(None, events), None):
            delay, gapped = self.script.get((first, self.attempts[first]), (0.0, None))
            self.attempts[first] += 1
            await asyncio.sleep(delay)
            if gapped is not None:
                exc = NotSent(f"{name}: no connection (restarting)")
                exc.gapped = gapped
                raise exc
        replies = await super().send(name, session, seq, requests, routed)
        self.applied += [(e, reply.sequence) for e, reply in zip(events, replies) if e]
        return replies


async def _in_flight(backend: _Scripted) -> list:
    """E1, then E2 of one customer in the shard's second call slot: both in flight."""
    await backend.start_runtime(1, n_partitions=8)
    client = await KairosClient(backend).connect()
    try:
        first = asyncio.ensure_future(client.ingest("ana", "app_open", E1))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(client.ingest("ana", "app_open", E2))
        return await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        await client.close()


@pytest.mark.parametrize("retry_fails", [True, False], ids=["E1-undelivered", "E1-retry-later"])
def test_a_later_request_in_flight_does_not_go_ahead_in_a_fresh_session(retry_fails):
    """E1's batch never leaves, and goes again in its session (it is not the link's only
    call); E2's never leaves after batches went unanswered, so it goes again as a fresh
    session's first, which the shard does not order after E1's: E2 waits for E1's answer,
    also when E1's second try fails too (re-sent from its lane) or goes through later."""
    backend = _Scripted({("E1", 0): (0.05, False), ("E1", 1): (0.2, False if retry_fails else None),
                         ("E2", 0): (0.1, True)})
    acks = asyncio.run(_in_flight(backend))
    assert backend.attempts["E1"] == (3 if retry_fails else 2)
    assert acks == [1, 2]
    assert backend.applied == [("E1", 1), ("E2", 2)]
