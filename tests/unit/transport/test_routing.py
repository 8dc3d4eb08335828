"""Controller and client logic without Ray (LocalBackend): placement, moves under a stream,
MOVED re-sends in order, failed handoffs, catalog switches, long poll, what each reply comes
to; and the Ray and in-process backends holding to one interface."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import LearnerActor
from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.transport import backend as interface
from kairos.cluster.transport import ray_backend
from kairos.cluster.transport.client import KairosClient
from kairos.core.errors import InputError

from tests.support import local_backend
from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

T0 = 1_795_629_600.0


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


async def runtime(n_shards: int, **kw):
    backend = LocalBackend(**kw)
    controller = await backend.start_runtime(n_shards, n_partitions=64)
    client = await KairosClient(backend).connect()
    return backend, controller, client


async def stream(client, customers, stop: asyncio.Event, acks: dict[str, list]):
    """Waves of one event per customer until `stop`; `acks` fills with each one's future as
    it goes, then maps each customer to its acks."""
    acks.update({c: [] for c in customers})
    wave = 0
    while not stop.is_set():
        for c in customers:
            acks[c].append(asyncio.ensure_future(
                client.ingest(c, "page_view", T0 + wave, {"category": "home"})))
        wave += 1
        await asyncio.sleep(0)
    return {c: await asyncio.gather(*futures) for c, futures in acks.items()}


def _done(acks: dict[str, list]) -> int:
    return sum(f.done() for futures in acks.values() for f in futures)


async def acked_more(acks: dict[str, list], than: int) -> int:
    """Wait until the stream has more than `than` events acked; how many it has then."""
    await until(lambda: _done(acks) > than, 10, f"more than {than} events of the stream acked",
                poll_s=0)
    return _done(acks)


def test_shards_spread_over_nodes():
    async def main():
        backend, ctl, client = await runtime(6)
        assert sorted(backend.created_on.values()) == ["node-a", "node-a", "node-b", "node-b",
                                                       "node-c", "node-c"]
        await client.close()
    asyncio.run(main())


@pytest.mark.parametrize("seed", range(3))
def test_scaling_under_a_stream_loses_duplicates_and_reorders_nothing(seed):
    async def main():
        backend, ctl, client = await runtime(2, seed=seed)
        customers = [f"c{i}" for i in range(30)]
        stop, sent = asyncio.Event(), {}
        producer = asyncio.ensure_future(stream(client, customers, stop, sent))
        acked = 0
        for n in (5, 1, 3):
            acked = await acked_more(sent, acked)  # each scaling lands mid-stream
            await ctl.scale(n)
        stop.set()
        acks = await producer
        for c, seqs in acks.items():
            assert seqs == list(range(1, len(seqs) + 1)), c
        assert len(ctl.shards) == 3 and ctl.map.version > 3
        assert sorted(backend.shards) == sorted(ctl.shards)
        await client.close()
    asyncio.run(main())


@pytest.mark.parametrize("seed", range(3))
def test_a_failed_handoff_thaws_and_loses_nothing(seed):
    async def main():
        backend, ctl, client = await runtime(1, seed=seed)
        customers = [f"c{i}" for i in range(20)]
        stop, sent = asyncio.Event(), {}
        producer = asyncio.ensure_future(stream(client, customers, stop, sent))
        await acked_more(sent, 0)
        backend.fail_next_adopt = True
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await ctl.scale(2)
        await ctl.scale(2)  # the next attempt goes through
        stop.set()
        for c, seqs in (await producer).items():
            assert seqs == list(range(1, len(seqs) + 1)), (c, seqs)
        await client.close()
    asyncio.run(main())


def test_bad_input_raises_input_error_with_the_field():
    async def main():
        backend, ctl, client = await runtime(2)
        with pytest.raises(InputError, match="attributes.category"):
            await client.ingest("ana", "page_view", T0, {"category": "cars"})
        assert await client.profile("ana") is None  # nothing was created
        await client.close()
    asyncio.run(main())


def test_catalog_switch_reaches_every_shard_and_a_bad_catalog_changes_nothing():
    async def main():
        backend, ctl, client = await runtime(3)
        text = ctl.catalog_text.replace("version: ", "version: x", 1)
        before = (await client.decide("ana", "web", "hero", now=T0)).catalog_version
        from kairos.core.errors import CatalogError
        with pytest.raises(CatalogError):
            await ctl.put_catalog(text.replace("kairos_catalog: 1", "kairos_catalog: 7"))
        assert {s.catalog_version for s in backend.shards.values()} == {before}
        version = await ctl.put_catalog(text)
        assert {s.catalog_version for s in backend.shards.values()} == {version}
        assert backend.local_learner.compiled.version == version
        assert (await client.decide("ana", "web", "hero", now=T0)).catalog_version == version
        await ctl.rollback_catalog()
        assert {s.catalog_version for s in backend.shards.values()} == {before}
        await client.close()
    asyncio.run(main())


def test_long_poll_answers_when_the_map_changes():
    async def main():
        backend, ctl, client = await runtime(2)
        version = ctl.map.version
        assert await ctl.get_map(version, 0.01) is None
        waiter = asyncio.ensure_future(ctl.get_map(version, 5.0))
        await asyncio.sleep(0)
        await ctl.scale(3)
        routing = await waiter
        assert routing["version"] > version and len(routing["shards"]) == 3
        await client.close()
    asyncio.run(main())


def test_a_shard_on_a_node_that_left_is_replaced():
    async def main():
        backend, ctl, client = await runtime(3)
        await client.ingest("ana", "app_open", T0)
        lost = ctl.placement[client.owner("ana")]
        backend.node_names.remove(lost)
        await ctl.reconcile()
        assert lost not in ctl.placement.values() and len(ctl.shards) == 3
        assert sorted(sum((ctl.map.partitions_of(s) for s in ctl.shards), [])) == \
            list(range(64))
        # the new owner recovered the customer from the store: the shard's snapshots and the
        # dead shard's journal
        assert await client.ingest("ana", "app_open", T0 + 1) == 2
        await client.close()
    asyncio.run(main())


def test_a_client_refuses_past_its_per_shard_queue_bound(monkeypatch):
    from kairos.cluster.transport import client as client_module
    from kairos.cluster.transport.client import Busy
    monkeypatch.setattr(client_module, "CLIENT_QUEUE_LIMIT", 10)

    async def main():
        backend, ctl, client = await runtime(1)
        results = await asyncio.gather(*(client.ingest("ana", "app_open", T0 + i)
                                         for i in range(50)), return_exceptions=True)
        applied = (await client.profile("ana"))["events_applied"]
        await client.close()
        return results, applied

    results, applied = asyncio.run(main())
    acked = [r for r in results if not isinstance(r, Busy)]
    assert 0 < len(acked) < 50 and acked == list(range(1, len(acked) + 1))
    assert applied == len(acked)


def test_a_link_merges_across_shards_once_while_events_flow():
    from kairos.cluster.identity import alias_key, anonymous_id

    async def main():
        backend, ctl, client = await runtime(3, seed=1)
        # an alias whose anonymous profile lives on another shard than the customer
        value = next(v for v in (f"c{i}" for i in range(1000))
                     if client.owner(anonymous_id(alias_key("cookie", v))) != client.owner("ana"))
        key = alias_key("cookie", value)
        assert await client.resolve("cookie", value) == anonymous_id(key)
        await client.ingest("ana", "app_open", T0)
        acked = []

        async def browse(n):  # the web keeps sending under the alias while the link runs
            for i in range(n):
                customer = await client.resolve("cookie", value)
                acked.append(await client.ingest(customer, "page_view", T0 + i,
                                                 {"category": "home"}))
                await asyncio.sleep(0)

        browsing = asyncio.ensure_future(browse(60))
        await until(lambda: len(acked) >= 5, 5, "5 events acked under the alias", poll_s=0)
        assert await client.link("cookie", value, "ana") is True
        assert len(acked) < 60  # the link ran while events flowed
        await browsing
        assert await client.link("cookie", value, "ana") is False  # a retry merges nothing
        assert await client.resolve("cookie", value) == "ana"
        ana = await client.profile("ana", T0 + 100)
        assert ana["events_applied"] == 1 + len(acked) == 61
        assert await client.profile(anonymous_id(key), T0 + 100) == ana  # via the redirect
        await client.close()
    asyncio.run(main())


def test_forget_erases_the_customer_and_its_aliases():
    from kairos.cluster.transport.client import Conflict

    async def main():
        backend, ctl, client = await runtime(2)
        anon = await client.resolve("email", "ana@example.com")
        await client.ingest(anon, "app_open", T0)
        await client.link("email", "ana@example.com", "ana")
        with pytest.raises(Conflict):
            await client.link("email", "ana@example.com", "bob")
        assert await client.forget("ana") is True
        assert await client.profile("ana") is None
        assert await client.resolve("email", "ana@example.com") == anon
        assert await client.profile(anon) is None
        await client.link("email", "ana@example.com", "bob")  # the alias is free again
        await client.close()
    asyncio.run(main())


def test_settle_turns_each_reply_into_its_result_or_its_error():
    from kairos.cluster.protocol import (Busy as BusyReply, Conflict as ConflictReply,
                                         Event, EventAck, Invalid, Merged, Missing,
                                         ReadProfile, Resolve, Unavailable as UnavailableReply)
    from kairos.cluster.transport.backend import Unavailable
    from kairos.cluster.transport.client import Busy, Conflict

    async def main():
        backend, ctl, client = await runtime(2)
        event = Event(customer_id="ana", event_type="app_open", time=T0)
        ack = EventAck(sequence=3)
        assert await client.settle(event, ack) is ack
        assert await client.settle(ReadProfile(customer_id="nobody", now=T0), Missing()) is None
        await client.ingest("ana", "app_open", T0)
        followed = await client.settle(ReadProfile(customer_id="anon-1", now=T0),
                                       Merged(customer_id="ana"))  # re-sent to ana
        assert followed.value["customer_id"] == "ana"
        errors = [(Invalid(field="time", reason="not a time"), InputError, "time: not a time"),
                  (ConflictReply(reason="linked elsewhere"), Conflict, "linked elsewhere"),
                  (BusyReply(), Busy, r"^kairos-shard-\d+ is at its queue limit$"),
                  (UnavailableReply(reason="recovering"), Unavailable, "recovering")]
        for reply, error, message in errors:
            with pytest.raises(error, match=message):
                await client.settle(event, reply)
        with pytest.raises(InputError, match="customer_id"):
            client.enqueue(event._replace(customer_id=""))
        with pytest.raises(InputError, match="key"):
            client.enqueue(Resolve(key=None))
        await client.close()
    asyncio.run(main())



def _actor(ray_class) -> type:
    """The class under Ray's ActorClass, whose methods run remotely."""
    return ray_class.__ray_metadata__.modified_class.__ray_actor_class__


def _parameters(function, defaults: bool = True) -> list:
    """A method's parameters after self (Ray's tracing one aside), with their defaults."""
    found = list(inspect.signature(function).parameters.values())[1:]
    return [(p.name, p.default) if defaults else p.name for p in found
            if p.name != "_ray_trace_ctx"]


@pytest.mark.parametrize("interface, implementations, defaults", [
    (interface.Backend, [ray_backend.RayBackend, LocalBackend], True),
    (interface.ShardControl, [ray_backend.RayShard, local_backend.LocalShard], True),
    (interface.LearnerControl, [ray_backend.RayLearner, local_backend.LocalLearner], True),
    (interface.ControllerControl, [ray_backend.RayController, Controller], True),
    (interface.WatchSink, [ray_backend.RaySink, local_backend.LocalSink], True),
    (interface.GatewayControl, [ray_backend.RayGateway, local_backend.LocalGateway], True),
    # what the Ray handles call: the actors' methods by the same names (Ray passes every
    # argument, so defaults need not agree)
    (interface.ShardControl, [_actor(ShardActor)], False),
    (interface.LearnerControl, [_actor(LearnerActor)], False),
    (interface.ControllerControl, [_actor(ControllerActor)], False),
], ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None)
def test_every_backend_implements_the_interface_with_its_parameters(interface,
                                                                     implementations,
                                                                     defaults):
    methods = [n for n, v in vars(interface).items() if callable(v) and not n.startswith("_")]
    for implementation in implementations:
        for name in methods:
            assert _parameters(getattr(implementation, name), defaults) == \
                _parameters(getattr(interface, name), defaults), (implementation, name)
