"""A shard checks, as it opens its store to start or rebuild, that the store holds the claim of
the controller that created it (issue 18): a cluster given `--store /var/kairos` on each node's
own disk, or `redis://localhost:6379` reaching another Redis on each node, would otherwise
write journals, snapshots and homes nobody else sees. Real controllers claim real stores;
each shard is a ShardHost, as ShardActor runs it, made from the arguments the controller
passes when it creates the shard, opening the store URL as the node it is placed on reaches
it."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest
import redis

from kairos.cluster.control.controller import Controller
from kairos.cluster.protocol import EventAck
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.recovering import StoreAt
from kairos.cluster.storage.ownership import check_claimed
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreNotClaimed

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until
from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_same_name import EVERY
from .test_shard import N_PARTITIONS, T0, event

WHAT_TO_DO = ("A directory store must be one directory every node mounts (NFSv4); a Redis URL "
              "must reach the same server from every node")


class Nodes(LocalBackend):
    """Creates each shard as the ShardHost its ShardActor would run, on the node the controller
    places it, where the store URL reaches `reaches[node]` if given (that node's own disk, its
    own Redis), else the controller's store."""

    def __init__(self, reaches: dict[str, str]):
        super().__init__(("node-a", "node-b"))
        self.reaches = reaches
        self.hosts: dict[str, ShardHost] = {}

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str, owner: str) -> None:
        await super().create_shard(name, node, n_partitions, seed, store_url, journal_policy,
                                   owner)
        url = self.reaches.get(node, store_url)
        self.hosts[name] = ShardHost(name, n_partitions, seed, StoreAt(url), journal_policy,
                                     tick_s=3600.0, owner=owner)


def stores(kind: str, tmp_path, request) -> tuple[str, str]:
    """The controller's store URL, and another store the same URL reaches from node-b."""
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
        return f"{url}?prefix=ctl-{request.node.name}", f"{url}?prefix=b-{request.node.name}"
    return str(tmp_path / "shared"), str(tmp_path / "node-b")


def written(kind: str, url: str) -> list:
    """What is in a store: its files, or its keys."""
    if kind == "redis":
        store = open_store(url)
        return sorted(store.r.keys(f"{store.prefix}:*"))
    return sorted(str(p) for p in Path(url).rglob("*") if p.is_file())


async def claimed(backend: Nodes, url: str, owner: str) -> Controller:
    """A controller of the cluster `owner` on the store `url`, its claim made (as
    runtime.start's first step)."""
    controller = Controller(backend, n_partitions=N_PARTITIONS, store_url=url, owner=owner)
    await controller.store_claim.claim()
    return controller


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_shard_on_a_node_that_reaches_another_store_refuses_it_and_writes_nothing(
        compiled, tmp_path, request, kind, caplog):
    url, elsewhere = stores(kind, tmp_path, request)
    backend = Nodes({"node-b": elsewhere})

    async def main():
        controller = await claimed(backend, url, "ours")
        name = await controller._create_shard(node="node-b")
        host = backend.hosts[name]
        before = written(kind, elsewhere)
        await host.start(compiled, EVERY, [])
        assert host.shard is None
        assert host.recovery["unclaimed"] is True
        failed = host.recovery["failed"]
        assert failed.startswith(f"StoreNotClaimed: the store {elsewhere}, as host "
                                 f"{socket.gethostname()} reaches it, holds no cluster's claim: "
                                 f"this host reaches another store by that name than the "
                                 f"controller does")
        assert WHAT_TO_DO in failed
        late, = await host.handle("a", 0, [event("ana", "app_open", T0)], [0])
        assert late.status == "unavailable"
        await asyncio.sleep(0.4)  # it tries again meanwhile, writing nothing
        assert written(kind, elsewhere) == before
        if kind == "directory":  # not even the directory made (the claim read by its path)
            assert not (tmp_path / "node-b").exists()

        with caplog.at_level(logging.WARNING, "kairos.controller"):  # the operator reads this
            controller._healths = {name: {"started": False, "node": "node-b",
                                          "recovery": host.recovery}}
            controller._say_unclaimed()
        assert f"{name} on node node-b serves nothing: StoreNotClaimed: the store " \
               f"{elsewhere}" in caplog.text

        if kind == "directory":  # the node mounts the controller's store: served, no restart
            os.symlink(tmp_path / "shared", tmp_path / "node-b")
            await until(lambda: host.shard is not None, 10.0, "the shard serving")
            assert await host.handle("b", 0, [event("ana", "app_open", T0)], [0]) == \
                [EventAck(sequence=1)]
            host.shard.close()
        host.stop()
        await controller.store_claim.release()
    asyncio.run(main())


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_shard_on_the_controllers_store_starts_and_serves(compiled, tmp_path, request, kind):
    url, elsewhere = stores(kind, tmp_path, request)
    backend = Nodes({"node-b": elsewhere})

    async def main():
        controller = await claimed(backend, url, "ours")
        name = await controller._create_shard(node="node-a")
        host = backend.hosts[name]
        await host.start(compiled, EVERY, [])
        assert host.shard is not None, host.recovery
        assert await host.handle("a", 0, [event("ana", "app_open", T0)], [0]) == \
            [EventAck(sequence=1)]
        host.stop()
        host.shard.close()
        await controller.store_claim.release()
    asyncio.run(main())


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_store_another_cluster_holds_is_refused(compiled, tmp_path, request, kind):
    url, elsewhere = stores(kind, tmp_path, request)
    backend = Nodes({"node-b": elsewhere})

    async def main():
        controller = await claimed(backend, url, "ours")
        theirs = await claimed(LocalBackend(), elsewhere, "theirs")  # on node-b's store
        before = written(kind, elsewhere)
        name = await controller._create_shard(node="node-b")
        host = backend.hosts[name]
        await host.start(compiled, EVERY, [])
        assert host.shard is None
        assert host.recovery["unclaimed"] is True
        assert f"StoreNotClaimed: the store {elsewhere}, as host {socket.gethostname()} " \
               f"reaches it, is held by another Kairos cluster (its controller: host " \
               f"{socket.gethostname()}, pid {os.getpid()}, since " in host.recovery["failed"]
        assert "this host reaches that cluster's store by the name" in host.recovery["failed"]
        assert WHAT_TO_DO in host.recovery["failed"]
        assert written(kind, elsewhere) == before
        host.stop()
        await theirs.store_claim.release()
        await controller.store_claim.release()
    asyncio.run(main())


def test_the_refusal_names_the_store_without_its_password(redis_server):  # noqa: F811
    with redis.Redis(port=redis_server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "kairos", "on", ">claim-secret", "~*", "+@all")
    store = open_store(f"redis://kairos:claim-secret@127.0.0.1:{redis_server.port}/0"
                       f"?prefix=unclaimed")
    with pytest.raises(StoreNotClaimed) as refused:
        check_claimed(store, "ours")
    assert str(refused.value).startswith(
        f"the store redis://***@127.0.0.1:{redis_server.port}/0?prefix=unclaimed, as host ")
    assert "claim-secret" not in str(refused.value)
