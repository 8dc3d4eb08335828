"""IngestStream and IngestBatch apply a customer's events in the order the caller sent them,
whether an event names the customer by id or by an alias linked to it; and IngestBatch is
taken whole or refused whole by the per-shard queue bound (CLIENT_QUEUE_LIMIT), so that a
retry of a refused batch applies nothing twice. The handlers are called directly over the
in-process backend (no gRPC server)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster import protocol
from kairos.cluster.gateway import auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.decisions import DecisionService
from kairos.cluster.protocol import Resolve
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.client import KairosClient
from kairos.v1 import decision_pb2 as pb

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

RESOLVE_DELAY_S = 0.05  # an alias resolves a round trip later than an event by id is sent


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Context:
    """The part of a grpc.aio context the handlers use."""

    def time_remaining(self) -> float:
        return 20.0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class SlowResolves(LocalBackend):
    """Calls carrying a Resolve answer RESOLVE_DELAY_S late; others wait for `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0  # calls held at the gate

    async def send(self, name, session, seq, requests, routed):
        if any(isinstance(request, Resolve) for request in requests):
            await asyncio.sleep(RESOLVE_DELAY_S)
        elif not self.gate.is_set():
            self.waiting += 1
            await self.gate.wait()
        return await super().send(name, session, seq, requests, routed)


async def _service(backend: LocalBackend) -> tuple[DecisionService, KairosClient]:
    auth._caller.set(None)  # no keys: as the interceptor leaves it when auth is off
    await backend.start_runtime(1, n_partitions=16)
    client = await KairosClient(backend).connect()
    gateway = Gateway("g", client, backend)
    await gateway.refresh_catalog()
    return DecisionService(gateway), client


def event(event_id: str, customer_id: str = "", cookie: str = "", device: str = "") -> pb.Event:
    named = ({"customer_id": customer_id} if customer_id else
             {"alias": pb.Alias(type="cookie", value=cookie)} if cookie else
             {"alias": pb.Alias(type="device", value=device)})
    return pb.Event(event_id=event_id, type="app_open", channel="web", **named)


# alias events and id events of one customer, interleaved; "other" is another customer
MIXED = [event("1", cookie="c1"), event("2", customer_id="ana"), event("3", device="d1"),
         event("4", customer_id="other"), event("5", cookie="c1"), event("6", customer_id="ana")]


async def _events(events: list[pb.Event]):
    for e in events:
        yield e


@pytest.mark.parametrize("method", ["IngestStream", "IngestBatch"])
def test_a_customers_events_apply_in_the_order_sent_by_alias_or_by_id(method):
    """An event by alias was sent only once its alias resolved, an event by id at once: "by
    alias, then by id" for one customer was applied the other way round."""
    async def main():
        service, client = await _service(SlowResolves())
        await client.link("cookie", "c1", "ana")
        await client.link("device", "d1", "ana")
        if method == "IngestStream":
            acks = [a async for a in service.IngestStream(_events(MIXED), Context())]
        else:
            acks = list((await service.IngestBatch(pb.EventBatch(events=MIXED),
                                                   Context())).acks)
        profile = await client.profile("ana")
        await client.close()
        return acks, profile

    acks, profile = asyncio.run(main())
    sequences = {ack.event_id: ack.sequence for ack in acks}
    assert [ack.event_id for ack in acks] == ["1", "2", "3", "4", "5", "6"]
    assert [sequences[i] for i in "12356"] == [1, 2, 3, 4, 5]  # ana's, in the order sent
    assert sequences["4"] == 1 and profile["events_applied"] == 5


def test_a_batch_without_room_at_its_shard_is_refused_whole_and_its_retry_applies_once(
        monkeypatch):
    """The queue bound was checked per event as each was queued: a batch refused part-way
    had its first events applied, and a retry applied them again."""
    monkeypatch.setattr(client_module, "CLIENT_QUEUE_LIMIT", 300)
    monkeypatch.setattr(client_module, "CLIENT_INFLIGHT_CALLS", 1)

    def batch(tag: str) -> pb.EventBatch:
        return pb.EventBatch(events=[event(f"{tag}{i}", customer_id=f"{tag}-{i}")
                                     for i in range(200)])

    async def main():
        backend = SlowResolves()
        service, client = await _service(backend)
        backend.gate.clear()
        first = asyncio.ensure_future(service.IngestBatch(batch("a"), Context()))
        await until(lambda: backend.waiting, 5, "the first batch sent, held at the gate")
        second = asyncio.ensure_future(service.IngestBatch(batch("b"), Context()))
        await until(lambda: client._waiting_for(client.owner("b-0")) == 200, 5,
                    "the second batch queued behind the first")
        with pytest.raises(Aborted) as refused:  # 200 + 200 > 300
            await service.IngestBatch(batch("c"), Context())
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        backend.gate.set()
        assert len((await first).acks) == len((await second).acks) == 200
        assert [await client.profile(f"c-{i}") for i in range(200)] == [None] * 200
        retried = await service.IngestBatch(batch("c"), Context())
        assert [ack.sequence for ack in retried.acks] == [1] * 200
        await client.close()

    asyncio.run(main())


def test_events_behind_an_alias_that_does_not_resolve_are_not_sent():
    """The stream ends with the alias's failure, in its turn (after the slower ack of the
    event before it); the events read after it were waiting behind it, so none of them is
    applied."""
    class NoResolves(LocalBackend):
        """Answers each Resolve Unavailable, RESOLVE_DELAY_S late; other calls later still
        (once applied: the shard takes the next call meanwhile)."""

        async def send(self, name, session, seq, requests, routed):
            if not any(isinstance(request, Resolve) for request in requests):
                replies = await super().send(name, session, seq, requests, routed)
                await asyncio.sleep(3 * RESOLVE_DELAY_S)
                return replies
            await asyncio.sleep(RESOLVE_DELAY_S)
            others = iter(await super().send(
                name, session, seq, [r for r in requests if not isinstance(r, Resolve)],
                [v for r, v in zip(requests, routed) if not isinstance(r, Resolve)]))
            return [protocol.Unavailable(reason="its shard is restarting")
                    if isinstance(r, Resolve) else next(others) for r in requests]

    async def main():
        service, client = await _service(NoResolves())
        acks = []
        with pytest.raises(Aborted) as ended:
            async for ack in service.IngestStream(_events(
                    [event("0", customer_id="zed"), event("1", cookie="c1"),
                     event("2", customer_id="ana"), event("3", customer_id="bob")]), Context()):
                acks.append(ack.event_id)
        assert acks == ["0"] and ended.value.code == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(3 * RESOLVE_DELAY_S)  # anything sent regardless is applied by now
        assert [await client.profile(c) for c in ("ana", "bob")] == [None, None]
        await client.close()

    asyncio.run(main())
