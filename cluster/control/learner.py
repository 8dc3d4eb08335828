"""The learner's actor: runs the Learner (merging.py: the shards' deltas merged, model
versions published) in Ray, saves its posterior to the store, and takes it up again as it starts.

The posterior is saved to the store's meta, by a sync that merged if LEARNER_SAVE_S passed since the
last save and otherwise at the next LEARNER_SAVE_S tick (an idle learner writes nothing), and by
`flush` (runtime.stop's, before the kill), copied on the loop and written on a thread, one save at a
time, less often while the store refuses them (posterior.py `Saves`). So a learner that Ray
restarts, or a cluster started again on the same store, goes on from what it had learned rather than
from the priors; the deltas merged since the last save that landed are lost with the process: at
most LEARNER_SAVE_S of them while the store answers; while it refuses, all since; once it answers
again, the next try starts within SAVE_RETRY_MOST_S and a tick of the last refused write's end
(`status` shows the merges unsaved and the writes refused, counted in
kairos_learner_saves_failed_total; a flush's refusal is raised to runtime.stop, which warns). It
is saved with its catalog's text: Ray restarts the actor with the catalog it was created with, and
the saved one (the latest switched to) runs instead. So a switch answers only once it is saved (else
StoreUnavailable, and the learner stays on its catalog: the controller does not switch the shards).
A saved posterior that cannot be read, or does not fit its catalog, is kept aside (DAMAGED_KEY; one
with a chunk lost is only logged) and the learner starts from the priors; while the store does not
answer for it, the learner merges and answers nothing (StoreUnavailable: the shards keep their
deltas), so no merge is saved over it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import ray

from kairos.core.compiler import compiled_from_text
from kairos.core.models import ModelDelta

from kairos.cluster.control.merging import Learner
from kairos.cluster.control.posterior import Restoring, Saves, restoring, take_up
# callers import these here
from kairos.cluster.control.posterior import RAN_KEPT, save_models  # noqa: F401
from kairos.cluster.control.switching import REMAPS_KEPT, Switches  # noqa: F401
from kairos.cluster.metrics import LearnerMetrics
from kairos.cluster.settings import LEARNER_SAVE_S, LONG_POLL_S
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable
from kairos.cluster.transport.backend import ControllerControl, Published
from kairos.cluster.transport.ray_backend import RayBackend, restarted

log = logging.getLogger("kairos.learner")
STATE_KEY = "learner"
DAMAGED_KEY = "learner.damaged"  # a saved posterior that could not be read, kept for a person
RESTORE_RETRY_S = 1.0  # how often calls try again to read a posterior the store did not give
# the periodic save's tick if LEARNER_SAVE_S is 0 (syncs save each merge; those made while a
# save is written, together once it is)
SAVE_TICK_MIN_S = 0.1
CONFIRM_ASK_S = 3.0  # how often an unconfirmed learner asks the controller's catalog


@ray.remote(num_cpus=0, max_restarts=-1)
class LearnerActor:
    """Started by the controller as LEARNER_NAME. An async actor: each idle shard's watch
    holds one of Ray's 1,000 concurrent calls for up to LONG_POLL_S (one its shard gives up
    on is cancelled here too: RayBackend.call's `poll`). A save (about every LEARNER_SAVE_S
    while the shards learn, or a switch's) holds the loop only to copy the posterior, written
    on a thread (posterior.py `Saves`), as a switch's remap is made (switching.py) and a saved
    posterior read at a call (`_ready`: the store did not answer as the learner started) is
    remapped and prepared (posterior.py `restoring`)."""

    def __init__(self, catalog_text: str, store_url: str = "memory"):
        # unconfirmed: Ray restarts it with `catalog_text`, which may have been switched from
        self.learner = Learner(compiled_from_text(catalog_text), catalog_text, unconfirmed=True)
        self.metrics = LearnerMetrics()
        self.store = open_store(store_url)
        self.saves = Saves(self.store, STATE_KEY)
        self.switches = Switches(self.learner, self.saves)
        self._saving: asyncio.Task | None = None  # the periodic save, from the first call on
        self._took_up = False  # whether the saved posterior was taken up
        self._unread = True  # the store has not answered for the saved posterior yet
        self._read_at = -float("inf")
        self._reading: asyncio.Task | None = None  # a read of it at a call (`_ready`)
        # whom an unconfirmed learner asks the cluster's catalog (tests give another)
        self.controller: Callable[[], ControllerControl] = RayBackend().controller
        self._asking: asyncio.Task | None = None
        self._asked_at = -float("inf")
        # restarted by Ray with the arguments it was created with: the saved catalog runs
        self._restore(follow_catalog=True)
        if restarted():  # to be told the cluster's catalog
            RayBackend().nudge_controller()

    def _restore(self, follow_catalog: bool = False) -> None:
        """Take up the saved posterior here: the constructor's (Ray answers no call until it
        returns), and a fresh learner's switch's (`_switched`: of its catalog, no remap)."""
        self._read_at = time.monotonic()
        if self._read(follow_catalog, here=True) is not False:
            self._unread = False

    async def _restore_off_loop(self) -> None:
        """`_restore` at a call (`_ready`): read, remapped and prepared on a thread (seconds
        for a large table: posterior.py `restoring`), taken up on the loop. Unread until
        taken up: should `take_up` raise (RuntimeError, the learner left as it was: a bug),
        it is logged, the calls waiting hear StoreUnavailable (a shard tries again, as while the
        store does not answer) and a call RESTORE_RETRY_S after the read reads again, so nothing
        merges into the priors to be saved over the posterior."""
        try:
            read = await asyncio.to_thread(self._read, True)
            if read is not False:
                if read is not True:
                    self._take_up(read)
                self._unread = False
        except RuntimeError as exc:
            log.error("learner: the saved posterior read could not be taken up (%s); merges "
                      "wait, and it is read again", exc)
        finally:
            self._reading, self._read_at = None, time.monotonic()

    def _read(self, follow_catalog: bool, here: bool = False) -> Restoring | bool:
        """The saved posterior made ready to take up, or taken up `here` (then True); else
        whether the store answered for it (True: there is none, or it could not be read).
        Nothing here raises, as Ray does not restart an actor whose constructor raised: a blob
        that cannot be read or taken up is logged and kept aside under DAMAGED_KEY (the
        learner starts from its priors; one of another catalog stays on its own, unconfirmed:
        posterior.py `restoring`), and a store that does not answer leaves it unread, read
        again before anything merges or publishes (`_ready`). Not `here`, it only reads the
        learner (a thread may run it)."""
        try:
            blob = self.store.get_meta(STATE_KEY)
            if blob is not None:
                try:
                    ready = restoring(self.learner, blob, follow_catalog)
                    if ready is None or not here:
                        return ready or True
                    self._take_up(ready)
                    return True
                except Exception as exc:  # whatever the damage: the actor must come up
                    log.error("learner: the saved posterior under meta key %r cannot be read "
                              "(%s: %s); it is kept under %r and every model starts from its "
                              "prior", STATE_KEY, type(exc).__name__, exc, DAMAGED_KEY)
                    self.store.put_meta(DAMAGED_KEY, blob)
        except StoreCorrupt as exc:  # a chunk of it lost: nothing whole to keep aside
            log.error("learner: saved posterior unreadable (%s): models start from priors", exc)
        except StoreUnavailable as exc:
            log.warning("learner: could not read the saved posterior, merges wait: %s", exc)
            return False
        return True

    def _take_up(self, ready: Restoring) -> None:
        take_up(self.learner, ready)
        self._took_up = True
        log.warning("learner: took up the saved posterior of catalog %s, now version %d",
                    self.learner.compiled.version, self.learner.version)

    async def _ready(self) -> None:
        """Start the periodic save (a call runs on the actor's loop; the constructor may not).
        While the saved posterior is unread, read it again (at most every RESTORE_RETRY_S),
        and every call waits for the read in flight; StoreUnavailable (the caller tries again)
        while the store does not answer: a merge would be saved over it, and a watch answered
        with the priors."""
        if self._saving is None:
            self._saving = asyncio.get_running_loop().create_task(self._save_unsaved())
        if self._unread and self._reading is None and \
                time.monotonic() - self._read_at >= RESTORE_RETRY_S:
            # nothing merged or switched meanwhile: every call but `status`, `flush` and
            # `stand_down` (which write none of the learner) waits here, and no switch runs
            # before the first read
            self._reading = asyncio.get_running_loop().create_task(self._restore_off_loop())
        if self._reading is not None:
            await asyncio.shield(self._reading)
        if self._unread:
            raise StoreUnavailable("the learner has not taken up its saved posterior yet (the "
                                   "store does not answer, or it is read again)")
        if self.learner.unconfirmed and time.monotonic() - self._asked_at >= CONFIRM_ASK_S \
                and (self._asking is None or self._asking.done()):
            self._asked_at = time.monotonic()
            self._asking = asyncio.get_running_loop().create_task(self._ask_controller())

    async def _ask_controller(self) -> None:
        """Confirm this learner if the controller runs its text. Never switched from here:
        the controller sets a text it switches to after the learner's switch to it, and puts
        it back should its save fail, so an answer may already be out of date."""
        try:
            running = await self.controller().get_catalog()
        except Exception as exc:  # dead, restarting, taking up the cluster: asked again later
            log.debug("learner: the controller did not say its catalog: %s", exc)
            return
        # compared as it is now: a switch or a put_back may have come meanwhile
        if self.learner.unconfirmed and running.get("text") == self.learner.catalog_text:
            log.warning("learner: the controller runs catalog %s, this learner's text: it "
                        "merges and answers watches again", self.learner.compiled.version)
            self.learner.confirm()

    async def _save_unsaved(self) -> None:
        """Save the merges a sync left unsaved (within LEARNER_SAVE_S of the last save, and
        then traffic stopped) at the next tick, so a restart loses at most LEARNER_SAVE_S of
        merges. A learner with nothing unsaved writes nothing."""
        while True:
            await asyncio.sleep(max(LEARNER_SAVE_S, SAVE_TICK_MIN_S))
            try:  # not under a switch (as `flush`), nor before a failed write's wait is out
                await self.switches.passed()
                await self.saves.periodic(self.learner, 0.0)
            except Exception:  # not a reason to stop saving: logged, tried at the next tick
                log.exception("learner: the periodic save failed")
            self._report()  # the failures of saves nothing waited for, too

    async def flush(self) -> None:
        """Save the merges since the last save now (also runtime.stop's, before the kill,
        which warns of a failure raised here); a store that does not take it is logged, with
        the merges lost, counted (kairos_learner_saves_failed_total, `status`' saves_failed)
        and raised, StoreUnavailable naming them (`Saves.flush`): the kill follows, so the raise
        is what tells of them."""
        await self.switches.passed()  # not left to asyncio's order of callbacks (`passed`)
        try:
            await self.saves.flush(self.learner)
        finally:  # recorded before the kill; exported only if Ray reports it before then
            self._report()

    async def stand_down(self) -> None:
        """Save nothing more (the controller lost its claim on the store, which may be
        another cluster's now): the periodic save stops, a flush writes nothing, and a switch,
        which must be saved, fails."""
        self.saves.stop()
        if self._saving is not None:
            self._saving.cancel()
        await self.saves.idle()  # nothing written once it answers

    async def sync(self, catalog_version: str, delta: ModelDelta | None,
                   known_version: int) -> Published | None:
        # read first: a switch may begin while a call waits for the saved posterior (`_ready`),
        # and once passed, nothing yields before the merge
        await self._ready()
        await self.switches.passed()
        try:
            published = self.learner.sync(catalog_version, delta, known_version)
        finally:  # a refused sync counts too
            self._report()
        await self.saves.periodic(self.learner, LEARNER_SAVE_S)  # not waited for if a retry
        return published

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        await self._ready()
        return await self.learner.watch(catalog_version, known_version, timeout_s,
                                        takes_rows, based_on)

    async def switch(self, catalog_text: str) -> int:
        """Run this catalog from now on; the model version. StoreUnavailable, the learner
        left as it was, if the switch could not be saved: restarted, the learner would come
        back on the saved catalog, behind the shards the controller switched (switching.py)."""
        # compiled on a thread, before the switch finds it compiled (compiled_from_text keeps
        # the last texts): a large catalog takes seconds, and this loop serves every watch
        await asyncio.to_thread(compiled_from_text, catalog_text)
        await self._ready()
        return await self.switches.run(lambda: self._switched(catalog_text))

    async def _switched(self, catalog_text: str) -> tuple[int, Callable[[], None]]:
        # remapped on a thread while the loop answers watches and `status`, which only read
        # the tables, as a save does; nothing writes what the remap reads meanwhile: syncs and
        # flushes wait for the switch (switching.py), no save is in flight, a second switch
        # waits its turn, no posterior is taken up (it was read: `_ready`), confirm() and
        # stand_down() write none of it, and a watch writes only the models' version
        # (`_continue_past`), which the switch reads after
        new = None if catalog_text == self.learner.catalog_text else \
            await asyncio.to_thread(self.learner.remapped, catalog_text)
        kept, took_up = self.learner.kept(), self._took_up  # now: a confirm() may have come
        version = self.learner.switch(catalog_text, new)
        if not self._took_up and self.learner.merged == 0:
            # a fresh learner, on the catalog of a posterior an older release saved without its
            # text: read and taken up on the loop. Not on a thread as `_ready`'s: it takes up
            # into the switched tables, which must be taken up in the step this returns in (no
            # watch sees the switch before Switches.run holds them), and only an old release's
            # blob, once, comes here
            self._restore()
            self.learner.announce()

        def put_back() -> None:
            self.learner.put_back(kept)
            self._took_up = took_up
        return version, put_back

    def _report(self) -> None:
        """The learner's and its saves' totals to its metrics."""
        self.metrics.flush(self.learner.refused, sum(self.learner.dropped.values()),
                           self.learner.repeated, self.learner.refused_unconfirmed,
                           self.saves.failed_total)

    async def status(self) -> dict[str, Any]:
        """The learner's, and its saves' (posterior.py `Saves.status`): the controller's status
        carries it, so a store that does not take them shows there, not only in this log."""
        return {**self.learner.status(), **self.saves.status(self.learner)}
