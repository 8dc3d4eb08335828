"""Admin calls pass the gateway's in-flight limit and its shedding, so they have bounds of their
own: one catalog compile at a time, stopped past CATALOG_COMPILE_S (a ValidateCatalog is
refused RESOURCE_EXHAUSTED while another compile runs or waits; a catalog change, PutCatalog or
RollbackCatalog, waits its turn in order: a status:read key's ValidateCatalogs made an
operator's PutCatalog fail), and at most bounds.ADMIN_CALLS admin calls at once, the last
bounds.ADMIN_RESERVED for keys with the admin scope. Each compile ran in a thread of its own,
however many came at once: four of a large text held the GIL from the event loop for most of a
second, and Decides with short deadlines failed. Through gRPC to the in-process gateway; a
compile (in its own process, as served) or a controller call is held at a gate."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import grpc
import psutil
import pytest

from kairos.cluster.gateway import compiling
from kairos.cluster.gateway.bounds import ADMIN_CALLS, ADMIN_RESERVED
from kairos.cluster.transport.client import Busy
from kairos.core.catalog import default_catalog_text
from kairos.v1 import admin_pb2

from tests.support.inprocess_gateway import serving
from tests.support.waiting import until, wait_until


READER, OPERATOR = "reader-key-0123456789", "operator-key-0123456789"
KEYS = (f"keys:\n  - key: '{READER}'\n    scopes: [status:read]\n"
        f"  - key: '{OPERATOR}'\n    scopes: [admin]\n")


class Gate:
    """Holds the work passed through it (started once let through), until opened; `names`:
    what each held, in the order they came."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self.held = 0
        self.names: list = []

    async def hold(self, start, name=None):
        self.held += 1
        self.names.append(name)
        await self.event.wait()
        return await start()

    def open(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


def _admin(channel: grpc.Channel, method: str, request, response):
    return channel.unary_unary(f"/kairos.v1.AdminService/{method}",
                               request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)


def _held_compiles(monkeypatch, gate: Gate) -> list:
    """Every compile waits at `gate`, named by its source; the list counts the compiles asked
    for (running, waiting or refused)."""
    compiled_apart, compile, asked = compiling._compiled_apart, compiling.OneCompile.compile, []
    monkeypatch.setattr(compiling, "_compiled_apart", lambda text, source, strict: gate.hold(
        lambda: compiled_apart(text, source, strict), source))

    def counted(self, *args, **kwargs):
        asked.append(args)
        return compile(self, *args, **kwargs)
    monkeypatch.setattr(compiling.OneCompile, "compile", counted)
    return asked


def _held_status(monkeypatch, gateway, channel: grpc.Channel) -> tuple[Gate, Any, Any]:
    """Every GetClusterStatus waits at a gate: the gate, and the stubs of GetClusterStatus
    and of GetCatalog (which does not wait) on `channel`."""
    gate = Gate(gateway.loop)
    controller = gateway.gateway.backend.controller()
    status = controller.status
    monkeypatch.setattr(controller, "status", lambda: gate.hold(status))
    get_status = _admin(channel, "GetClusterStatus", admin_pb2.ClusterStatusRequest,
                        admin_pb2.ClusterStatus)
    get_catalog = _admin(channel, "GetCatalog", admin_pb2.GetCatalogRequest,
                         admin_pb2.CatalogText)
    return gate, get_status, get_catalog


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value


def test_a_gateway_compiles_one_catalog_at_a_time_and_a_catalog_change_waits_its_turn(
        monkeypatch):
    text = default_catalog_text()
    with serving() as (gateway, channel):
        gate = Gate(gateway.loop)
        asked = _held_compiles(monkeypatch, gate)
        validate = _admin(channel, "ValidateCatalog", admin_pb2.CatalogText,
                          admin_pb2.CatalogInfo)
        put = _admin(channel, "PutCatalog", admin_pb2.CatalogText, admin_pb2.CatalogInfo)
        first = validate.future(admin_pb2.CatalogText(yaml=text), timeout=60)
        wait_until(lambda: gate.held == 1, 10, "the first compile held")
        refused = _refusal(lambda: validate(admin_pb2.CatalogText(yaml=text), timeout=60))
        assert "one catalog at a time" in refused.details()
        with pytest.raises(grpc.RpcError) as late:  # it waits within its deadline, then leaves
            put(admin_pb2.CatalogText(yaml=text), timeout=1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deploy = put.future(admin_pb2.CatalogText(yaml=text), timeout=60)
        wait_until(lambda: len(asked) == 4, 10, "the PutCatalog's compile asked for")
        _refusal(lambda: validate(admin_pb2.CatalogText(yaml=text), timeout=60))  # one waits
        gate.open()
        assert first.result().actions > 0
        assert deploy.result() == first.result()
        assert validate(admin_pb2.CatalogText(yaml=text), timeout=60) == first.result()
        with pytest.raises(grpc.RpcError) as bad:  # the compile's error, from its process
            validate(admin_pb2.CatalogText(yaml="actions: [}"), timeout=60)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details().startswith("<ValidateCatalog>:1:")  # not PutCatalog's


def test_a_compile_that_must_not_be_refused_waits_for_the_one_running(monkeypatch):
    """A catalog change (PutCatalog; RollbackCatalog, which compiles the catalog it rolled
    back to, to describe it) waits for the compiles before it, in the order they came; and a
    compile whose caller went away makes way for the next one."""
    text = default_catalog_text()

    async def main():
        gate = Gate(asyncio.get_running_loop())
        _held_compiles(monkeypatch, gate)
        compiles = compiling.OneCompile()
        first = asyncio.ensure_future(compiles.compile(text, "<first>"))
        await until(lambda: gate.held == 1, 10, "the first compile held")
        waiting = [asyncio.ensure_future(compiles.compile(text, source, wait=True))
                   for source in ("<a>", "<b>", "<c>")]
        await asyncio.sleep(0)  # each waits for the lock
        with pytest.raises(Busy):
            await compiles.compile(text)
        assert not any(each.done() for each in waiting)
        gate.event.set()
        assert (await first).actions > 0
        assert await asyncio.gather(*waiting) == [await first] * 3
        assert gate.names == ["<first>", "<a>", "<b>", "<c>"]  # in the order they came
        gate.event.clear()
        gone = asyncio.ensure_future(compiles.compile(text))
        await until(lambda: gate.held == 5, 10, "the fifth compile held")
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        gate.event.set()
        assert await compiles.compile(text) == await first

    asyncio.run(main())


def test_a_gateway_runs_a_bounded_number_of_admin_calls_at_once(monkeypatch):
    with serving() as (gateway, channel):
        gate, get_status, get_catalog = _held_status(monkeypatch, gateway, channel)
        held = [get_status.future(admin_pb2.ClusterStatusRequest(), timeout=60)
                for _ in range(ADMIN_CALLS)]
        wait_until(lambda: gate.held == ADMIN_CALLS, 10, "every admin call's status held")
        refused = _refusal(lambda: get_catalog(admin_pb2.GetCatalogRequest(), timeout=60))
        assert f"runs {ADMIN_CALLS} admin calls" in refused.details()
        gate.open()
        assert all(call.result().partitions for call in held)
        assert get_catalog(admin_pb2.GetCatalogRequest(), timeout=60).yaml


def test_a_compile_past_its_time_is_stopped(monkeypatch):
    """CATALOG_COMPILE_S bounds a compile: its process is killed and the caller told why,
    FAILED_PRECONDITION (one at a time, a text that compiles for minutes held every other
    compile, deploys included)."""
    monkeypatch.setattr(compiling, "CATALOG_COMPILE_S", 0.5)
    monkeypatch.setattr(compiling, "COMPILER", (sys.executable, "-c",
                                                "import time; time.sleep(60)"))
    # children other tests of this process left (multiprocessing's resource tracker) stay
    before = set(psutil.Process(os.getpid()).children())
    with serving() as (_, channel):
        validate = _admin(channel, "ValidateCatalog", admin_pb2.CatalogText,
                          admin_pb2.CatalogInfo)
        with pytest.raises(grpc.RpcError) as refused:
            validate(admin_pb2.CatalogText(yaml="actions: []"), timeout=10)
        # the same text would take as long again: not RESOURCE_EXHAUSTED's "try again"
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == ("the catalog took longer than 0.5 s "
                                           "(KAIROS_CATALOG_COMPILE_S) to compile and was stopped")
        assert set(psutil.Process(os.getpid()).children()) <= before  # killed and reaped


def test_the_last_admin_places_are_kept_for_operators(monkeypatch):
    """Keys without the admin scope (status:read, log:read) take at most ADMIN_CALLS -
    ADMIN_RESERVED places: holding all of them, they kept operators from changing the
    cluster."""
    with serving(KEYS) as (gateway, channel):
        gate, get_status, get_catalog = _held_status(monkeypatch, gateway, channel)

        def held(key: str, n: int) -> list:
            return [get_status.future(admin_pb2.ClusterStatusRequest(), timeout=60,
                                      metadata=[("x-api-key", key)]) for _ in range(n)]
        calls = held(READER, ADMIN_CALLS - ADMIN_RESERVED)
        wait_until(lambda: gate.held == len(calls), 10, "the reader's calls held")
        refused = _refusal(lambda: get_catalog(admin_pb2.GetCatalogRequest(), timeout=60,
                                               metadata=[("x-api-key", READER)]))
        assert "for keys without the admin scope" in refused.details()
        calls += held(OPERATOR, ADMIN_RESERVED)  # an operator still gets in
        wait_until(lambda: gate.held == ADMIN_CALLS, 10, "every admin call held")
        refused = _refusal(lambda: get_catalog(admin_pb2.GetCatalogRequest(), timeout=60,
                                               metadata=[("x-api-key", OPERATOR)]))
        assert f"runs {ADMIN_CALLS} admin calls at once, its limit:" in refused.details()
        gate.open()
        assert all(call.result().partitions for call in calls)
