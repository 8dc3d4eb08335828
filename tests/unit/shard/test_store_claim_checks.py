"""The store check of a shard (issue 18; test_store_not_claimed.py) where the store refused
is another cluster's directory, where another controller of the cluster starts the shard, at
a rebuild, and what the shard and the controller's round log. Real controllers claim real
directories; each shard is the ShardHost its ShardActor runs, which the controller starts
and asks for its health through `HostShard`, a ShardControl over it as RayShard is over the
actor."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray

from kairos.cluster.control.controller import Controller
from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.recovering import Failures, StoreAt
from kairos.cluster.storage.store import StoreNotClaimed, StoreUnavailable

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

from .test_same_name import EVERY
from .test_shard import N_PARTITIONS

RETRIED = "recovering from the store failed"
Actor = ShardActor.__ray_metadata__.modified_class


class HostShard:
    """A ShardActor's own start, set_owner and health (the methods of the class Ray wraps,
    run here without Ray) over its ShardHost, on the node the backend placed it: the
    ShardControl calls the control loop and a resume make of a shard, as RayShard makes them
    of the actor."""

    start = Actor.start
    set_owner = Actor.set_owner
    _health = Actor.health

    def __init__(self, host: ShardHost, node: str):
        self.name, self.host, self.node = host.name, host, node
        self.incarnation = host.incarnation
        self.models = ModelSync(host.name)
        self._snapshot = {"shard": host.name, "started": False}

    async def health(self) -> dict[str, Any]:
        with _on_node(self.node):
            return await self._health()


@contextlib.contextmanager
def _on_node(node: str):
    """Ray's runtime context as the actor's process on `node` reads it (for `health`)."""
    real = ray.get_runtime_context
    ray.get_runtime_context = lambda: SimpleNamespace(get_node_id=lambda: node)
    try:
        yield
    finally:
        ray.get_runtime_context = real


class Nodes(LocalBackend):
    """Creates each shard as the ShardHost its ShardActor would run, on the node the controller
    places it, opening the store URL at `reaches[node]` where given (that node's own disk)."""

    def __init__(self, reaches: dict[str, str] | None = None):
        super().__init__(("node-a", "node-b"))
        self.reaches = reaches or {}
        self.hosts: dict[str, HostShard] = {}

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str, owner: str) -> None:
        await super().create_shard(name, node, n_partitions, seed, store_url, journal_policy,
                                   owner)
        host = ShardHost(name, n_partitions, seed, StoreAt(self.reaches.get(node, store_url)),
                         journal_policy, tick_s=3600.0, owner=owner)
        self.hosts[name] = HostShard(host, node)

    def shard(self, name: str) -> HostShard:
        return self.hosts[name]


async def claimed(backend: LocalBackend, url: str, owner: str) -> Controller:
    """A controller of the cluster `owner` on the store `url`, its claim made."""
    controller = Controller(backend, n_partitions=N_PARTITIONS, store_url=url, owner=owner)
    await controller.store_claim.claim()
    return controller


def tree(root: Path) -> list[tuple[str, int, bool]]:
    """Every path under `root` (and itself), with its mode and whether it is a folder."""
    if not root.exists():
        return []
    return sorted((str(p), stat.S_IMODE(p.lstat().st_mode), p.is_dir())
                  for p in [root, *root.rglob("*")])


# -- a refused shard leaves another cluster's directory as it found it ------------------------

def test_a_shard_refused_leaves_another_clusters_directory_as_it_was(compiled, tmp_path):
    """The store node-b reaches is another cluster's, with what opening it would change: a
    folder missing, one with modes looser than the store's own, a temporary file a crash left
    long ago. The shard refuses it without building a store there: every path, and its mode,
    as they were."""
    ours, theirs = tmp_path / "shared", tmp_path / "theirs"
    backend = Nodes({"node-b": str(theirs)})

    async def main():
        controller = await claimed(backend, str(ours), "ours")
        other = await claimed(LocalBackend(), str(theirs), "theirs")  # its store, opened
        (theirs / "decisions").rmdir()
        (theirs / "meta").chmod(0o755)
        leftover = theirs / "snapshots" / "p3.tmp"
        leftover.write_bytes(b"half")
        os.utime(leftover, (time.time() - 86400,) * 2)
        before = tree(theirs)
        name = await controller._create_shard(node="node-b")
        host = backend.hosts[name].host
        await host.start(compiled, EVERY, [], owner="ours")
        await asyncio.sleep(0.4)  # and the retries meanwhile
        assert host.shard is None and host.recovery["unclaimed"] is True
        assert "is held by another Kairos cluster" in host.recovery["failed"]
        assert tree(theirs) == before
        host.stop()
        await other.store_claim.release()
        await controller.store_claim.release()
    asyncio.run(main())


# -- another controller of the cluster ---------------------------------------------------------

def test_a_shard_started_by_another_controller_checks_that_ones_claim(tmp_path):
    """Created by controller a (Ray passes a's token again at each restart of the actor),
    started by controller b of another token (a `kairos up` that took it up): its rebuilds
    check b's claim, which the store holds, not a's, which is gone."""
    url = str(tmp_path / "shared")
    backend = Nodes()

    async def main():
        a = await claimed(backend, url, "a")
        name = await a._create_shard(node="node-a")
        await a.store_claim.release()  # a stopped; b claims and starts the shard
        b = await claimed(backend, url, "b")
        b.placement = dict(a.placement)
        await b._start_shard(name)
        host = backend.hosts[name].host
        assert host.shard is not None, host.recovery
        host._fail(StoreUnavailable("the disk went away a moment"))
        await until(lambda: host.shard is not None, 10.0, f"{name} rebuilt: {host.recovery}")
        host.stop()
        host.shard.close()
        await b.store_claim.release()
    asyncio.run(main())


def test_a_shard_a_resume_keeps_serving_checks_the_new_controllers_claim(tmp_path):
    """A `kairos up` with a new token takes up a shard that serves, and keeps it serving
    (resuming.py): it tells it its token, so the shard's next rebuild checks the running
    controller's claim and serves, with no round (the token it was started with is gone for
    good: refused, it stayed down until a round started it again)."""
    url = str(tmp_path / "shared")
    backend = Nodes()

    async def main():
        a = Controller(backend, n_partitions=N_PARTITIONS, store_url=url, owner="a")
        await a.start(1)
        name, = a.shards
        host = backend.hosts[name].host
        assert host.shard is not None and host.owner == "a", host.recovery
        await a.store_claim.release()  # a stopped; b takes the cluster up
        b = Controller(backend, n_partitions=N_PARTITIONS, store_url=url, owner="b")
        await b.start(1)
        assert b.shards == [name] and b.incarnations[name] == host.incarnation  # kept
        assert host.owner == "b"
        host._fail(StoreUnavailable("the disk went away a moment"))
        await until(lambda: host.shard is not None or host.recovery.get("unclaimed"), 10.0,
                    f"{name} rebuilt")
        assert host.shard is not None, host.recovery
        host.stop()
        host.shard.close()
        await b.store_claim.release()
    asyncio.run(main())


def test_a_shard_that_checks_an_earlier_controllers_claim_is_started_again_once_refused(
        tmp_path, caplog):
    """A shard that still checks the token of an earlier controller (a resume took it up as
    it rebuilt, or could not tell it: resuming.py) is refused at its next rebuild, since that
    claim is gone for good: the next round starts it again, with the running controller's
    token, and does not log it as a shard on a store held by another cluster (its refusal
    names this cluster's own controller so)."""
    url = str(tmp_path / "shared")
    backend = Nodes()

    async def main():
        a = await claimed(backend, url, "a")
        name = await a._create_shard(node="node-a")
        await a._start_shard(name)
        host = backend.hosts[name].host
        assert host.shard is not None, host.recovery
        await a.store_claim.release()
        b = await claimed(backend, url, "b")
        b.placement, b.incarnations = dict(a.placement), dict(a.incarnations)  # as resume
        host._fail(StoreUnavailable("the disk went away a moment"))
        await until(lambda: host.recovery.get("unclaimed"), 10.0, f"{name} refused")
        try:
            with caplog.at_level(logging.WARNING, "kairos.controller"):
                await b._restart_shards()
            assert host.shard is not None, host.recovery
            assert host.owner == "b"
            host.shard.close()
        finally:  # else the host's loops outlive the test's event loop
            host.stop()
            await b.store_claim.release()
        return name
    name = asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if r.name == "kairos.controller"]
    assert said == [f"{name} checks the claim of a controller before this one; it "
                    f"recovers its partitions from the store ({url})"], said


class OlderShard(HostShard):
    """A shard of a release whose health names no owner."""

    async def health(self) -> dict[str, Any]:
        health = await super().health()
        del health["owner"]
        return health


def test_a_shard_whose_health_names_no_owner_is_not_started_again_as_an_earlier_ones(
        tmp_path, caplog):
    """Refused on a store its node reaches by the URL, a shard whose health names no owner
    is logged as such by the rounds, and left to retry on its own: read as checking another
    controller's claim, every round started it again."""
    backend = Nodes({"node-b": str(tmp_path / "local")})

    async def main():
        controller = await claimed(backend, str(tmp_path / "shared"), "ours")
        name = await controller._create_shard(node="node-b")
        backend.hosts[name] = OlderShard(backend.hosts[name].host, "node-b")
        await controller._start_shard(name)
        host = backend.hosts[name].host
        assert host.recovery.get("unclaimed"), host.recovery
        with caplog.at_level(logging.WARNING, "kairos.controller"):
            for _ in range(3):
                await controller._restart_shards()
        said = [r.getMessage() for r in caplog.records if r.name == "kairos.controller"]
        assert len(said) == 1 and said[0].startswith(f"{name} on node node-b serves "
                                                     f"nothing: StoreNotClaimed"), said
        host.stop()
        await controller.store_claim.release()
    asyncio.run(main())


# -- a rebuild, and what is logged ------------------------------------------------------------

def test_a_rebuild_on_a_store_not_the_clusters_is_refused_and_logged_by_the_round(
        tmp_path, caplog):
    """A shard that serves on the controller's directory loses it under a rebuild: its node
    now mounts another there (an NFS mount gone, the node's own disk beneath). The rebuild
    is refused, writes nothing there, the controller's round logs it once; the mount back,
    the shard serves again (from the controller's store), with no restart."""
    shared, local, mount = tmp_path / "shared", tmp_path / "local", tmp_path / "mount"
    local.mkdir()
    mount.symlink_to(shared)
    backend = Nodes({"node-b": str(mount)})

    async def main():
        controller = await claimed(backend, str(shared), "ours")
        name = await controller._create_shard(node="node-b")
        await controller._start_shard(name)
        host = backend.hosts[name].host
        assert host.shard is not None, host.recovery
        mount.unlink()
        mount.symlink_to(local)
        host._fail(StoreUnavailable("the mount went away"))
        await until(lambda: host.recovery.get("unclaimed"), 10.0, f"{name} refused")
        assert host.shard is None
        assert f"StoreNotClaimed: the store {mount}, as host {socket.gethostname()} reaches " \
               f"it, holds no cluster's claim" in host.recovery["failed"]
        with caplog.at_level(logging.WARNING, "kairos.controller"):
            for _ in range(3):
                await controller._restart_shards()
        said = [r.getMessage() for r in caplog.records if r.name == "kairos.controller"]
        assert len(said) == 1, said
        assert said[0].startswith(f"{name} on node node-b serves nothing: StoreNotClaimed: "
                                  f"the store {mount}")
        assert list(local.iterdir()) == []
        mount.unlink()
        mount.symlink_to(shared)
        await until(lambda: host.shard is not None, 10.0, f"{name} serving again")
        assert host.shard.store.root == mount and (shared / "journals" / name).exists()
        host.stop()
        host.shard.close()
        await controller.store_claim.release()
    asyncio.run(main())


def test_a_shard_logs_a_store_not_its_clusters_once_while_it_lasts(compiled, tmp_path, caplog):
    """Each start makes an attempt at once (and retries follow, up to 2 s apart): the shard's
    log says the refusal once, then at most every UNCLAIMED_LOG_S, as the controller's copy."""
    host = ShardHost("kairos-shard-0", N_PARTITIONS, 1, StoreAt(str(tmp_path / "local")),
                     tick_s=3600.0, owner="ours")

    async def main():
        with caplog.at_level(logging.WARNING, "kairos.shard"):
            for _ in range(3):
                await host.start(compiled, EVERY, [])
        host.stop()
    asyncio.run(main())
    said = [r for r in caplog.records if RETRIED in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "StoreNotClaimed" in said[0].getMessage()


def test_a_refusal_that_ends_is_logged_again_when_it_comes_back(caplog):
    failures = Failures("kairos-shard-0")
    refused = StoreNotClaimed("the store /var/kairos, as host h reaches it, holds no claim")
    with caplog.at_level(logging.WARNING, "kairos.shard"):
        assert failures.said(refused)["unclaimed"] is True
        failures.said(refused)
        failures.passed()  # it served meanwhile
        failures.said(refused)
        failures.said(OSError("disk full"))  # another failure: each one logged
        failures.said(OSError("disk full"))
    assert [r.getMessage().partition("failed (")[2].partition(":")[0]
            for r in caplog.records] == ["StoreNotClaimed", "StoreNotClaimed", "OSError",
                                         "OSError"]
