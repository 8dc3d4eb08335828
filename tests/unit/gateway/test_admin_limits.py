"""Admin calls pass the gateway's in-flight limit and its shedding, so they have bounds of their
own: one catalog compile at a time (another is refused RESOURCE_EXHAUSTED, but a rollback,
already done, waits for it), and at most bounds.ADMIN_CALLS admin calls at once. Each compile
ran in a thread of its own, however many came at once: four of a large text held the GIL from
the event loop for most of a second, and Decides with short deadlines failed. Through gRPC to
the in-process gateway; a compile (in its own process, as served) or a controller call is
held at a gate."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.gateway import compiling
from kairos.cluster.gateway.bounds import ADMIN_CALLS
from kairos.cluster.transport.client import Busy
from kairos.core.catalog import default_catalog_text
from kairos.v1 import admin_pb2

from tests.support.inprocess_gateway import serving
from tests.support.waiting import until, wait_until


class Gate:
    """Holds the work passed through it (started once let through), until opened."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self.held = 0

    async def hold(self, start):
        self.held += 1
        await self.event.wait()
        return await start()

    def open(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


def _admin(channel: grpc.Channel, method: str, request, response):
    return channel.unary_unary(f"/kairos.v1.AdminService/{method}",
                               request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value


def test_a_gateway_compiles_one_catalog_at_a_time(monkeypatch):
    text = default_catalog_text()
    with serving() as (gateway, channel):
        gate = Gate(gateway.loop)
        compiled_apart = compiling._compiled_apart
        monkeypatch.setattr(compiling, "_compiled_apart",
                            lambda *args: gate.hold(lambda: compiled_apart(*args)))
        validate = _admin(channel, "ValidateCatalog", admin_pb2.CatalogText,
                          admin_pb2.CatalogInfo)
        put = _admin(channel, "PutCatalog", admin_pb2.CatalogText, admin_pb2.CatalogInfo)
        first = validate.future(admin_pb2.CatalogText(yaml=text), timeout=60)
        wait_until(lambda: gate.held == 1, 10, "the first compile held")
        refused = _refusal(lambda: validate(admin_pb2.CatalogText(yaml=text), timeout=60))
        assert "one catalog at a time" in refused.details()
        _refusal(lambda: put(admin_pb2.CatalogText(yaml=text), timeout=60))
        gate.open()
        assert first.result().actions > 0
        assert validate(admin_pb2.CatalogText(yaml=text), timeout=60) == first.result()
        with pytest.raises(grpc.RpcError) as bad:  # the compile's error, from its process
            validate(admin_pb2.CatalogText(yaml="actions: [}"), timeout=60)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details().startswith("<PutCatalog>:1:")


def test_a_compile_that_must_not_be_refused_waits_for_the_one_running(monkeypatch):
    """RollbackCatalog compiles the catalog it rolled back to, to describe it: done already,
    it waits; and a compile whose caller went away makes way for the next one."""
    text = default_catalog_text()

    async def main():
        gate = Gate(asyncio.get_running_loop())
        compiled_apart = compiling._compiled_apart
        monkeypatch.setattr(compiling, "_compiled_apart",
                            lambda *args: gate.hold(lambda: compiled_apart(*args)))
        compiles = compiling.OneCompile()
        first = asyncio.ensure_future(compiles.compile(text))
        await until(lambda: gate.held == 1, 10, "the first compile held")
        waiting = asyncio.ensure_future(compiles.compile(text, wait=True))
        with pytest.raises(Busy):
            await compiles.compile(text)
        assert not waiting.done()
        gate.event.set()
        assert (await first).actions > 0 and await waiting == await first
        gate.event.clear()
        gone = asyncio.ensure_future(compiles.compile(text))
        await until(lambda: gate.held == 3, 10, "the third compile held")
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        gate.event.set()
        assert await compiles.compile(text) == await first

    asyncio.run(main())


def test_a_gateway_runs_a_bounded_number_of_admin_calls_at_once(monkeypatch):
    with serving() as (gateway, channel):
        gate = Gate(gateway.loop)
        controller = gateway.gateway.backend.controller()
        status = controller.status
        monkeypatch.setattr(controller, "status", lambda: gate.hold(status))
        get_status = _admin(channel, "GetClusterStatus", admin_pb2.ClusterStatusRequest,
                            admin_pb2.ClusterStatus)
        get_catalog = _admin(channel, "GetCatalog", admin_pb2.GetCatalogRequest,
                             admin_pb2.CatalogText)
        held = [get_status.future(admin_pb2.ClusterStatusRequest(), timeout=60)
                for _ in range(ADMIN_CALLS)]
        wait_until(lambda: gate.held == ADMIN_CALLS, 10, "every admin call's status held")
        refused = _refusal(lambda: get_catalog(admin_pb2.GetCatalogRequest(), timeout=60))
        assert f"runs {ADMIN_CALLS} admin calls" in refused.details()
        gate.open()
        assert all(call.result().partitions for call in held)
        assert get_catalog(admin_pb2.GetCatalogRequest(), timeout=60).yaml
