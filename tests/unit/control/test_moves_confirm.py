"""A move the controller settled done confirms it to its target: the partitions it
adopted are no longer arriving, so their timers fire there (shard/handoff.py)."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from kairos.cluster.control import moves
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.moves import confirm_owned
from kairos.cluster.control.partitions import Move
from kairos.cluster.shard.shard import Shard
from kairos.cluster.transport.backend import NoSuchCall
from kairos.cluster.transport.ray_backend import RayBackend

from tests.support.local_backend import LocalBackend, LocalShard


def test_a_settled_move_leaves_nothing_arriving_on_its_target():
    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(1)
        await ctl.scale(2)
        moved = {s.name: dict(s.ownership.arriving) for s in backend.shards.values()}
        assert sum(len(s.owned) for s in backend.shards.values()) == ctl.map.n_partitions
        assert moved == {name: {} for name in moved}
        # the adopt snapshotted each partition; a thaw to confirm wrote each a second time
        new = next(s for s in backend.shards.values() if s.name != ctl.map.shards_in_use()[0])
        assert new.counts["snapshots"] == len(new.owned) > 0
        await backend.close()
    asyncio.run(main())


async def two_shards() -> tuple[LocalBackend, Controller, Shard, list[int]]:
    """A local runtime of two shards; its first shard, and that shard's partitions."""
    backend = LocalBackend()
    ctl = await backend.start_runtime(2)
    shard = backend.shards[ctl.map.shards_in_use()[0]]
    return backend, ctl, shard, ctl.map.partitions_of(shard.name)


def test_the_saved_map_confirms_what_a_target_still_holds_arriving():
    """A confirmation that failed (or an older controller that never sent one) leaves the
    target's partitions arriving; `confirm_owned` for the saved map confirms them, and leaves
    one adopted by a move newer than the map arriving."""
    async def main():
        backend, ctl, shard, mine = await two_shards()
        shard.ownership.arriving.update({mine[0]: ctl.map.version,
                                         mine[1]: ctl.map.version + 1})
        await confirm_owned(backend, ctl.map)
        assert shard.ownership.arriving == {mine[1]: ctl.map.version + 1}
        await backend.close()
    asyncio.run(main())


def test_a_stuck_move_holds_back_the_confirmation_of_its_partition_alone():
    async def main():
        backend, ctl, shard, mine = await two_shards()
        shard.ownership.arriving.update({p: ctl.map.version for p in mine[:2]})
        ctl.moving = [Move(mine[1], ctl.map.shards_in_use()[1], shard.name)]  # unsettled
        await ctl._confirm_owned()
        assert shard.ownership.arriving == {mine[1]: ctl.map.version}
        await backend.close()
    asyncio.run(main())


def test_a_shard_older_than_confirm_is_logged_once(monkeypatch, caplog):
    async def predates(self, partitions, version):  # as RayShard.confirm says it
        raise NoSuchCall("'ActorHandle' object has no attribute 'confirm'")

    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(2)
        monkeypatch.setattr(LocalShard, "confirm", predates)
        monkeypatch.setattr(moves, "_PREDATE_CONFIRM", set())  # none logged yet
        for _ in range(3):
            await confirm_owned(backend, ctl.map)
        await backend.close()
        return ctl.map.shards_in_use()

    with caplog.at_level(logging.INFO, logger="kairos.controller"):
        shards = asyncio.run(main())
    logged = [r.getMessage() for r in caplog.records if r.name == "kairos.controller"
              and "confirm" in r.getMessage()]
    assert sorted(m.split()[1] for m in logged) == sorted(shards)
    assert all("predates confirm" in m for m in logged)


def test_an_attribute_error_raised_by_a_shards_confirm_is_a_failure_not_its_age(
        monkeypatch, caplog):
    """Through Ray, the call's own error is a RayTaskError that is an AttributeError too."""
    async def broken(self, partitions, version):
        raise AttributeError("'NoneType' object has no attribute 'pop'")

    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(1)
        monkeypatch.setattr(LocalShard, "confirm", broken)
        monkeypatch.setattr(moves, "_PREDATE_CONFIRM", set())
        await confirm_owned(backend, ctl.map)
        await backend.close()
        return ctl.map.shards_in_use()

    with caplog.at_level(logging.INFO, logger="kairos.controller"):
        [shard] = asyncio.run(main())
    logged = [r.getMessage() for r in caplog.records if r.name == "kairos.controller"]
    assert [m.split(":")[0] for m in logged if "predates" in m or "settling" in m] == [
        f"settling a move on {shard} failed (retried later)"]


class Handle:
    """A shard actor's handle as Ray gives it: `confirm` missing (an older shard), or one
    whose call raises `error`, as the shard's method did."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        if error is not None:
            self.confirm = SimpleNamespace(remote=self._remote)

    async def _remote(self, partitions, version):
        raise self.error


@pytest.mark.parametrize("handle, raised", [
    (Handle(), NoSuchCall),
    (Handle(AttributeError("'NoneType' object has no attribute 'pop'")), AttributeError),
])
def test_only_a_ray_shard_without_confirm_answers_no_such_call(monkeypatch, handle, raised):
    async def main():
        backend = RayBackend()
        monkeypatch.setattr(backend, "_handle", lambda name: handle)
        with pytest.raises(raised) as error:
            await backend.shard("s0").confirm([1], 2)
        assert isinstance(error.value, NoSuchCall) == (raised is NoSuchCall)
    asyncio.run(main())
