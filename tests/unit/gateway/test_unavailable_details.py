"""A call that ends UNAVAILABLE tells its caller whether the request may have been applied,
never the transport's or the shard's detail (shard names, socket errors, paths, exception
classes): that is logged at the gateway, at most once a UNAVAILABLE_LOG_S."""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from kairos.cluster.gateway import calls, ingesting
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.protocol import BEING_FORGOTTEN, Event
from kairos.cluster.transport.backend import NotCarried, NotSent, Unavailable
from kairos.cluster.transport.client import ShardUnavailable
from kairos.cluster.transport.dataplane import PlaneServer

INTERNAL = "OSError: [Errno 28] No space left on device: '/var/lib/kairos/journals/s0'"
LEAKS = ("kairos-shard-0003", "Errno", "OSError", "/var/lib", "StoreCorrupt")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def _aborted(exc: BaseException) -> Aborted:
    with pytest.raises(Aborted) as aborted:
        await calls.abort(Context(), exc)
    return aborted.value


@pytest.fixture(autouse=True)
def _logs_each(monkeypatch):
    # an earlier test's log holds none back
    monkeypatch.setattr(calls, "_UNAVAILABLE_DETAIL",
                        ThrottledWarning(calls.log, calls.UNAVAILABLE_LOG_S))


@pytest.mark.parametrize("exc, told", [
    (Unavailable(f"kairos-shard-0003: {INTERNAL}"), calls.NO_ANSWER),
    (NotSent(f"kairos-shard-0003: no connection: {INTERNAL}"), calls.NOT_SENT),
    (NotCarried(f"kairos-shard-0003: the batch cannot be sent: {INTERNAL}"), calls.NOT_CARRIED),
    (ShardUnavailable(f"kairos-shard-0003: journal: {INTERNAL}"), calls.SHARD_FAILED),
    (ShardUnavailable("this customer's stored profile (partition 7) is damaged: StoreCorrupt: "
                      "/var/lib/kairos/customers/p7/ab.blk"),
     calls.DAMAGED_TOLD),  # README, Corruption: no partition (a guessed id checks against it)
])
def test_the_caller_is_told_what_happened_and_the_log_has_the_detail(exc, told, caplog):
    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        aborted = asyncio.run(_aborted(exc))
    assert aborted.code == grpc.StatusCode.UNAVAILABLE and aborted.details == told
    assert not [leak for leak in LEAKS if leak in aborted.details]
    assert str(exc) in caplog.text and type(exc).__name__ in caplog.text


def test_a_shards_internal_error_over_the_data_plane_reaches_only_the_log(caplog):
    """The error frame of a shard whose handler raised names the exception's class and
    message; through RayBackend the call ends UNAVAILABLE saying the shard failed it."""
    from tests.unit.transport.test_dataplane import _backend_on

    async def handle(session, seq, requests, routed):
        raise OSError(28, "No space left on device", "/var/lib/kairos/journals/s0")

    async def main() -> Aborted:
        server = PlaneServer(handle)
        backend = _backend_on(server, await server.start("127.0.0.1"))
        try:
            with pytest.raises(Unavailable) as failed:
                await backend.send("kairos-shard-0003", "a", 0,
                                   [Event(customer_id="ana", event_type="e", time=1.0)], [1])
            return await _aborted(failed.value)
        finally:
            await backend.close()
            server.close()

    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        aborted = asyncio.run(main())
    assert aborted.code == grpc.StatusCode.UNAVAILABLE and aborted.details == calls.SHARD_FAILED
    assert not [leak for leak in LEAKS if leak in aborted.details]
    assert "kairos-shard-0003" in caplog.text and "OSError" in caplog.text
    assert "/var/lib/kairos/journals/s0" in caplog.text


def test_the_detail_is_logged_at_most_once_a_while(caplog):
    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        for n in range(3):
            asyncio.run(_aborted(Unavailable(f"kairos-shard-000{n}: gone")))
    assert "kairos-shard-0000" in caplog.text and "kairos-shard-0001" not in caplog.text


def test_a_batch_whose_one_event_was_not_sent_is_not_said_to_be_unapplied(monkeypatch):
    """IngestBatch ends with its first failing event's status; the events before it were
    applied (and those after it may be): an event not sent must not make the whole call "not
    applied", or a caller retrying without keys applies the others twice."""
    from kairos.cluster import protocol
    from kairos.cluster.transport import client as client_module
    from kairos.v1 import decision_pb2 as pb
    from kairos.v1.decision_pb2_grpc import DecisionServiceStub
    from tests.support.inprocess_gateway import serving
    from tests.support.local_backend import LocalBackend

    for name, value in (("MAX_REDIRECTS", 1), ("CLIENT_REROUTES", 1),
                        ("CLIENT_REROUTE_S", 0.05), ("LONG_POLL_S", 0.02)):
        monkeypatch.setattr(client_module, name, value)
    applied = []

    class BobMoves(LocalBackend):
        """Applies every event but bob's, whose partition is never its shard's."""

        async def send(self, name, session, seq, requests, routed):
            kept = [i for i, r in enumerate(requests) if getattr(r, "customer_id", "") != "bob"]
            replies = [protocol.Moved(map_version=protocol.NOT_MINE)] * len(requests)
            answered = await super().send(name, session, seq, [requests[i] for i in kept],
                                          [routed[i] for i in kept])
            for i, reply in zip(kept, answered):
                replies[i] = reply
            applied.extend(requests[i].customer_id for i in kept)
            return replies

    batch = pb.EventBatch(events=[pb.Event(customer_id=c, type="app_open", channel="web")
                                  for c in ("ana", "bob", "cy")])
    with serving(backend=BobMoves()) as (_, channel):
        with pytest.raises(grpc.RpcError) as failed:
            DecisionServiceStub(channel).IngestBatch(batch, timeout=20)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ana" in applied and failed.value.details() != calls.NOT_SENT
    assert "may have been applied" in failed.value.details()


def test_a_call_that_ends_on_an_event_left_unsent_for_an_earlier_one_says_so():
    """k0 refused BUSY gives up the rest of its call; a stream or a batch that ends on k1,
    left unsent for it, tells the caller why and that nothing after k0 was applied (not that
    the shard did not answer), without the refusal's detail."""
    from kairos.cluster.gateway.ingesting import _of_many
    from kairos.cluster import protocol
    from kairos.cluster.transport.client import KairosClient
    from kairos.cluster.transport.lanes import Call
    from tests.unit.transport.test_call_failures import K0Refused, _event

    async def main() -> Aborted:
        backend = K0Refused(protocol.Unavailable(reason=f"kairos-shard-0003: {INTERNAL}"))
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        try:
            call = Call()
            await client.enqueue(_event("k0"), call)
            with pytest.raises(NotSent) as unsent:
                await client.settle(_event("k1"), await client.enqueue(_event("k1"), call))
        finally:
            await client.close()
        return await _aborted(_of_many(unsent.value))

    aborted = asyncio.run(main())
    assert aborted.code == grpc.StatusCode.UNAVAILABLE and aborted.details == calls.EARLIER_FAILED
    assert not [leak for leak in LEAKS if leak in aborted.details]


def test_a_call_of_several_events_ended_by_a_forget_says_its_other_events_may_be_applied():
    # "nothing was applied" is true of the refused event only: other customers' events of the
    # batch or stream were, and a caller told otherwise would resend them without their keys
    with pytest.raises(Aborted) as aborted:
        asyncio.run(calls.abort(Context(), ingesting._of_many(ShardUnavailable(BEING_FORGOTTEN))))
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    assert aborted.value.details == calls.FORGOTTEN_IN_CALL
    assert "may have been" in aborted.value.details and "being forgotten" in aborted.value.details


def test_a_request_for_a_customer_being_forgotten_is_told_to_retry_the_forget():
    # nothing was applied: "may have been applied" would invite retrying the request itself
    with pytest.raises(Aborted) as aborted:
        asyncio.run(calls.abort(Context(), ShardUnavailable(BEING_FORGOTTEN)))
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    assert aborted.value.details == BEING_FORGOTTEN
    assert "nothing was applied" in BEING_FORGOTTEN and "may have been" not in BEING_FORGOTTEN
