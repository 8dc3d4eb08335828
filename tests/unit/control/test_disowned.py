"""A shard whose journal is no longer its own while it is the incarnation the controller knows
(the store lost its start's claim: Redis failed over to a replica behind it, restarted from
older persistence, was flushed): its rebuild stays down with a health that says `disowned`,
and the control loop starts it again, which claims the journal (review rev41 d-fence,
finding 1). Not while the cluster's claim on the store is lost: another cluster may hold the
journal, and gets it back from no one."""
from __future__ import annotations

import asyncio
from typing import Any

from kairos.cluster.shard.host import DISOWNED

from tests.unit.control.actors import Actors, ActorShard, controller_on, customers_of, ingest
from tests.unit.control.test_control_loop import rounds


class Losing(Actors):
    """Actors whose shards can be left down without a restart of their process, their
    recovery failing as `failed` says until a start."""

    def __init__(self):
        super().__init__()
        self.failed: dict[str, dict[str, Any]] = {}  # shard -> its health's `recovery`
        self.starts: dict[str, int] = {}

    def shard(self, name: str) -> "LosingShard":
        return LosingShard(self, name)

    def down(self, name: str, recovery: dict[str, Any]) -> None:
        self.shards[name] = None
        self.failed[name] = recovery


class LosingShard(ActorShard):
    async def health(self) -> dict[str, Any]:
        health = await super().health()
        return {**health, "recovery": self._backend.failed.get(self.name, {})}

    async def start(self, *args: Any, **kwargs: Any) -> str:
        incarnation = await super().start(*args, **kwargs)
        self._backend.failed.pop(self.name, None)
        self._backend.starts[self.name] = self._backend.starts.get(self.name, 0) + 1
        return incarnation


def disowned(name: str) -> dict[str, Any]:
    return {"failed": DISOWNED.format(name), "disowned": True}


async def started(tmp_path) -> tuple[Losing, Any, str]:
    """A controller on a Losing backend, its starts forgotten, and the name of a shard of it."""
    backend = Losing()
    controller = await controller_on(backend, str(tmp_path))
    backend.starts.clear()
    return backend, controller, controller.shards[1]


def test_a_shard_whose_claim_the_store_lost_is_started_again_by_the_control_loop(tmp_path):
    async def main():
        backend, controller, name = await started(tmp_path)
        mine = customers_of(controller, name)
        await ingest(backend, mine, 0)
        known = controller.incarnations[name]
        backend.down(name, disowned(name))
        await rounds(controller)
        assert backend.shards[name] is not None and backend.starts == {name: 1}
        assert controller.incarnations[name] == known  # the same process, started again
        async with asyncio.timeout(10):
            assert await ingest(backend, mine, 1) == [2] * len(mine)
    asyncio.run(main())


def test_a_shard_down_for_another_reason_rebuilds_itself(tmp_path):
    """A recovery that failed otherwise (the store is down) is the shard's own to retry: the
    controller does not start it again each round."""
    async def main():
        backend, controller, name = await started(tmp_path)
        backend.down(name, {"failed": "StoreUnavailable: the store does not answer"})
        await rounds(controller, 2)
        assert backend.shards[name] is None and not backend.starts
    asyncio.run(main())


def test_a_cluster_that_lost_its_claim_on_the_store_does_not_take_a_journal_back(tmp_path):
    async def main():
        backend, controller, name = await started(tmp_path)
        backend.down(name, disowned(name))
        controller.store_claim.lost = lambda: "this cluster lost its store to another"
        await rounds(controller, 2)
        assert backend.shards[name] is None and not backend.starts
    asyncio.run(main())
