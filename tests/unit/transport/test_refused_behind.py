"""A refusal reaches the client before the shard's answer to a later batch of the same session
that the shard holds back with it (OVERTAKING): that batch's calls are given up at once, or
their next events would go in the fresh session and be applied ahead of the ones held back. A
real ShardHost at a resident ceiling of one, behind a LocalBackend that delays answers."""
from __future__ import annotations

import asyncio

from kairos.cluster import protocol
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.lanes import Call

from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import N_PARTITIONS, T0, forget, profile
from tests.unit.shard.test_shard_host import app_open


class ToHost(LocalBackend):
    """Sends to `host`; the answer to a batch holding k0 waits for `k0_answer`, one holding x
    for `x_answer`."""

    def __init__(self, host: ShardHost) -> None:
        super().__init__()
        self.host = host
        self.handled: list[list] = []
        self.k0_answer, self.x_answer = asyncio.Event(), asyncio.Event()

    async def send(self, name, session, seq, requests, routed):
        keys = [getattr(r, "idempotency_key", None) for r in requests]
        replies = await self.host.handle(session, seq, requests, routed)
        self.handled.append(keys)
        await (self.k0_answer.wait() if "k0" in keys else
               self.x_answer.wait() if "x" in keys else asyncio.sleep(0))
        return replies


def _open(key: str, at: float):
    return app_open("ana", at)._replace(idempotency_key=key)


def test_a_streams_next_event_is_not_sent_past_one_its_shard_holds_back(compiled):
    async def main():
        host = ShardHost("s0", N_PARTITIONS, 0, MemoryStore, "fsync", tick_s=3600.0)
        await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
        backend = ToHost(host)
        await backend.start_runtime(1, n_partitions=N_PARTITIONS)
        assert (await host.handle("z", 0, [app_open("zed")], [0]))[0].status == "ok"
        host.shard.residency.resident_limit, host.shard.residency.overflow = 1, 0
        client = await KairosClient(backend).connect()
        call = Call()
        x = client.enqueue(_open("x", T0))  # refused CROWDED: no room for ana
        await asyncio.sleep(0.01)
        k0 = client.enqueue(_open("k0", T0 + 1), call)  # held back behind x (OVERTAKING)
        while not any("k0" in keys for keys in backend.handled):
            await asyncio.sleep(0.005)
        backend.x_answer.set()
        assert (await x).status == "busy"  # heard before k0's answer
        await host.handle("z", 1, [forget("zed")], [0])  # room for ana now
        k1 = client.enqueue(_open("k1", T0 + 2), call)
        await asyncio.sleep(0.05)
        backend.k0_answer.set()
        assert (await k0).status == "busy"
        assert call.given_up and not isinstance(await k1, protocol.EventAck)
        missing, = await host.handle("c", 0, [profile("ana")], [0])
        assert missing.status == "missing"  # nothing of ana's was applied
        host.stop()
        await client.close()
    asyncio.run(asyncio.wait_for(main(), 20))
