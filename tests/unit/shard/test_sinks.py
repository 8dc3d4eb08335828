"""Pushes to watch sinks (shard/sinks.py, ray_backend.py, the gateway's `deliver`): one call
in flight per sink, the rest coalesced to the latest per view; a sink that does not answer
keeps its watches; a sink Gone (its process died, or Ray restarted it: another incarnation)
loses them; Ray's errors are told apart."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import ray

from kairos.cluster.gateway.actor import GatewayServer
from kairos.cluster.shard.actor import drop_sinks
from kairos.cluster.shard.shard import Shard
from kairos.cluster.shard.sinks import Pushes
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.ray_backend import Gone, RayBackend, sink_name

from tests.support.local_backend import LocalBackend

from .test_shard import watch
from .test_shard_host import app_open, run

SINK = sink_name("kairos-gateway-0", "a1b2c3")


def view(customer: str, version: int) -> SimpleNamespace:
    return SimpleNamespace(customer_id=customer, channel="web", placement="hero",
                           version=version)


class Sinks:
    """Sinks that record each call; a sink's next calls fail as `fail` says, and each waits
    for `gate` while it is set up."""

    def __init__(self) -> None:
        self.calls: dict[str, list[list]] = {}
        self.fail: dict[str, list[Exception]] = {}
        self.gate: asyncio.Event | None = None

    def __call__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(deliver=lambda decisions: self._deliver(name, decisions))

    async def _deliver(self, name: str, decisions: list) -> None:
        self.calls.setdefault(name, []).append(list(decisions))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail.get(name):
            raise self.fail[name].pop(0)


def test_one_push_at_a_time_per_sink_and_those_meanwhile_go_next_the_latest_per_view():
    async def main():
        sinks, gone = Sinks(), []
        sinks.gate = asyncio.Event()
        pushes = Pushes("s0", sinks, lambda sink: asyncio.sleep(0, gone.append(sink)))
        pushes.push("g", [view("ana", 1)])
        await asyncio.sleep(0)
        pushes.push("g", [view("ana", 2), view("bob", 1)])
        pushes.push("g", [view("ana", 3)])
        pushes.push("h", [view("ana", 3)])  # another sink does not wait
        await asyncio.sleep(0.01)
        assert [[d.version for d in c] for c in sinks.calls["g"]] == [[1]]
        assert len(sinks.calls["h"]) == 1
        sinks.gate.set()
        await asyncio.sleep(0.01)
        assert [[(d.customer_id, d.version) for d in c] for c in sinks.calls["g"]] == \
            [[("ana", 1)], [("ana", 3), ("bob", 1)]]
        assert gone == []
    asyncio.run(main())


def test_a_push_that_fails_otherwise_is_logged_and_the_next_push_goes(caplog):
    async def main():
        sinks = Sinks()
        sinks.fail["g"] = [TypeError("deliver() got an unexpected keyword argument")]
        pushes = Pushes("s0", sinks, lambda sink: asyncio.sleep(0))
        pushes.push("g", [view("ana", 1)])
        await asyncio.sleep(0.01)
        pushes.push("g", [view("ana", 2)])
        await asyncio.sleep(0.01)
        assert [[d.version for d in c] for c in sinks.calls["g"]] == [[1], [2]]
    with caplog.at_level("ERROR"):
        asyncio.run(main())
    assert "pushing to watch sink g failed" in caplog.text


def on_host(compiled, sinks: Sinks, test) -> None:
    """`test(host)` on a host whose pushes go through Pushes, as ShardActor wires them (a sink
    gone has its watches dropped in turn with the rounds)."""
    hosts = []
    pushes = Pushes("s0", sinks, lambda names: hosts[0].run(drop_sinks, names))

    async def with_host(host):
        hosts.append(host)
        await host.run(Shard.watch_channel, SINK, "web", "hero")
        await host.handle("a", 0, [watch("ana", SINK, "web", "hero")], [0])
        await test(host)
    run(compiled, MemoryStore(), with_host, deliver=pushes.push)


@pytest.mark.parametrize("failure", ["no answer within 30 s", "ActorUnavailableError"])
def test_a_sink_that_does_not_answer_keeps_its_watches_and_gets_the_next_change(
        compiled, failure):
    sinks = Sinks()
    sinks.fail[SINK] = [Unavailable(f"{SINK}: {failure}")]

    async def test(host):
        await host.handle("a", 1, [app_open("ana")], [0])
        await asyncio.sleep(0.01)  # that push failed: dropped
        await host.handle("a", 2, [app_open("bob")], [0])  # a view not pushed yet
        await asyncio.sleep(0.01)
        assert len(sinks.calls[SINK]) == 2
        assert [w.sink for w in host.shard.watches.channel] == [SINK]
        assert [w.sink for w in host.shard.watches.by_customer["ana"]] == [SINK]
    on_host(compiled, sinks, test)


def test_a_sink_gone_loses_its_channel_and_customer_watches(compiled):
    sinks = Sinks()
    sinks.fail[SINK] = [Gone(f"{SINK}: ActorDiedError")]

    async def test(host):
        await host.handle("a", 1, [app_open("ana")], [0])
        await asyncio.sleep(0.01)
        assert host.shard.watches.channel == set() and host.shard.watches.by_customer == {}
    on_host(compiled, sinks, test)


def test_a_gateway_s_streams_are_its_process_s_sink_and_pushes_for_another_are_gone():
    """Ray restarting a gateway builds it again: the new process is another sink, so the
    pushes still addressed to the old one's (dead) streams answer Gone."""
    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        first = GatewayServer("kairos-gateway-0", host="127.0.0.1", backend=backend)
        await first.start()
        sink = first.gateway.watches.sink
        assert sink == sink_name("kairos-gateway-0", first.incarnation)
        await first.deliver([], first.incarnation)
        await first.deliver([])  # a push that names no incarnation: whichever runs
        await first.stop(0)
        again = GatewayServer("kairos-gateway-0")  # as Ray restarts it
        with pytest.raises(Gone, match=first.incarnation):
            await again.deliver([], first.incarnation)
    asyncio.run(main())


class Handle:
    """An actor handle, looked up by calling it, whose `deliver` raises `error` (after
    `delay`), recording the names it was looked up by and the args."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.names: list[str] = []
        self.args: list[tuple] = []
        self.error, self.delay = error, delay
        self.deliver = SimpleNamespace(remote=self._remote)

    def __call__(self, name: str) -> "Handle":
        self.names.append(name)
        return self

    async def _remote(self, *args):
        self.args.append(args)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


def no_such_actor(name: str) -> Handle:
    raise ValueError(f"Failed to look up actor with name '{name}'")


@pytest.mark.parametrize("handle, gone", [
    (Handle(ray.exceptions.ActorDiedError()), True),
    (None, True),  # no actor by that name (any more)
    (Handle(ray.exceptions.ActorUnavailableError("restarting", None)), False),
    (Handle(delay=1.0), False),  # no answer in time
])
def test_ray_s_errors_for_a_sink_tell_a_dead_process_from_one_that_may_answer(
        monkeypatch, handle, gone):
    async def main():
        backend = RayBackend()
        monkeypatch.setattr(backend, "_handle", handle or no_such_actor)
        call = backend.call  # with a deadline short enough for the test
        monkeypatch.setattr(backend, "call", lambda name, invoke, timeout_s, poll:
                            call(name, invoke, 0.05, poll))
        with pytest.raises(Unavailable) as raised:
            await backend.sink(SINK).deliver(["d"])
        assert isinstance(raised.value, Gone) == gone
        if handle is not None:  # the actor's name, and the incarnation pushed for
            assert handle.names == ["kairos-gateway-0"] and handle.args == [(["d"], "a1b2c3")]
    asyncio.run(main())


def test_a_probe_drops_a_gone_sinks_watches_of_customers_nobody_has_seen(compiled):
    """No push ever reaches a watch of a customer not seen yet, so no push finds its sink
    Gone: the probe asks every sink the watches name, and one Gone loses them; one that does
    not answer keeps them."""
    sinks, hosts = Sinks(), []
    live = sink_name("kairos-gateway-1", "d4e5f6")
    sinks.fail[SINK] = [Gone(f"{SINK}: another incarnation")]
    sinks.fail[live] = [Unavailable(f"{live}: no answer within 30 s")]
    pushes = Pushes("s0", sinks, lambda names: hosts[0].run(drop_sinks, names))

    async def test(host):
        hosts.append(host)
        await host.handle("a", 0, [watch("zoe", SINK, "web", "hero"),
                                   watch("zoe", live, "web", "hero")], [0, 0])
        await pushes.probe(await host.run(Shard.watched_sinks))
        assert sinks.calls == {SINK: [[]], live: [[]]}
        assert [w.sink for w in host.shard.watches.by_customer["zoe"]] == [live]
        assert SINK in host.shard.watches.gone
    run(compiled, MemoryStore(), test, deliver=pushes.push)


def test_a_probe_drops_the_sinks_found_gone_at_once():
    """The sinks a probe finds Gone go in one call (a turn with the data path each)."""
    sinks, dropped = Sinks(), []
    dead = [sink_name(f"kairos-gateway-{i}", "a1b2c3") for i in range(3)]
    for name in dead:
        sinks.fail[name] = [Gone(f"{name}: another incarnation")]

    async def gone(names: list[str]) -> None:
        dropped.append(names)

    asyncio.run(Pushes("s0", sinks, gone).probe([*dead, "kairos-gateway-9"]))
    assert dropped == [dead]
