"""ExportDecisionLog's bounds (gateway/logexport.py): exports at once per gateway, what a page
gathers from all shards, and the time each shard's read is given: the call's deadline."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.gateway import logexport
from kairos.v1 import admin_pb2

T0 = 1_795_629_600


class Aborted(Exception):
    pass


class Context:
    def __init__(self, remaining: float | None = 5.0):
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Shard:
    def __init__(self, backend: "Backend"):
        self.backend = backend

    async def read_log(self, query, live: list[str], timeout_s: float) -> tuple[list, bool]:
        self.backend.asked.append((query.limit, timeout_s))
        await self.backend.release.wait()
        return [], False


class Backend:
    def __init__(self, shards: int):
        self.shards = [f"kairos-shard-{k:04d}" for k in range(shards)]
        self.asked: list[tuple[int, float]] = []
        self.release = asyncio.Event()

    def controller(self):
        backend = self

        class Controller:
            async def get_map(self, known: int, wait_s: float) -> dict:
                return {"shards": backend.shards}
        return Controller()

    def shard(self, name: str) -> Shard:
        return Shard(self)


class Gateway:
    def __init__(self, shards: int = 2):
        self.backend = Backend(shards)


def request(max_records: int = 0) -> admin_pb2.ExportDecisionLogRequest:
    r = admin_pb2.ExportDecisionLogRequest(max_records=max_records)
    r.since.seconds, r.until.seconds = T0, T0 + 3600
    return r


async def first_chunk(gateway: Gateway, context: Context, max_records: int = 0):
    return await anext(logexport.export(gateway, request(max_records), context))


def test_a_gateway_runs_a_bounded_number_of_exports_at_once():
    async def main():
        gateway = Gateway()
        running = [asyncio.create_task(first_chunk(gateway, Context()))
                   for _ in range(logexport.MAX_EXPORTS)]
        await asyncio.sleep(0.01)
        with pytest.raises(Aborted) as refused:
            await first_chunk(gateway, Context())
        assert refused.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exports at once" in refused.value.args[1]
        gateway.backend.release.set()
        await asyncio.gather(*running)
        assert (await first_chunk(gateway, Context())).count == 0  # room again
        other = Gateway()
        other.backend.release.set()
        assert (await first_chunk(other, Context())).count == 0  # another gateway's own
    asyncio.run(main())


def test_each_shard_is_given_the_calls_deadline_and_a_share_of_the_page():
    async def main():
        gateway = Gateway(shards=8)
        gateway.backend.release.set()
        await first_chunk(gateway, Context(120.0), logexport.MAX_RECORDS)
        (limit, timeout_s), = set(gateway.backend.asked)  # longer than a control call
        assert 110 < timeout_s <= 120
        assert limit == logexport.GATHERED_RECORDS // 8
        gateway = Gateway(shards=1)
        gateway.backend.release.set()
        await first_chunk(gateway, Context(None), 10)
        assert gateway.backend.asked == [(10, pytest.approx(logexport.ADMIN_CALL_S, abs=1))]
    asyncio.run(main())


def test_a_shards_log_reads_never_take_the_slots_of_its_health_checks():
    from kairos.cluster.shard.actor import ShardActor
    groups = ShardActor.__ray_metadata__.method_meta.concurrency_group_for_methods
    assert groups["read_log"] != groups["health"]


def test_an_export_whose_client_does_not_read_gives_its_place_back_in_time(monkeypatch):
    """Without a deadline of its own, such a client held one of the places for ever."""
    monkeypatch.setattr(logexport, "ADMIN_CALL_S", 0.2)
    aborted: list[tuple] = []

    class Recorded(Context):
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            aborted.append((code, details))
            await super().abort(code, details)

    async def stream(gateway: Gateway) -> None:  # as gRPC's task for the call runs it
        async for _ in logexport.export(gateway, request(), Recorded(None)):
            await asyncio.Event().wait()  # sending it waits for the client, which never reads

    async def main():
        gateway = Gateway()
        gateway.backend.release.set()
        stuck = [asyncio.create_task(stream(gateway)) for _ in range(logexport.MAX_EXPORTS)]
        await asyncio.sleep(0.1)
        with pytest.raises(Aborted):  # all the places are held
            await first_chunk(gateway, Context())
        await asyncio.sleep(0.2)
        assert all(task.cancelled() for task in stuck)
        assert [code for code, _ in aborted] == \
            [grpc.StatusCode.DEADLINE_EXCEEDED] * logexport.MAX_EXPORTS
        assert "ran past 0.2 s" in aborted[0][1] and "read its chunks" in aborted[0][1]
        assert (await first_chunk(gateway, Context())).count == 0  # room again
    asyncio.run(main())
