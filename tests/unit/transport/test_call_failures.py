"""A request of a Call (an IngestBatch's, an IngestStream's events) that the client fails on
its own gives up the rest of its call, so none of the customer's later events of the call is
sent without it: the client failing k0 (its shard unreachable through every reroute, MOVED
past MAX_REDIRECTS, its batch failed in transit) then sent k1, held behind it in its lane or
queued behind its batch, and applied k1 without k0 while the gateway still awaited an ack
before k0's. What the call left unsent is answered with k0's failure (it was "no longer
awaited", which ended a stream or a batch without its cause). LocalBackend, no Ray."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kairos.cluster import protocol
from kairos.cluster.protocol import Event
from kairos.cluster.transport import batching
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.backend import NotSent, Unavailable
from kairos.cluster.transport.client import Busy, KairosClient, ShardUnavailable
from kairos.cluster.transport.lanes import Call

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

T0 = 1_795_629_600.0


class K0Fails(LocalBackend):
    """Every batch carrying k0 fails `how`: no connection opens to its shard ("unreachable",
    NotSent), its shard answers MOVED ("moved"), or it fails in transit once `gate` opens
    ("failed", Unavailable: the shard died). Others are applied."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.seen = 0  # batches carrying k0 sent
        self.failed = 0  # ... and failed
        self.gate = asyncio.Event()

    async def send(self, name, session, seq, requests, routed):
        if not any(getattr(request, "idempotency_key", None) == "k0" for request in requests):
            return await super().send(name, session, seq, requests, routed)
        self.seen += 1
        if self.how == "moved":
            await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
            self.failed += 1
            return [protocol.Moved()] * len(requests)
        if self.how == "failed":
            await self.gate.wait()
        self.failed += 1
        raise (NotSent if self.how == "unreachable" else Unavailable)(f"{name}: gone")


def _event(key: str) -> Event:
    return Event(customer_id="ana", event_type="app_open", time=T0, attributes={},
                 idempotency_key=key)


@pytest.mark.parametrize("how", ["unreachable", "moved", "failed"])
def test_a_request_the_client_fails_gives_up_the_rest_of_its_call(monkeypatch, how):
    for name, value in (("CLIENT_REROUTE_S", 0.05), ("LONG_POLL_S", 0.05),
                        ("MAX_REDIRECTS", 1), ("CLIENT_INFLIGHT_CALLS", 1)):
        monkeypatch.setattr(client_module, name, value)

    async def main():
        backend = K0Fails(how)
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        call = Call()
        k0 = client.enqueue(_event("k0"), call)
        if how == "failed":  # k1 queues behind k0's batch, which holds the one call slot
            await until(lambda: backend.seen, 5, "k0's batch in flight", poll_s=0)
        else:  # k1 is held in the lane behind k0, which waits to go again
            await until(lambda: backend.failed >= (2 if how == "unreachable" else 1), 5,
                        "k0's first try failed", poll_s=0)
        k1 = client.enqueue(_event("k1"), call)
        backend.gate.set()
        with pytest.raises(Unavailable) as k0_failed:
            await client.settle(_event("k0"), await k0)
        with pytest.raises(NotSent) as k1_unsent:  # never sent: not applied
            await client.settle(_event("k1"), await k1)
        # why, so that a stream or a batch ending on k1 ends with the cause
        assert str(k1_unsent.value) == (f"not sent: an earlier event of its call failed: "
                                        f"{k0_failed.value}")
        assert await client.profile("ana") is None  # no event of ana's was applied
        await client.close()

    asyncio.run(main())


class K0Refused(LocalBackend):
    """The shard refuses k0 with `reply` (applying nothing of its batch); others are
    applied."""

    def __init__(self, reply: protocol.Reply) -> None:
        super().__init__()
        self.reply = reply

    async def send(self, name, session, seq, requests, routed):
        if any(getattr(request, "idempotency_key", None) == "k0" for request in requests):
            await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
            return [self.reply] * len(requests)
        return await super().send(name, session, seq, requests, routed)


@pytest.mark.parametrize("refusal, raised, reason", [
    (protocol.Busy(), Busy, "kairos-shard-0000 is at its queue limit"),
    (protocol.Unavailable(reason="kairos-shard-0000 is recovering"), ShardUnavailable,
     "kairos-shard-0000 is recovering")], ids=["busy", "unavailable"])
def test_a_request_its_shard_refused_gives_up_the_rest_of_its_call(refusal, raised, reason):
    """A shard's BUSY or UNAVAILABLE leaves the request unapplied, as the client's own
    failures do: the customer's later events of the call, sent in a later batch, were applied
    without it."""
    async def main():
        backend = K0Refused(refusal)
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        call = Call()
        k0 = await client.enqueue(_event("k0"), call)
        k1 = client.enqueue(_event("k1"), call)  # after k0's answer: a batch of its own
        with pytest.raises(raised):
            await client.settle(_event("k0"), k0)
        with pytest.raises(NotSent) as k1_unsent:
            await client.settle(_event("k1"), await k1)
        assert str(k1_unsent.value) == f"not sent: an earlier event of its call failed: {reason}"
        assert await client.profile("ana") is None
        await client.close()

    asyncio.run(main())


class BusyThenMoved(LocalBackend):
    """The shard that k0 goes to answers it with a full queue's Busy (no reason: it saves the
    bytes), and by then the map gives k0's partition to another shard."""

    client: KairosClient

    async def send(self, name, session, seq, requests, routed):
        if not any(getattr(request, "idempotency_key", None) == "k0" for request in requests):
            return await super().send(name, session, seq, requests, routed)
        await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
        self.answered_by = name
        version, shards, owners = self.client.routes()
        other = next(i for i, shard in enumerate(shards) if shard != name)
        self.client._apply_map({"version": version + 1, "catalog_version":
                                self.client.catalog_version, "shards": shards,
                                "owners": np.full(len(owners), other, np.uint16).tobytes()})
        return [protocol.Busy()] * len(requests)


def test_a_full_queue_s_busy_names_the_shard_that_answered_not_the_owner_since():
    """The Busy is the answering shard's: an operator who reads it looks at that shard's
    queue, not at the shard a move made the owner meanwhile."""
    async def main():
        backend = BusyThenMoved()
        await backend.start_runtime(2, n_partitions=8)
        client = backend.client = await KairosClient(backend).connect()
        call = Call()
        k0 = await client.enqueue(_event("k0"), call)
        k1 = client.enqueue(_event("k1"), call)  # after k0's answer, to the owner since
        with pytest.raises(Busy) as refused:
            await client.settle(_event("k0"), k0)
        assert str(refused.value) == f"{backend.answered_by} is at its queue limit"
        assert client.owner("ana") != backend.answered_by  # the map moved on meanwhile
        with pytest.raises(NotSent) as k1_unsent:
            await client.settle(_event("k1"), await k1)
        assert str(k1_unsent.value) == (f"not sent: an earlier event of its call failed: "
                                        f"{backend.answered_by} is at its queue limit")
        await client.close()

    asyncio.run(main())


def test_a_request_found_invalid_gives_up_nothing_of_its_call():
    """Invalid is not a refusal of the call's order: the gateway checks an event's values
    before it routes it, so the rest of the call goes on."""
    async def main():
        backend = K0Refused(protocol.Invalid(field="attributes", reason="bad"))
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        call = Call()
        await client.enqueue(_event("k0"), call)
        assert isinstance(await client.enqueue(_event("k1"), call), protocol.EventAck)
        await client.close()

    asyncio.run(main())


class Sessions(K0Refused):
    """K0Refused that records each batch's session and number."""

    def __init__(self, reply: protocol.Reply) -> None:
        super().__init__(reply)
        self.sent: list[tuple[str, int]] = []

    async def send(self, name, session, seq, requests, routed):
        if requests:
            self.sent.append((session, seq))
        return await super().send(name, session, seq, requests, routed)


@pytest.mark.parametrize("refusal", [protocol.Busy(), protocol.Unavailable(reason="rebuilding")],
                         ids=["busy", "unavailable"])
def test_after_a_shards_refusal_the_client_sends_in_a_fresh_session(refusal):
    """A shard refuses the later batches of a session it refused one of (its sequencer), so
    the batches the client sends after hearing go in a fresh session, from 0."""
    async def main():
        backend = Sessions(refusal)
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        assert isinstance(await client.enqueue(_event("k-"), Call()), protocol.EventAck)
        refused = await client.enqueue(_event("k0"), Call())
        assert type(refused) is type(refusal)
        assert isinstance(await client.enqueue(_event("k1"), Call()), protocol.EventAck)
        (first, zero), (_, one), (fresh, again) = backend.sent
        assert (zero, one) == (0, 1) and fresh != first and again == 0
        await client.close()

    asyncio.run(main())


class K0Gated(LocalBackend):
    """k0's batch waits for `refuse` (then BUSY, applying nothing); others are applied."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: asyncio.Future | None = None
        self.sent: list[str] = []

    async def send(self, name, session, seq, requests, routed):
        keys = [getattr(request, "idempotency_key", None) for request in requests]
        self.sent += keys
        if "k0" not in keys:
            return await super().send(name, session, seq, requests, routed)
        await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
        self.refuse = asyncio.get_running_loop().create_future()
        await self.refuse
        return [protocol.Busy(reason="crowded")] * len(requests)


def test_a_call_given_up_by_a_refusal_is_not_sent_from_a_batch_numbered_before(monkeypatch):
    """k1's batch was numbered in the old session while k0's was out; k0's BUSY then gave up
    the call and started a fresh session before k1's call began: k1 is given up, not renumbered
    into the fresh session and applied without k0. (A zero batch window lets the pump number
    k1's batch one loop turn after k1 is enqueued, and k0's reply lands in that turn.)"""
    monkeypatch.setattr(batching, "CLIENT_BATCH_WINDOW_S", 0.0)

    async def main():
        backend = K0Gated()
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        call = Call()
        k0 = client.enqueue(_event("k0"), call)
        await until(lambda: backend.refuse, 5, "k0's batch sent")
        k1 = client.enqueue(_event("k1"), call)
        await asyncio.sleep(0)  # the pump takes k1 and waits its (zero) batch window
        backend.refuse.set_result(None)
        assert type(await k0) is protocol.Busy
        with pytest.raises(NotSent):
            await client.settle(_event("k1"), await asyncio.wait_for(k1, 5))
        assert backend.sent == ["k0"]
        assert await client.profile("ana") is None
        await client.close()

    asyncio.run(main())
