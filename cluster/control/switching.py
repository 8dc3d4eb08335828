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
switch came (a thread's) and the switch's own, for which a save on the loop held every call.

The switch's remap of the models (`remapped`: mostly inverting precisions) runs on a thread too:
on the loop, it held every call 0.11-0.38 s at 900 models and 0.59-2.7 s at 4,500 (32
coefficients each; a probe, loaded 2-core machine). On a thread, the loop's longest hold in a
switch is 1-28 ms and 18-197 ms (mostly the save's copy), and the switch takes about as long
(up to twice as long while the loop is kept busy: they share the GIL). The remap reads the
learner's tables while the loop answers watches and `status`, so nothing may change them
meanwhile: learner.py `LearnerActor._switched` says why nothing does. The learner takes the
result up on the loop (Learner.switch)."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, NamedTuple

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.models import ModelRemap, ModelTable, TakenOut

from kairos.cluster.control.posterior import Saves
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable

# the catalog versions before the running one whose deltas are carried over: a shard runs the
# previous one while a switch commits, and a lagging one may be a few behind
REMAPS_KEPT = 4
# switches the learner; its new model version, and what puts it back. It takes its switch up
# in the step it returns in, so that no watch sees the switch before `run` holds them
Switch = Callable[[], Awaitable[tuple[int, Callable[[], None]]]]


class Remapped(NamedTuple):
    """A learner's tables moved to another catalog (`remapped`), for Learner.switch."""

    compiled: CompiledCatalog
    earlier: dict[str, CompiledCatalog]  # the latest REMAPS_KEPT catalogs before it
    remaps: dict[str, ModelRemap]  # from each of those to it
    taken_out: TakenOut
    models: ModelTable  # its version is the learner's to set


def remapped(models: ModelTable, compiled: CompiledCatalog,
             earlier: dict[str, CompiledCatalog], taken_out: TakenOut,
             catalog_text: str) -> Remapped:
    """A learner's `models`, of `compiled`, moved to `catalog_text`'s catalog, with its
    `earlier` catalogs and `taken_out` models: new objects, its own read and left as they are
    (a thread may run it while the loop publishes them)."""
    new = compiled_from_text(catalog_text)
    earlier = {version: old for version, old in earlier.items() if version != new.version}
    if new.version != compiled.version:  # else its deltas are the new text's
        earlier[compiled.version] = compiled
    while len(earlier) > REMAPS_KEPT:
        del earlier[next(iter(earlier))]
    # each straight to the new version: chained, the remaps grew with every switch
    remaps = {old: ModelRemap(earlier_compiled, new)
              for old, earlier_compiled in earlier.items()}
    remap = remaps.get(compiled.version) or ModelRemap(compiled, new)
    taken_out = taken_out.switched(models, compiled, remap)
    table = remap.table(models)
    taken_out.bring_back(table, new, remap)
    return Remapped(new, earlier, remaps, taken_out, table)


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
        """`switch()` once the switches before it answered (syncs and flushes wait from then
        on: its remap on a thread too), then saved (waited for); if the store does not take
        it, put back, and StoreUnavailable or StoreInUse raised. Carried to its end should its
        caller be cancelled (RayBackend cancels only long polls, but a ray.cancel would): a
        failed save must still put the learner back, and merges wait until it does."""
        async def in_turn() -> int:
            async with self._turn:
                await self.saves.idle()  # no save in flight lands after this switch's
                version, put_back = await switch()
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
