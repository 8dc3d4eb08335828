"""The client's links to shards that left the map go once idle, with their pump tasks, the
backend's connections to them and the counts of requests that waited for them: shard names
are never reused, so autoscaling grew all of these without bound in a long-lived gateway. A
request in flight to a retiring shard still gets its answer, and its link goes after."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.protocol import OK
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.dataplane import PlaneConnection, PlaneServer

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

T0 = 1_795_629_600.0


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(client_module, "LONG_POLL_S", 0.05)  # the client polls the map often


class HeldReplies(LocalBackend):
    """Shards apply what they are sent at once, but while `holding` their replies wait for
    `release`; `disconnected` lists the shards the client let go."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.release = asyncio.Event()
        self.disconnected: list[str] = []

    async def send(self, name, session, seq, requests, routed):
        replies = await super().send(name, session, seq, requests, routed)
        if self.holding:
            await self.release.wait()
        return replies

    async def disconnect(self, name: str) -> None:
        self.disconnected.append(name)


def pumps() -> int:
    return sum(task.get_coro().__qualname__ == "Batching._pump" for task in asyncio.all_tasks())


async def left_behind(client: KairosClient, used: set[str], backend: HeldReplies) -> None:
    """Wait for the links of the shards gone from the map to go; then nothing of theirs is left."""
    await until(lambda: set(client._links) <= set(client._shards), 5,
                "the links to shards gone from the map to go")
    assert pumps() == len(client._links)
    gone = used - set(client._shards)
    assert gone and sorted(backend.disconnected) == sorted(gone)  # each once
    assert not client._waiting  # no count left at 0 for a shard gone for good


def test_shards_retired_across_map_changes_leave_nothing_behind():
    """A stream runs through five scalings: requests answered MOVED wait in their lanes,
    counted against shards that then go."""
    async def main():
        backend = HeldReplies()
        ctl = await backend.start_runtime(3, n_partitions=64)
        client = await KairosClient(backend).connect()
        customers = [f"c{i}" for i in range(40)]
        stop, used = asyncio.Event(), set()

        async def stream() -> list[int]:
            acks = []
            while not stop.is_set():
                acks += await asyncio.gather(*(client.ingest(c, "app_open", T0)
                                               for c in customers))
                used.update(client._links)
            return acks

        producer = asyncio.ensure_future(stream())
        for n in (5, 2, 4, 1, 3):
            await asyncio.sleep(0.01)
            await ctl.scale(n)
        stop.set()
        assert all(isinstance(sequence, int) for sequence in await producer)
        await left_behind(client, used, backend)
        await client.close()
    asyncio.run(main())


def test_a_request_in_flight_to_a_retiring_shard_is_answered_and_its_link_goes_after():
    async def main():
        backend = HeldReplies()
        ctl = await backend.start_runtime(3, n_partitions=64)
        client = await KairosClient(backend).connect()
        customers = [f"c{i}" for i in range(40)]
        backend.holding = True
        sent = [asyncio.ensure_future(client.ingest(c, "app_open", T0)) for c in customers]
        await until(lambda: len(client._links) == 3, 5, "a request in flight to each shard")
        used = set(client._links)
        await ctl.scale(1)
        await until(lambda: client._shards == ctl.shards, 5, "the client to see the map")
        await asyncio.sleep(0.2)  # polls that find the retired shards' links busy
        assert set(client._links) == used and not backend.disconnected
        backend.release.set()
        assert await asyncio.gather(*sent) == [1] * len(customers)
        await left_behind(client, used, backend)
        await client.close()
    asyncio.run(main())


class TwoShardsThenOne:
    """A controller whose map names s0 and s1, and then, once `shrink` is set, s1 alone."""

    def __init__(self) -> None:
        self.shrink = asyncio.Event()

    async def get_map(self, known_version: int, timeout_s: float = 0.0) -> dict | None:
        if known_version == 1:
            await self.shrink.wait()
        if known_version == 2:
            await asyncio.sleep(timeout_s)
            return None
        owners = (np.arange(16) % 2) if known_version < 1 else np.ones(16)
        return {"version": known_version + 1 if known_version >= 1 else 1,
                "catalog_version": "v1", "shards": ["s0", "s1"] if known_version < 1
                else ["s1"], "owners": owners.astype(np.uint16).tobytes()}


def test_the_connection_to_a_shard_gone_from_the_map_is_closed():
    """On real sockets (RayBackend, its connect replaced: no Ray)."""
    from kairos.cluster.transport.ray_backend import RayBackend

    async def handle(session, seq, requests, routed):
        return [(OK, seq, False, None)] * len(requests)

    async def main():
        server = PlaneServer(handle)
        address = await server.start("127.0.0.1")
        backend = RayBackend()

        async def connect(name):
            return await PlaneConnection.open(*address, server.secret)

        backend._connect = connect
        backend._handles.update(s0=object(), s1=object())  # actor handles, as Ray's are kept
        controller = TwoShardsThenOne()
        backend.controller = lambda: controller
        client = await KairosClient(backend).connect()
        customers = [f"c{i}" for i in range(20)]
        await asyncio.gather(*(client.ingest(c, "app_open", 1.0) for c in customers))
        assert set(backend._planes) == {"s0", "s1"}
        gone = backend._planes["s0"].result()
        controller.shrink.set()
        await until(lambda: gone.closed, 5, "the connection to s0 to close")
        assert set(backend._planes) == {"s1"} and set(client._links) == {"s1"}
        assert set(backend._handles) == {"s1"}
        await client.close()
        server.close()
    asyncio.run(main())
