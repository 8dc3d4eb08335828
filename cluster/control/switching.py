"""The learner's catalog switches (learner.py `LearnerActor.switch`): one at a time, each saved
on a thread, as its other saves are (posterior.py `Saves`), while its event loop goes on
answering every shard's watch and `status`. Saved on the loop, a switch held them all for the
write: a 37 MiB posterior, 93-188 ms on a local directory store (on a thread, 39-43 ms, the
copy: posterior.py `saved_parts`; a loaded 2-core machine), more over a network.

A switch answers only once it is saved, and one the store does not take is put back, so
nothing may build on it while it is written: a sync or a flush then waits for it to answer
(`passed`), no watch is answered with it (Learner.hold_watches), and the next switch waits its
turn. Syncs wait rather than merge into the switched tables: put back, those merges (and the
deltas' sequences, which go back with the rest) would be lost unless redone from a record of
them that nothing else needs, where waiting holds a sync for the save in flight when the
switch came (a thread's) and the switch's own, for which a save on the loop held every call."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from kairos.cluster.control.posterior import Saves
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable

# switches the learner; its new model version, and what puts it back
Switch = Callable[[], tuple[int, Callable[[], None]]]


class Switches:
    def __init__(self, learner: Any, saves: Saves) -> None:
        self.learner, self.saves = learner, saves
        self._turn = asyncio.Lock()  # held by the switch in flight; the next ones queue on it

    async def passed(self) -> None:
        """Once no switch is in flight (at once if none): a merge or a save then finds the
        catalog it left, saved or put back."""
        if self._turn.locked():
            async with self._turn:
                pass

    async def run(self, switch: Switch) -> int:
        """`switch()` once the switches before it answered, then saved (waited for); if the
        store does not take it, put back, and StoreUnavailable or StoreInUse raised. Carried
        to its end should its caller be cancelled (RayBackend cancels only long polls, but a
        ray.cancel would): a failed save must still put the learner back, and merges wait
        until it does."""
        async def in_turn() -> int:
            async with self._turn:
                await self.saves.idle()  # no save in flight lands after this switch's
                version, put_back = switch()
                self.learner.hold_watches(True)
                try:
                    await self.saves.save_now(self.learner)
                except (StoreUnavailable, StoreInUse):
                    put_back()
                    raise
                finally:
                    self.learner.hold_watches(False)
                return version
        return await asyncio.shield(asyncio.get_running_loop().create_task(in_turn()))
