"""The shards' data path (cluster/transport/dataplane.py) on real sockets, without Ray: the
handshake, what a frame carries, overlapping calls, what a caller sees when a shard fails or
goes, and a client finding a restarted shard (hostile traffic: test_dataplane_hostile.py;
which handshakes may wait: test_admission.py)."""
from __future__ import annotations

import asyncio
import logging
import socket

import msgpack
import numpy as np
import pytest

from kairos.cluster.protocol import (MOVED, OK, Event, EventAck, Moved, ReadProfile,
                                     request_from)
from kairos.cluster.settings import CLIENT_BATCH_LIMIT
from kairos.cluster.transport import codec, dataplane
from kairos.cluster.transport.backend import NotCarried, NotSent, Unavailable
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.dataplane import (PlaneClosed, PlaneConnection, PlaneServer,
                                                ShardFailed)
from kairos.core.decision import Decision, Dropped, Explanation, RankedAction

from tests.support.waiting import until

RANKED = RankedAction("gold_card", "sell", "banner", 1.5, 0.25, 10.0, 0.6, 1.0)
DECISION = Decision("d-1", "c-1", "web", "hero", (RANKED,), "v3", 7, False,
                    Explanation((RANKED,), (Dropped("loan", "ELIGIBILITY", "age >= 18"),)))


async def _echo(session: str, seq: int, requests: list, routed: list) -> list:
    """A shard that answers each request with what it got, and a decision."""
    await asyncio.sleep(0.01 * (len(requests) == 1))  # one-request batches answer later
    return [("ok", session, seq, request, version, DECISION, np.int64(seq))
            for request, version in zip(requests, routed)]


async def _served(handle=_echo) -> tuple[PlaneServer, tuple[str, int]]:
    server = PlaneServer(handle)
    return server, await server.start("127.0.0.1")


def _backend_on(server: PlaneServer, address: tuple[str, int]):
    """A RayBackend whose every shard is `server` at `address` (its connect replaced: no
    Ray)."""
    from kairos.cluster.transport.ray_backend import RayBackend
    backend = RayBackend()

    async def connect(name):
        return await PlaneConnection.open(*address, server.secret)

    backend._connect = connect
    return backend


def _sequenced(sequencer):
    """A shard's handler that takes each batch in its session's turn and echoes it."""
    async def handle(session, seq, requests, routed):
        await sequencer.turn(session, seq)
        return list(requests)
    return handle


def test_frames_carry_requests_and_decisions_and_overlapping_calls_get_their_own_answers():
    async def main():
        server, (host, port) = await _served()
        connection = await PlaneConnection.open(host, port, server.secret)
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


def test_a_connection_that_cannot_prove_the_secret_is_refused():
    async def main():
        server, (host, port) = await _served()
        with pytest.raises(PlaneClosed, match="refused the handshake: wrong proof of this "
                                              "shard's secret"):
            await PlaneConnection.open(host, port, b"b" * 32)
        restarted, _ = await _served()  # another incarnation's secret
        with pytest.raises(PlaneClosed, match="wrong proof"):
            await PlaneConnection.open(host, port, restarted.secret)
        server.close()
        restarted.close()

    asyncio.run(main())


def test_a_failing_handler_fails_only_its_call_and_a_closed_server_fails_what_is_pending():
    handling = asyncio.Event()

    async def handle(session, seq, requests, routed):
        if seq == 0:
            raise RuntimeError("a bug")
        handling.set()
        await asyncio.sleep(3600)  # a shard that never answers

    async def main():
        server, (host, port) = await _served(handle)
        connection = await PlaneConnection.open(host, port, server.secret)
        with pytest.raises(ShardFailed, match="the shard failed: RuntimeError: a bug"):
            await connection.call("s", 0, [("event",)], [1])
        assert not connection.closed  # only that call failed
        pending = asyncio.ensure_future(connection.call("s", 1, [("event",)], [1]))
        await asyncio.wait_for(handling.wait(), 5)  # the shard has the call
        server.close()  # it drops its connections, as if the shard's process died
        with pytest.raises(PlaneClosed):
            await asyncio.wait_for(pending, 5)
        assert connection.closed
        with pytest.raises(NotSent, match="closed") as closed:  # it never left
            await connection.call("s", 2, [("event",)], [1])
        assert closed.value.gapped  # a call went unanswered: it goes in a fresh session

    asyncio.run(main())


def test_values_without_a_msgpack_type_are_refused_by_the_sender():
    async def main():
        server, (host, port) = await _served()
        connection = await PlaneConnection.open(host, port, server.secret)
        with pytest.raises(TypeError, match="cannot carry a set"):
            await connection.call("s", 0, [("event", {1, 2})], [1])
        await connection.close()
        server.close()

    asyncio.run(main())


def test_a_vector_travels_packed_as_little_endian_float64():
    async def main():
        server, (host, port) = await _served()
        connection = await PlaneConnection.open(host, port, server.secret)
        vector = np.array([1, -2.5, 3e300])
        [answer] = await connection.call("s", 0, [("decide", 3, "c-1", {"x": vector,
                                                                        "n": np.arange(2)})],
                                         [1])
        context = answer[3][3]
        assert context["x"] == vector.astype("<f8").tobytes()
        assert np.frombuffer(context["n"], "<f8").tolist() == [0.0, 1.0]
        for bad in (np.zeros((2, 2)), np.array([True, False]), np.array(["a"])):
            with pytest.raises(TypeError, match="cannot carry a ndarray"):
                await connection.call("s", 1, [("decide", bad)], [1])
        await connection.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("fields", [[], [1], ["c", "web", 0.0, "not actions"]])
def test_an_ext_without_the_fields_of_its_type_is_a_bad_frame(fields):
    """Not an error the server's connection handler misses (an unhandled-exception
    traceback per frame: a log flood)."""
    unpacker = codec._unpacker()
    unpacker.feed(msgpack.packb([0, "s", 0, (msgpack.ExtType(1, msgpack.packb(fields)),),
                                 (1,)]))
    with pytest.raises(codec._BAD_FRAME):
        next(unpacker)


def test_a_failed_listen_is_tried_again(monkeypatch):
    async def main():
        server = PlaneServer(_echo)
        real = asyncio.start_server

        async def out_of_descriptors(*args, **kwargs):
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(dataplane.asyncio, "start_server", out_of_descriptors)
        with pytest.raises(OSError, match="Too many open files"):
            await server.start("127.0.0.1")
        monkeypatch.setattr(dataplane.asyncio, "start_server", real)
        assert (await server.start("127.0.0.1"))[0] == "127.0.0.1"
        server.close()

    asyncio.run(main())


def test_concurrent_starts_listen_once():
    async def main():
        server = PlaneServer(_echo)
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
            replies = [(OK, seq, False, None) if r[0] == "event" else (MOVED, 9)
                       for r in requests]
            return replies[:1] if failing.get("short") else replies

        servers = [PlaneServer(handle)]
        addresses = [await servers[0].start("127.0.0.1")]
        backend = RayBackend()
        connects = []

        async def connect(name):
            connects.append(name)
            return await PlaneConnection.open(*addresses[-1], servers[-1].secret)

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
        failing["short"] = True  # a reply each, or every caller hears Unavailable
        with pytest.raises(Unavailable, match="1 replies to a batch of 2"):
            await backend.send("s0", "a", 3, [event, event], [1, 1])
        failing["short"] = False
        assert connects == ["s0"]  # one connection all along
        connection = backend._planes["s0"].result()
        servers[0].close()  # its connections go, as with a dead process
        await until(lambda: connection.closed, 5, "the connection to close")
        with pytest.raises(NotSent):  # the connection had closed: the batch never left
            await backend.send("s0", "a", 3, [event], [1])
        servers.append(PlaneServer(handle))  # the restarted shard
        addresses.append(await servers[1].start("127.0.0.1"))
        assert await backend.send("s0", "b", 0, [event], [1]) == [EventAck(sequence=0)]
        assert connects == ["s0", "s0"]
        await backend.close()
        servers[1].close()

    asyncio.run(main())


class _OneShardMap:
    """A controller whose map never changes: every partition on shard s0."""

    async def get_map(self, known_version: int, timeout_s: float = 0.0) -> dict | None:
        if known_version == 1:
            await asyncio.Event().wait()
        return {"version": 1, "catalog_version": "v1", "shards": ["s0"],
                "owners": np.zeros(16, np.uint16).tobytes()}


def test_a_client_sends_to_a_restarted_shard_what_it_had_not_sent_yet():
    """Issue item 19: every shard killed (kill -9) while the client was idle, then back: the
    next Ingest used to fail with "the connection is closed" instead of reaching the new
    incarnation. Batches that never left go again, on a fresh connection."""
    from kairos.cluster.transport.ray_backend import RayBackend

    async def handle(session, seq, requests, routed):
        return [(OK, seq, False, None)] * len(requests)

    async def main():
        servers = [PlaneServer(handle)]
        addresses = [await servers[0].start("127.0.0.1")]
        backend = RayBackend()

        async def connect(name):
            return await PlaneConnection.open(*addresses[-1], servers[-1].secret)

        backend._connect = connect
        controller = _OneShardMap()
        backend.controller = lambda: controller
        client = await KairosClient(backend).connect()
        assert await client.ingest("ana", "app_open", 1.0) == 0
        connection = backend._planes["s0"].result()
        servers[0].close()  # killed: its connections close under the idle client
        await until(lambda: connection.closed, 5, "the connection to close")
        servers.append(PlaneServer(handle))  # restarted, with a new secret and port
        addresses.append(await servers[1].start("127.0.0.1"))
        sent = await asyncio.gather(*(client.ingest(c, "app_open", 2.0)
                                      for c in ("ana", "bob", "cy")))
        assert sent == [0, 0, 0]  # one batch, sent again as batch 0 of a fresh session
        await client.close()
        servers[1].close()

    asyncio.run(main())


def test_a_batch_the_plane_cannot_carry_fails_alone_and_leaves_its_session_no_gap():
    """A request msgpack cannot pack fails its batch before anything is sent. The batches
    numbered after it were answered only after PLANE_CALL_S (30 s), and then failed, as the
    shard's sequencer waited for the missing number: an empty batch takes it now."""
    from kairos.cluster.shard.sequencer import Sequencer
    sequencer = Sequencer()

    async def handle(session, seq, requests, routed):
        await sequencer.turn(session, seq)
        await asyncio.sleep(0.01)  # in flight long enough for the next batches to queue
        return [(OK, seq, False, None)] * len(requests)

    async def main():
        server, address = await _served(handle)
        backend = _backend_on(server, address)
        controller = _OneShardMap()
        backend.controller = lambda: controller
        client = await KairosClient(backend).connect()
        await client.ingest("warm", "app_open", 1.0)  # the shard knows the session
        events = [Event(partition=0, customer_id="big", event_type="e", time=1.0,
                        attributes={"n": 2 ** 70})] + [
            Event(partition=0, customer_id=f"c{i}", event_type="e", time=1.0)
            for i in range(1, 1100)]
        async with asyncio.timeout(5):
            replies = await asyncio.gather(*(client.enqueue(e) for e in events))
        refused = []
        for event, reply in zip(events, replies):
            try:
                await client.settle(event, reply)
            except NotCarried as exc:
                refused.append(exc)
        assert refused and all("cannot be sent" in str(exc) for exc in refused)
        assert len(refused) <= CLIENT_BATCH_LIMIT  # its batch, and no other
        await client.close()
        server.close()

    asyncio.run(main())


def test_a_gapped_call_gets_the_shards_error_and_leaves_the_connection_open(monkeypatch):
    """Review finding: the shard's sequencer waited PLANE_CALL_S for a session's gap to fill,
    as long as the client's own deadline for the call, which began earlier (when it wrote
    it): the client gave up first and dropped the connection, failing every call on it as
    maybe applied, where the shard's error would have failed that call alone as not."""
    from kairos.cluster.shard import sequencer as sequencing
    monkeypatch.setattr(dataplane, "PLANE_CALL_S", 1.2)
    monkeypatch.setattr(sequencing, "PLANE_CALL_S", 1.2)
    sequencer = sequencing.Sequencer(start_s=0.05)

    async def main():
        server, address = await _served(_sequenced(sequencer))
        connection = await PlaneConnection.open(*address, server.secret)
        assert await connection.call("s", 0, ["a"], [1]) == ("a",)
        with pytest.raises(ShardFailed, match="did not come in time"):
            await connection.call("s", 2, ["b"], [1])  # batch 1 never comes
        assert not connection.closed
        assert await connection.call("t", 0, ["c"], [1]) == ("c",)  # another session's
        await connection.close()
        server.close()

    asyncio.run(main())


def test_a_batch_out_of_turn_is_logged_as_a_warning_without_a_traceback(caplog):
    """Review finding: each replayed or gapped batch was logged with its traceback, as a bug
    in the shard: its sender's doing is a warning, and a stream of them one a while."""
    from kairos.cluster.shard.sequencer import Sequencer
    sequencer = Sequencer(start_s=0.05)

    async def main():
        server, address = await _served(_sequenced(sequencer))
        connection = await PlaneConnection.open(*address, server.secret)
        await connection.call("s", 0, ["a"], [1])
        for _ in range(3):
            with pytest.raises(ShardFailed, match="OutOfTurn: batch 0 of a session at batch 1"):
                await connection.call("s", 0, ["a"], [1])  # a replay
        await connection.close()
        server.close()

    with caplog.at_level(logging.DEBUG, "kairos.dataplane"):
        asyncio.run(main())
    assert "batch 0 of a session at batch 1" in one_quiet_warning(caplog)


def one_quiet_warning(caplog) -> str:
    """The data plane's only log record, a warning without a traceback: its message."""
    logged = [r for r in caplog.records if r.name == "kairos.dataplane"]
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)]
    return logged[0].getMessage()


def test_a_shard_that_never_answers_fails_its_calls_after_the_deadline(monkeypatch):
    """A stopped shard (kill -STOP) keeps its connections open and TCP keepalive never
    notices: without a deadline its calls stay in flight for good. After PLANE_CALL_S they
    fail, every call on that connection with them, and the connection is dropped."""
    from kairos.cluster.transport import dataplane
    monkeypatch.setattr(dataplane, "PLANE_CALL_S", 0.3)
    wedged = asyncio.Event()

    async def never(session, seq, requests, routed):
        await wedged.wait()
        return []

    async def main():
        server, (host, port) = await _served(never)
        connection = await PlaneConnection.open(host, port, server.secret)
        calls = [asyncio.ensure_future(connection.call("s", i, [("profile", 4, "c")], [1]))
                 for i in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, PlaneClosed) for r in results), results
        assert "did not answer within 0.3 s" in str(results[0])
        assert connection.closed
        with pytest.raises(NotSent) as unsent:  # it never left, behind calls that were lost
            await connection.call("s", 3, [("profile", 4, "c")], [1])
        assert unsent.value.gapped
        wedged.set()
        await connection.close()
        server.close()

    asyncio.run(main())


def test_a_cancelled_call_is_forgotten_and_counts_as_unanswered():
    """Review finding: a call whose caller was cancelled left its entry in the pending calls
    and the connection not lost: once the shard answered it (it took the batch), a later call
    on the closed connection was told no batch went unanswered, though its caller never
    learned the answer."""
    answer = asyncio.Event()
    taken = []

    async def held(session, seq, requests, routed):
        taken.append(seq)
        await answer.wait()
        return list(requests)

    async def main():
        server, (host, port) = await _served(held)
        connection = await PlaneConnection.open(host, port, server.secret)
        call = asyncio.ensure_future(connection.call("s", 0, [("profile", 4, "c")], [1]))
        await until(lambda: taken, 5, "the shard to take the batch")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert connection._pending == {}
        answer.set()  # the shard answers the call nobody waits for any more
        assert await connection.call("s", 1, [("profile", 4, "c")], [1]) == \
            (("profile", 4, "c"),)  # the connection serves on
        server.close()
        await until(lambda: connection.closed, 5, "the connection to close")
        with pytest.raises(NotSent) as unsent:
            await connection.call("s", 2, [("profile", 4, "c")], [1])
        assert unsent.value.gapped
        await connection.close()

    asyncio.run(main())


def _listening(rcvbuf: int) -> socket.socket:
    """A socket listening on 127.0.0.1 whose connections take at most about `rcvbuf` bytes
    that their process has not read (the kernel's default grows to megabytes)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_shard_that_stopped_reading_fails_its_calls_after_the_deadline(monkeypatch):
    """Review finding: a shard alive but not reading (kill -STOP, a blocked loop) and a batch
    larger than the socket buffers held the call in drain() for good, outside PLANE_CALL_S,
    and every call behind it; close() waited for the unsent bytes to flush, so the socket,
    the bytes and the calls stayed."""
    monkeypatch.setattr(dataplane, "PLANE_CALL_S", 0.3)
    secret = b"s" * 32

    async def wedged(reader, writer):  # greets, then never reads again
        nonce = b"n" * dataplane.NONCE_BYTES
        writer.write(dataplane._CHALLENGE.pack(dataplane.MAGIC, dataplane.PROTOCOL, nonce))
        *_, client_nonce, _ = dataplane._RESPONSE.unpack(
            await reader.readexactly(dataplane._RESPONSE.size))
        writer.write(b"\x01" + dataplane._proof(secret, b"shard", nonce, client_nonce))
        await asyncio.Event().wait()

    async def main():
        shard = await asyncio.start_server(wedged, sock=_listening(1 << 16))
        connection = await PlaneConnection.open(*shard.sockets[0].getsockname(), secret)
        started = asyncio.get_running_loop().time()
        calls = [asyncio.ensure_future(connection.call("s", 0, [("event", "x" * (16 << 20))],
                                                       [1])),
                 asyncio.ensure_future(connection.call("s", 1, [("profile", 4, "c")], [1]))]
        done, _ = await asyncio.wait(calls, timeout=5)
        assert done == set(calls), "a call outlived PLANE_CALL_S"
        assert all(isinstance(call.exception(), PlaneClosed) for call in calls)
        assert asyncio.get_running_loop().time() - started < 3
        await asyncio.wait_for(connection.close(), 2)
        assert connection._writer.get_extra_info("socket").fileno() == -1
        shard.close()

    asyncio.run(main())


def test_a_shard_drops_a_client_that_reads_no_answer_for_the_deadline(monkeypatch):
    """Review finding: the shard's write of an answer had no deadline either: a client that
    stopped reading held the connection, its slot and the unsent answer for good."""
    monkeypatch.setattr(dataplane, "PLANE_CALL_S", 0.3)

    async def large(session, seq, requests, routed):
        return ["x" * (16 << 20)]

    async def main():
        server, address = await _served(large)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.connect(address)
        reader, writer = await asyncio.open_connection(sock=sock)
        await PlaneConnection._handshake(reader, writer, server.secret)
        writer.write(dataplane._pack([0, "s", 0, [("profile", 4, "c")], [1]]))
        await until(lambda: server._serving, 5, "the client to be served")
        await until(lambda: not server._serving, 3, "the shard to drop the client")
        writer.close()
        server.close()

    asyncio.run(main())
