"""A shard's calls outlive no connection (cluster/transport/dataplane.py): a client that writes
past PLANE_INFLIGHT_CALLS, gives up and reconnects, again and again, leaves no calls running
behind it, and its closed connections stop counting against PLANE_CONNECTIONS."""
from __future__ import annotations

import asyncio

from kairos.cluster.settings import PLANE_INFLIGHT_CALLS
from kairos.cluster.transport import codec
from kairos.cluster.transport.dataplane import PlaneConnection, PlaneServer

from tests.support.waiting import until

ROUNDS = 20


def test_a_client_reconnecting_leaves_no_calls_running_nor_connections_counted():
    running: set[int] = set()
    cancelled = []
    never: list[asyncio.Event] = []  # held here: a task waiting on its own event alone is freed

    async def stuck(session: str, seq: int, requests: tuple, routed: tuple) -> list:
        """A handler that answers nothing, until cancelled."""
        running.add(id(asyncio.current_task()))
        try:
            await never[0].wait()
        except asyncio.CancelledError:
            cancelled.append(seq)
            raise
        finally:
            running.discard(id(asyncio.current_task()))
        return list(requests)

    async def main() -> None:
        never.append(asyncio.Event())
        server = PlaneServer(stuck)
        address = await server.start("127.0.0.1")
        try:
            for round_ in range(ROUNDS):  # as the reviewer's probe_inflight.py
                connection = await PlaneConnection.open(*address, server.secret)
                calls = [asyncio.ensure_future(connection.call(f"s{round_}", i, [b"x" * 1000],
                                                               [1]))
                         for i in range(PLANE_INFLIGHT_CALLS + 10)]
                await until(lambda: len(running) >= PLANE_INFLIGHT_CALLS, 10,
                            "the connection's calls at its cap")
                for call in calls:
                    call.cancel()
                await connection.close()
                await until(lambda: not running, 10, f"round {round_}'s calls cancelled")
            await until(lambda: not server._serving, 10, "the closed connections uncounted")
            # the calls past the cap were never read, so never started
            assert len(cancelled) == ROUNDS * PLANE_INFLIGHT_CALLS
        finally:
            server.close()

    asyncio.run(main())


def test_calls_pipelined_far_past_the_cap_are_all_answered(monkeypatch):
    """Review rev42 d-plane finding 1: each call taken at the cap read another chunk ahead,
    so a connection's unread backlog grew by a chunk a freed slot, past the frame limit,
    and the connection was dropped with every call on it. It holds one chunk ahead now."""
    monkeypatch.setitem(codec._LIMITS, "max_buffer_size", 256 << 10)

    async def slow(session: str, seq: int, requests: tuple, routed: tuple) -> list:
        await asyncio.sleep(0.005)
        return list(requests)

    async def main() -> None:
        server = PlaneServer(slow)
        address = await server.start("127.0.0.1")
        connection = await PlaneConnection.open(*address, server.secret)
        try:
            answers = await asyncio.gather(*(connection.call("s", i, [b"x" * 200], [1])
                                             for i in range(3000)))
            assert len(answers) == 3000
        finally:
            await connection.close()
            server.close()

    asyncio.run(asyncio.wait_for(main(), 120))
