"""Two clusters on one store would write the same shards' journals: the controller claims its
store before its cluster writes anything (ownership.py), and a second cluster's controller,
its own owner token, refuses to start, or to take up what the first saved, while the first
holds the store: it starts no shard and writes nothing. Once the first gives the store up (it
stops), the second starts there and takes up where the first stopped."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kairos.cluster.control import actor as actor_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.storage.store import StoreInUse

from tests.unit.control.actors import Actors


@pytest.fixture
def actor_on(monkeypatch):
    """ControllerActor's own class (not Ray's) on a LocalBackend, for the cluster `owner`."""
    monkeypatch.setattr(actor_module.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-a"))

    def make(backend: Actors, store: str, owner: str):
        monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
        return ControllerActor.__ray_metadata__.modified_class(None, 64, store, owner=owner)

    return make


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_a_second_cluster_on_a_store_another_holds_starts_and_writes_nothing(tmp_path,
                                                                             actor_on):
    async def main():
        first = actor_on(Actors(), str(tmp_path), "first")
        await first.start(2)
        written = files(tmp_path)
        backend = Actors()
        second = actor_on(backend, str(tmp_path), "second")
        with pytest.raises(StoreInUse) as refused:
            await second.start(2)
        assert str(refused.value).startswith(
            f"the store {tmp_path} is in use by another Kairos cluster (its controller: host ")
        assert f"pid {os.getpid()}, since" in str(refused.value)
        with pytest.raises(StoreInUse):  # as after Ray restarted it: the first's, not its own
            await second.controller.resume()
        assert not backend.shards and files(tmp_path) == written
        assert await first.status()  # the first serves on

        await first.release_store()  # it stops
        routing = await second.start(2)
        assert routing["shards"] == sorted(first.controller.shards)  # taken up
    asyncio.run(main())


def test_a_controller_actor_claims_with_the_owner_it_is_given_and_only_that(tmp_path, actor_on):
    """One of its process's own would make the controller Ray restarts (another process)
    another cluster to the store its first incarnation holds: refused, or made to wait out
    its own lease."""
    with pytest.raises(TypeError, match="owner"):
        ControllerActor.__ray_metadata__.modified_class(None, 64, str(tmp_path))
    assert actor_on(Actors(), str(tmp_path), "ours").controller.store_claim.owner == "ours"

