"""The shards' data path (cluster/transport/dataplane.py) on real sockets, without Ray: the handshake,
what a frame carries, overlapping calls and what a caller sees when a shard fails or goes."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kairos.cluster.protocol import (MOVED, OK, Event, EventAck, Moved, ReadProfile,
                                     request_from)
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.dataplane import (PlaneClosed, PlaneConnection, PlaneServer,
                                                ShardFailed)
from kairos.core.decision import Decision, Dropped, Explanation, RankedAction

INCARNATION = "a" * 32
RANKED = RankedAction("gold_card", "sell", "banner", 1.5, 0.25, 10.0, 0.6, 1.0)
DECISION = Decision("d-1", "c-1", "web", "hero", (RANKED,), "v3", 7, False,
                    Explanation((RANKED,), (Dropped("loan", "ELIGIBILITY", "age >= 18"),)))


async def _echo(session: str, seq: int, requests: list, routed: list) -> list:
    """A shard that answers each request with what it got, and a decision."""
    await asyncio.sleep(0.01 * (len(requests) == 1))  # one-request batches answer later
    return [("ok", session, seq, request, version, DECISION, np.int64(seq))
            for request, version in zip(requests, routed)]


async def _served(handle=_echo) -> tuple[PlaneServer, tuple[str, int]]:
    server = PlaneServer(handle, INCARNATION)
    return server, await server.start("127.0.0.1")


def test_frames_carry_requests_and_decisions_and_overlapping_calls_get_their_own_answers():
    async def main():
        server, (host, port) = await _served()
        connection = await PlaneConnection.open(host, port, INCARNATION)
        slow = asyncio.ensure_future(connection.call("s", 0, [("decide", 3, "c-1", {"x": 1.5})],
                                                     [2]))
        fast = await connection.call("s", 1, [("event", 3, "c-1", None), ("profile", 4, "c")],
                                     [2, 5])
        assert not slow.done()  # answered out of order: the fast call did not wait
        assert fast == (("ok", "s", 1, ("event", 3, "c-1", None), 2, DECISION, 1),
                        ("ok", "s", 1, ("profile", 4, "c"), 5, DECISION, 1))
        assert (await slow)[0][3] == ("decide", 3, "c-1", {"x": 1.5})
        await connection.close()
        server.close()

    asyncio.run(main())


def test_a_connection_naming_another_incarnation_is_refused():
    async def main():
        server, (host, port) = await _served()
        with pytest.raises(PlaneClosed, match="refused the handshake: expected protocol 2 "
                                              "and this shard's incarnation"):
            await PlaneConnection.open(host, port, "b" * 32)
        server.close()

    asyncio.run(main())


def test_a_failing_handler_fails_only_its_call_and_a_closed_server_fails_what_is_pending():
    async def handle(session, seq, requests, routed):
        if seq == 0:
            raise RuntimeError("a bug")
        await asyncio.sleep(3600)

    async def main():
        server, (host, port) = await _served(handle)
        connection = await PlaneConnection.open(host, port, INCARNATION)
        with pytest.raises(ShardFailed, match="the shard failed: RuntimeError: a bug"):
            await connection.call("s", 0, [("event",)], [1])
        assert not connection.closed  # only that call failed
        pending = asyncio.ensure_future(connection.call("s", 1, [("event",)], [1]))
        await asyncio.sleep(0.05)
        server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task(), pending}:
            task.cancel()  # the server's connection tasks: as if the shard's process died
        with pytest.raises(PlaneClosed):
            await asyncio.wait_for(pending, 5)
        assert connection.closed
        with pytest.raises(PlaneClosed, match="closed"):
            await connection.call("s", 2, [("event",)], [1])

    asyncio.run(main())


def test_values_without_a_msgpack_type_are_refused_by_the_sender():
    async def main():
        server, (host, port) = await _served()
        connection = await PlaneConnection.open(host, port, INCARNATION)
        with pytest.raises(TypeError, match="cannot carry a set"):
            await connection.call("s", 0, [("event", {1, 2})], [1])
        await connection.close()
        server.close()

    asyncio.run(main())


def test_concurrent_starts_listen_once():
    async def main():
        server = PlaneServer(_echo, INCARNATION)
        first, second = await asyncio.gather(server.start("127.0.0.1"),
                                             server.start("127.0.0.1"))
        assert first == second
        server.close()

    asyncio.run(main())


def test_the_backend_maps_every_failure_to_unavailable_and_reconnects_after_a_close():
    """RayBackend.send over real connections (the shard's address faked, not looked up
    through Ray): requests travel as arrays and come back as named replies, and a failed
    call never leaves its caller waiting."""
    from kairos.cluster.transport.ray_backend import RayBackend

    event = Event(partition=1, customer_id="ana", event_type="app_open", time=1.5)
    profile = ReadProfile(partition=2, customer_id="bob", now=2.0)

    async def main():
        failing = {"now": False}
        received = []

        async def handle(session, seq, requests, routed):
            if failing["now"]:
                raise RuntimeError("a bug")
            received.extend(request_from(r) for r in requests)
            return [(OK, seq, False, None) if r[0] == "event" else (MOVED, 9) for r in requests]

        servers = [PlaneServer(handle, INCARNATION)]
        addresses = [await servers[0].start("127.0.0.1")]
        backend = RayBackend()
        connects = []

        async def connect(name):
            connects.append(name)
            return await PlaneConnection.open(*addresses[-1], INCARNATION)

        backend._connect = connect
        assert await backend.send("s0", "a", 0, [event, profile], [1, 1]) == \
            [EventAck(sequence=0), Moved(map_version=9)]
        assert received == [event, profile]
        with pytest.raises(Unavailable, match="cannot be sent"):
            await backend.send("s0", "a", 1, [event._replace(attributes={"x": {1}})], [1])
        failing["now"] = True
        with pytest.raises(Unavailable, match="the shard failed"):
            await backend.send("s0", "a", 1, [event], [1])
        failing["now"] = False
        assert await backend.send("s0", "a", 2, [event], [1]) == [EventAck(sequence=2)]
        assert connects == ["s0"]  # one connection all along
        servers[0].close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # its connections go, as with a dead process
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable):
            await backend.send("s0", "a", 3, [event], [1])
        servers.append(PlaneServer(handle, INCARNATION))  # the restarted shard
        addresses.append(await servers[1].start("127.0.0.1"))
        assert await backend.send("s0", "b", 0, [event], [1]) == [EventAck(sequence=0)]
        assert connects == ["s0", "s0"]
        await backend.close()
        servers[1].close()

    asyncio.run(main())
