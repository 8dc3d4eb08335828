"""The client sends again a batch that never left (its connection had closed before it was
written: issue item 19), without breaking the order of a sender's batches; requests whose
shard cannot be reached at all wait for its replacement (LocalBackend, no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster import protocol
from kairos.cluster.protocol import Event
from kairos.cluster.transport import batching
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.backend import NotSent, Unavailable
from kairos.cluster.transport.client import Busy, KairosClient

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

T0 = 1_795_629_600.0


class _Scripted(LocalBackend):
    """Sends are recorded; the (session, seq) pairs in `not_sent` fail once as never sent
    (behind unanswered ones if `gapped`); the others wait for `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, int]] = []
        self.not_sent: set[int] = set()  # seq numbers, in any session
        self.gapped = False
        self.unreachable: set[str] = set()  # shards no connection opens to
        self.gate = asyncio.Event()

    async def send(self, name, session, seq, requests, routed):
        self.sent.append((session, seq))
        if name in self.unreachable:
            raise NotSent(f"{name}: no connection")
        if seq in self.not_sent:
            self.not_sent.discard(seq)
            unsent = NotSent(f"{name}: the connection is closed")
            unsent.gapped = self.gapped
            raise unsent
        await self.gate.wait()
        return await super().send(name, session, seq, requests, routed)


async def _runtime() -> tuple[_Scripted, KairosClient]:
    backend = _Scripted()
    await backend.start_runtime(1, n_partitions=8)
    return backend, await KairosClient(backend).connect()


def test_the_only_batch_in_flight_goes_again_as_the_first_of_a_fresh_session():
    async def main():
        backend, client = await _runtime()
        backend.gate.set()
        backend.not_sent = {0}
        assert await client.ingest("ana", "app_open", T0) == 1
        assert await client.ingest("ana", "app_open", T0 + 1) == 2
        (first, _), (again, _), (then, _) = backend.sent
        assert first != again == then  # the shard takes the new session's batch 0 at once
        assert [seq for _, seq in backend.sent] == [0, 0, 1]
        await client.close()

    asyncio.run(main())


def test_a_batch_behind_another_in_flight_goes_again_in_its_place():
    async def main():
        backend, client = await _runtime()
        backend.not_sent = {1}
        first = asyncio.ensure_future(client.ingest("ana", "app_open", T0))
        await until(lambda: backend.sent, 5, "batch 0 in flight, held at the gate",
                    poll_s=0.001)
        second = asyncio.ensure_future(client.ingest("ana", "app_open", T0 + 1))
        await until(lambda: len(backend.sent) == 3, 5,
                    "batch 1 to fail unsent and go again", poll_s=0.001)
        backend.gate.set()
        assert await asyncio.gather(first, second) == [1, 2]  # in order
        sessions = {session for session, _ in backend.sent}
        assert len(sessions) == 1 and [seq for _, seq in backend.sent] == [0, 1, 1]
        await client.close()

    asyncio.run(main())


def test_a_batch_behind_unanswered_ones_goes_again_as_the_first_of_a_fresh_session():
    """Review finding: a batch that never left, behind batches of its session that went
    unanswered, failed as maybe applied (its connection said so), though it never left; sent
    again in its place, the shard would wait for the lost ones in vain."""
    async def main():
        backend, client = await _runtime()
        backend.not_sent, backend.gapped = {1}, True
        first = asyncio.ensure_future(client.ingest("ana", "app_open", T0))
        await until(lambda: backend.sent, 5, "batch 0 in flight, held at the gate",
                    poll_s=0.001)
        second = asyncio.ensure_future(client.ingest("bob", "app_open", T0 + 1))
        await until(lambda: len(backend.sent) == 3, 5,
                    "batch 1 to fail unsent and go again", poll_s=0.001)
        backend.gate.set()
        assert await asyncio.gather(first, second) == [1, 1]
        (session, _), (same, _), (fresh, _) = backend.sent
        assert session == same != fresh
        assert [seq for _, seq in backend.sent] == [0, 1, 0]
        await client.close()

    asyncio.run(main())


def test_requests_for_a_shard_whose_node_left_wait_for_its_replacement():
    """The CI failure: the controller had started the replacement shard but not yet
    published the map; the client still routed to the dead shard, which no connection
    reaches, and answered Unavailable for a request that never left."""
    async def main():
        backend, client = await _runtime()
        backend.gate.set()
        ctl = backend.local_controller
        backend.node_names = ["node-a", "node-b"]  # the shard was on node-a and node-a left
        dead = client.owner("ana")
        backend.unreachable.add(dead)
        backend.node_names.remove(ctl.placement[dead])
        pending = asyncio.ensure_future(client.ingest("ana", "app_open", T0))
        await until(lambda: len(backend.sent) >= 2, 5, "the batch to find no connection twice",
                    poll_s=0.001)
        assert not pending.done()  # waiting for the map, not failed
        await ctl.reconcile()
        assert await pending == 1 and client.owner("ana") != dead
        await client.close()

    asyncio.run(main())


def test_requests_for_a_shard_that_stays_unreachable_fail_after_the_rerouting_waits(
        monkeypatch):
    monkeypatch.setattr(client_module, "CLIENT_REROUTE_S", 0.01)

    async def main():
        backend, client = await _runtime()
        backend.gate.set()
        backend.unreachable.add(client.owner("ana"))
        with pytest.raises(Unavailable, match="no connection"):
            await client.ingest("ana", "app_open", T0)
        # each try is the fresh-session resend and its retry; then CLIENT_REROUTES more tries
        assert len(backend.sent) == 2 * (1 + client_module.CLIENT_REROUTES)
        backend.unreachable.clear()  # back: the next request goes through
        assert await client.ingest("ana", "app_open", T0) == 1
        await client.close()

    asyncio.run(main())


def test_requests_nobody_awaits_any_more_are_not_sent(monkeypatch):
    """A request whose caller gave up (its deadline passed) while it queued behind a busy
    shard is dropped before it is sent: under overload it would only delay the live ones."""
    monkeypatch.setattr(client_module, "CLIENT_INFLIGHT_CALLS", 1)

    async def main():
        backend, client = await _runtime()
        first = asyncio.ensure_future(client.ingest("ana", "app_open", T0))
        await until(lambda: backend.sent, 5, "the first batch in flight, held at the gate",
                    poll_s=0.001)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.ingest("ana", "app_open", T0 + 1)  # queued behind the first
        backend.gate.set()
        assert await first == 1
        assert await client.ingest("ana", "app_open", T0 + 2) == 2  # the late one never applied
        assert len(backend.sent) == 2
        await client.close()

    asyncio.run(main())


def test_a_request_its_caller_gave_up_on_while_it_could_not_be_sent_blocks_nothing(
        monkeypatch):
    """Answered a last time as never sent after its caller gave up (a deadline), it is let go:
    setting its answer raised, the rest of its batch went unanswered and its partition's
    later requests waited for ever."""
    monkeypatch.setattr(client_module, "CLIENT_REROUTE_S", 0.05)

    def app_open(t: float) -> Event:
        return Event(customer_id="ana", event_type="app_open", time=t, attributes={})

    class Slow(_Scripted):
        slow_s = 0.0

        async def send(self, name, session, seq, requests, routed):
            if name in self.unreachable and requests:
                await asyncio.sleep(self.slow_s)  # a connection that takes its time to fail
            return await super().send(name, session, seq, requests, routed)

    async def main():
        backend = Slow()
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        backend.gate.set()
        backend.unreachable.add(next(iter(backend.shards)))
        gone, waiting = client.enqueue(app_open(T0)), client.enqueue(app_open(T0 + 1))
        await until(lambda: len(backend.sent) >= 4, 5, "two rounds of sends")
        backend.slow_s = 0.3
        await asyncio.sleep(0.15)  # the last round in flight
        gone.cancel()  # its caller's deadline passed
        reply = await asyncio.wait_for(waiting, 5)  # answered: the shard stays out of reach
        with pytest.raises(NotSent):  # never sent: not applied
            await client.settle(app_open(T0 + 1), reply)
        backend.unreachable.clear()
        assert await asyncio.wait_for(client.ingest("ana", "app_open", T0 + 2), 5) >= 1
        await client.close()

    asyncio.run(main())


def test_requests_waiting_for_an_unreachable_shard_count_against_its_queue_bound(
        monkeypatch):
    """Requests held in a lane (here behind one that waits for its shard to come back) count
    against CLIENT_QUEUE_LIMIT: only the shard's send queue was counted, so they piled up
    without bound and nothing was refused Busy. Those whose callers gave up meanwhile are
    not sent when the lane goes again, and the bound counts none of them after."""
    monkeypatch.setattr(client_module, "CLIENT_QUEUE_LIMIT", 10)
    monkeypatch.setattr(client_module, "CLIENT_REROUTE_S", 0.3)

    def app_open(i: int) -> Event:
        return Event(customer_id="ana", event_type="app_open", time=T0 + i, attributes={})

    async def main():
        backend, client = await _runtime()
        backend.gate.set()
        backend.unreachable.add(client.owner("ana"))
        first = client.enqueue(app_open(0))
        await until(lambda: len(backend.sent) == 2, 5, "the first request sent, and again",
                    poll_s=0.001)  # never sent: it waits for the shard, the rest behind it
        held = [client.enqueue(app_open(i)) for i in range(1, 10)]
        with pytest.raises(Busy, match="10 requests waiting"):
            client.enqueue(app_open(10))
        for gone in held[::2]:
            gone.cancel()  # their callers gave up
        backend.unreachable.clear()
        acks = [await client.settle(app_open(0), await asyncio.wait_for(f, 5))
                for f in [first] + held[1::2]]
        assert [ack.sequence for ack in acks] == [1, 2, 3, 4, 5]  # in order, the gone ones not
        assert client._waiting_for(client.owner("ana")) == 0
        await asyncio.gather(*(client.ingest("ana", "app_open", T0) for _ in range(10)))
        await client.close()

    asyncio.run(main())


def test_a_batch_numbered_before_its_session_failed_goes_as_the_fresh_sessions(monkeypatch):
    """Review finding: a batch numbered in a session that a failed call then dropped (its
    task not started yet) still went in the old session, behind the lost batch: a shard that
    had seen the session waited for that batch in vain (the gap deadline, 15 s)."""
    monkeypatch.setattr(batching, "CLIENT_BATCH_LIMIT", 1)  # numbered with no wait

    class Lost(_Scripted):
        def __init__(self) -> None:
            super().__init__()
            self.lose = asyncio.Event()

        async def send(self, name, session, seq, requests, routed):
            if self.sent:
                return await super().send(name, session, seq, requests, routed)
            self.sent.append((session, seq))
            await self.lose.wait()
            raise Unavailable(f"{name}: the connection closed")

    async def main():
        backend = Lost()
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        backend.gate.set()
        first = asyncio.ensure_future(client.ingest("ana", "app_open", T0))
        await until(lambda: backend.sent, 5, "batch 0 in flight", poll_s=0.001)
        second = client.enqueue(Event(customer_id="ana", event_type="app_open", time=T0 + 1,
                                      attributes={}))  # numbered 1 before batch 0 fails
        backend.lose.set()
        with pytest.raises(Unavailable, match="the connection closed"):
            await first
        assert isinstance(await asyncio.wait_for(second, 5), protocol.EventAck)
        (lost, seq), (fresh, then) = backend.sent
        assert lost != fresh and (seq, then) == (0, 0)
        await client.close()

    asyncio.run(main())
