"""The learner's catalog switches (learner.py `LearnerActor.switch`): one at a time, each saved
on a thread, as its other saves are (posterior.py `Saves`), while its event loop goes on
answering every shard's watch and `status`. Saved on the loop, a switch held them all for the
write: a 37 MiB posterior, 93-188 ms on a local directory store (on a thread, 39-43 ms, the
copy: posterior.py `saved_parts`; a loaded 2-core machine), more over a network.

A switch answers only once it is saved, and one the store does not take is put back, so
nothing may build on it while it is written: a sync or a flush then waits for it to answer
(`passed`), no watch is answered with it (Learner.hold_watches; `status` shows `switching`),
and the next switch waits its turn. Syncs wait rather than merge into the switched tables: put
back, those merges (and the deltas' sequences, which go back with the rest) would be lost
unless redone from a record of them that nothing else needs. So a sync that comes once a
switch is sent waits for: the switches queued before it, each in turn; the save in flight when
the switch's turn came (a thread's) and the one asked for while it was written (`Saves.idle`);
the remap; and the switch's own save. Syncs are held from the switch's turn on, so also while
it waits for that save in flight (a switch saved on the loop held every call throughout).

The switch's remap of the models (`remapped`: mostly inverting precisions) runs on a thread too:
on the loop, it held every call 0.11-0.38 s at 900 models and 0.59-2.7 s at 4,500 (32
coefficients each; a probe, loaded 2-core machine). On a thread, the loop's longest hold in a
switch is 1-28 ms and 18-197 ms: with the loop idle, the save's copy (about 22 ms at 4,500
models); with it kept busy, waits for the GIL, which the remap holds: each time the loop wakes
it may wait up to the interpreter's switch interval (`sys.getswitchinterval()`, 5 ms) for it.
The remap and the loop share the GIL, so a switch takes about as long with the loop idle and
longer with it kept busy (medians 2.6x at 900 models, 157 -> 412 ms, and 1.6x at 4,500, 1,280
-> 2,033 ms; the probe's), and syncs wait as much longer. The remap reads the learner's tables
while the loop answers watches and `status`, so nothing may change them meanwhile: learner.py
`LearnerActor._switched` says why nothing does, and the learner takes the result up on the loop
only if it was made of the tables it runs with no merge into them since, for the text it
switches to (`Remapped.taken_up`)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, NamedTuple

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.models import ModelRemap, ModelTable, TakenOut

from kairos.cluster.control.posterior import Saves
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable

log = logging.getLogger("kairos.learner")

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
    source: ModelTable  # the learner's tables it was made of
    merged: int  # the learner's count of merges as it began (Learner.merged)
    text: str  # the catalog text it was made for

    def taken_up(self, models: ModelTable, merged: int, catalog_text: str) -> tuple:
        """What Learner.switch takes up (the fields before `source`), if made of the table
        object `models` (not one a switch or a put_back replaced), with the learner's merge
        count still `merged` (a sync merges into that object in place), for `catalog_text`;
        else RuntimeError, as taken up, the switch would lose what changed. Not checked: the
        models' version, which a watch may move on meanwhile (`_continue_past`; the switch
        reads it after), and a change in place that counts no merge (posterior.py take_up's
        adopt_prepared, which never comes while a switch remaps: learner.py
        `LearnerActor._switched`)."""
        if self.source is not models or self.merged != merged or self.text != catalog_text:
            raise RuntimeError("the learner's tables changed while a switch remapped them")
        return self[:5]


def remapped(models: ModelTable, merged: int, compiled: CompiledCatalog,
             earlier: dict[str, CompiledCatalog], taken_out: TakenOut,
             catalog_text: str) -> Remapped:
    """A learner's `models` (`merged`: its count of merges, read before their rows), of
    `compiled`, moved to `catalog_text`'s catalog, with its `earlier` catalogs and `taken_out`
    models: new objects, its own read and left as they are. A thread may run it while the loop
    publishes them, and a switch whose save fails is put back to what the learner `kept` after
    it: changed here in place, they would stay changed."""
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
    return Remapped(new, earlier, remaps, taken_out, table, models, merged, catalog_text)


class Switches:
    """A learner's switches (`run`), one at a time, and what waits for them (`passed`): each
    remapped, taken up and saved in its turn, and put back if the store does not take it."""

    def __init__(self, learner: Any, saves: Saves) -> None:
        self.learner, self.saves = learner, saves
        self._turn = asyncio.Lock()  # held by the switch in flight; the next ones queue on it
        # switches run to their end whether or not their caller waits (`run`): kept until then
        self._running: set[asyncio.Task] = set()

    async def passed(self) -> None:
        """Once no switch is in flight (at once if none): a merge or a save then finds the
        catalog it left, saved or put back. A flush waits here too: the wait for the saves it
        makes after (`Saves.idle`) would alone have it come after a failed switch's put_back,
        but only by the order asyncio runs callbacks in (the switch waits on its save first)."""
        if self._turn.locked():
            async with self._turn:
                pass

    async def run(self, switch: Switch) -> int:
        """`switch()` once the switches before it answered (syncs and flushes wait from then
        on: its remap on a thread too), then saved (waited for); if the save fails, put back
        and the failure raised (StoreUnavailable or StoreInUse when the store did not take it).
        Carried to its end should its caller be cancelled (RayBackend cancels only long polls, but a
        ray.cancel would): a failed save must still put the learner back, and merges wait until it
        does; its failure is then logged, as nobody else hears it."""
        async def in_turn() -> int:
            async with self._turn:
                await self.saves.idle()  # no save in flight lands after this switch's
                version, put_back = await switch()
                self.learner.hold_watches(True)
                try:
                    await self.saves.save_now(self.learner)
                except Exception:  # any failure: the controller, told it failed, puts back
                    put_back()      # its own catalog too, so the learner's must not stand
                    raise
                finally:
                    self.learner.hold_watches(False)
                return version
        running = asyncio.get_running_loop().create_task(in_turn())
        caller = asyncio.shield(running)
        self._running.add(running)
        running.add_done_callback(lambda task: self._ended(task, caller))
        return await caller

    def _ended(self, task: asyncio.Task, caller: asyncio.Future) -> None:
        self._running.discard(task)
        failed = None if task.cancelled() else task.exception()  # retrieved, whoever waits
        if failed is not None and caller.cancelled():
            # every failure is put back; the store's are warned of as Saves does, any other is
            # a bug, logged as asyncio's "never retrieved" was
            store = isinstance(failed, (StoreUnavailable, StoreInUse))
            log.log(logging.WARNING if store else logging.ERROR,
                    "learner: a switch whose caller gave up failed (%s: %s); the learner runs "
                    "catalog %s", type(failed).__name__, failed, self.learner.compiled.version,
                    exc_info=None if store else failed)
