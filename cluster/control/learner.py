"""Learner: merges the shards' model statistics and publishes model versions.

Shards learn online from the outcomes they record and, at least every MODEL_SYNC_S, send what
they learned since their last sync as a delta of natural parameters. Deltas add, so the global
posterior is the prior plus every shard's deltas, whatever the order. Each merge publishes the
next version; the shard that sent it adopts the version in the same call. A shard with nothing
to send waits for the next version in a long poll (`watch`, one at a time, at most one a sync
interval) and adopts it as it is published; one that has learned something gets it with its next
sync (shard/modelsync.py). So every shard runs a version that includes a response within two
sync intervals, and an idle cluster makes no model calls but a poll per shard every LONG_POLL_S
(a watch waits out a catalog switch that reached the learner and not yet its shard). A version
goes as rows: the models changed since the caller's (posterior.py `ChangedRows`, PublishedRows),
to a caller at a version this process published (`incarnation`: a restart may reuse numbers).

A sync that timed out may still have merged, and its shard sends the delta again as itself:
each delta carries its origin (shard, the shard process's random incarnation, a sequence), the
learner remembers the last sequence it took from each incarnation (saved with the posterior
that holds them, at most SENDERS_KEPT), and answers a repeat without merging it (`repeated`).

The posterior is saved to the store's meta, by a sync that merged if LEARNER_SAVE_S passed since the
last save and otherwise at the next LEARNER_SAVE_S tick (an idle learner writes nothing), and by
`flush` (runtime.stop's, before the kill), copied on the loop and written on a thread, one save at a
time, less often while the store refuses them (posterior.py `Saves`). So a learner that Ray
restarts, or a cluster started again on the same store, goes on from what it had learned rather than
from the priors; the deltas merged since the last save that landed are lost with the process: at
most LEARNER_SAVE_S of them while the store answers; while it refuses, all since; once it answers
again, the next try starts within SAVE_RETRY_MOST_S and a tick of the last refused write's end. It
is saved with its catalog's text: Ray restarts the actor with the catalog it was created with, and
the saved one (the latest switched to) runs instead. So a switch answers only once it is saved (else
StoreUnavailable, and the learner stays on its catalog: the controller does not switch the shards).
Deltas of the last REMAPS_KEPT catalog versions before the running one are carried over, each by one
remap; one of an older version it ran is dropped, and counted by version (`dropped`); one of a
version it never ran (its switch has not reached it yet) is refused, NotRunning, and its shard sends
it again. A delta is remembered as taken only once merged. An action a switch takes out and a later
one puts back (a rollback, a seasonal offer) goes on from the models it had when it was last taken
out, not from its group's, if that was within the last REMAPS_KEPT switches of this process
(core/models.py `TakenOut`: the models a switch takes out are kept, not whole earlier posteriors; a
restart keeps only the running posterior). A saved posterior that cannot be read, or does not fit
its catalog, is kept aside (DAMAGED_KEY; one with a chunk lost is only logged) and the learner
starts from the priors; while the store does not answer for it, the learner merges and answers
nothing (StoreUnavailable: the shards keep their deltas), so no merge is saved over it.
A learner Ray constructs runs the catalog it was created with, which may not be the one the
cluster runs (its saved posterior unreadable, saved without its text by an older release, or
none), and deltas and watches carry only the catalog's version, under which another text lays
the rows out otherwise. So until it takes up a posterior saved with its text (the latest it
was switched to) or is switched (told the running catalog: the controller's start, or the
control loop's next round, which sees `unconfirmed` in its status), it merges and answers
nothing: a sync is Unavailable (the shard keeps its delta, logged as throttled WARNINGs,
counted in `refused_unconfirmed`) and a watch waits. As a controller of an older release, one
restarting or a stopped control loop tells it nothing, it also asks the controller's catalog
(at most every CONFIRM_ASK_S while calls come) and confirms itself when that is its own text:
the controller names no text the learner was not created with or switched to successfully.

What it publishes reaches every shard and the store, so nothing that is not finite gets in: a
delta's rows that are not are refused (ModelTable.merge), a saved model that is not starts again
from its prior, and both are counted (`refused`, kairos_model_rows_refused_total).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from typing import Any, Callable

import ray

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.models import DeltaOrigin, ModelDelta, ModelRemap, ModelTable, TakenOut

from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.control.posterior import (RAN_KEPT, ChangedRows, Saves, holds,
                                              published, restore_models)
from kairos.cluster.control.posterior import save_models  # noqa: F401 (callers import it here)
from kairos.cluster.control.switching import REMAPS_KEPT, Remapped, Switches, remapped
from kairos.cluster.longpoll import Changes
from kairos.cluster.metrics import LearnerMetrics
from kairos.cluster.settings import LEARNER_SAVE_S, LONG_POLL_S
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import (ControllerControl, NotRunning, Published,
                                              Unavailable)
from kairos.cluster.transport.ray_backend import RayBackend, restarted

log = logging.getLogger("kairos.learner")
STATE_KEY = "learner"
DAMAGED_KEY = "learner.damaged"  # a saved posterior that could not be read, kept for a person
RESTORE_RETRY_S = 1.0  # how often calls try again to read a posterior the store did not give
# the periodic save's tick if LEARNER_SAVE_S is 0 (syncs save each merge; those made while a
# save is written, together once it is)
SAVE_TICK_MIN_S = 0.1
PUBLISHES_KEPT = 256  # (version, time) of the latest publishes `status` reports
# The shard incarnations whose last merged delta the learner remembers (saved with the
# posterior): at most SENDERS_KEPT, the most recently heard, none silent for SENDERS_KEPT_S (a
# shard sends a delta again at its next interval; one silent for days is a process gone)
SENDERS_KEPT = 4096
SENDERS_KEPT_S = 7 * 86400.0
CONFIRM_ASK_S = 3.0  # how often an unconfirmed learner asks the controller's catalog
REFUSED_LOG_S = 60.0  # how often syncs refused while unconfirmed are logged


class Learner:
    """The global posterior of every (action, channel) model, without Ray."""

    def __init__(self, compiled: CompiledCatalog, catalog_text: str | None = None,
                 unconfirmed: bool = False):
        self.compiled = compiled
        self.catalog_text = catalog_text  # saved with the posterior: a restart runs it again
        self.unconfirmed = unconfirmed  # the cluster may run another text (the module's doc)
        # versions start at the clock in milliseconds and count merges (at most a few dozen a
        # second), so a restarted learner publishes versions above any it published before
        # (and, should its clock be behind, above the first a shard tells it it runs)
        self.models = ModelTable(compiled, version=int(time.time() * 1000))
        # the catalog versions run, oldest first (the running one last), and of the latest
        # REMAPS_KEPT before it, the compiled catalog and a remap to the running one
        self.ran: dict[str, None] = {compiled.version: None}
        self._earlier: dict[str, CompiledCatalog] = {}
        self._taken_out = TakenOut(REMAPS_KEPT)  # what the latest switches took out
        self._remaps: dict[str, ModelRemap] = {}
        self.merged = 0
        # (model version, epoch seconds) of the latest publishes, oldest first: with the
        # shards' adoptions (shard/modelsync.py), how long a version takes to reach them all
        self.publishes: deque[tuple[int, float]] = deque(maxlen=PUBLISHES_KEPT)
        self.calls: Counter[str] = Counter()  # syncs and watches taken, for `status`
        # deltas of a catalog version the learner has no remap for, by version: learning lost
        self.dropped: Counter[str] = Counter()
        # deltas refused as of a catalog not run yet, by version: a shard stuck sending one
        # (its switch never comes) shows here
        self.not_running: Counter[str] = Counter()
        # (shard, incarnation) -> (sequence of its last delta taken, epoch seconds heard)
        self.sequences: dict[tuple[str, str], tuple[int, float]] = {}
        self.repeated = 0  # deltas sent again that were taken before: answered, not merged
        self.refused_unconfirmed = 0  # syncs refused until told the cluster's catalog
        self._refusals = ThrottledWarning(log, REFUSED_LOG_S)
        self.watching = 0  # watches waiting now
        self.unsaved_switch = False  # a switch being saved, which a failure puts back
        self._announced = self.models.version
        self._changes = Changes()
        self.changed = ChangedRows()  # what the latest merges changed, to publish rows
        # this process's: a restart may publish a version number again, with other models
        self.incarnation = uuid.uuid4().hex

    @property
    def version(self) -> int:
        return self.models.version

    @property
    def refused(self) -> int:
        """Model rows of deltas or saved posteriors refused for not being finite."""
        return self.models.refused

    def sync(self, catalog_version: str, delta: ModelDelta | None,
             known_version: int) -> Published | None:
        """Merge a shard's delta; the latest version if the shard does not have it yet."""
        self.calls["sync"] += 1
        if self.unconfirmed:  # not NotRunning: a shard drops a delta of a version it left
            self.refused_unconfirmed += 1
            self._refusals.warn("learner: syncs refused (%d so far): it runs catalog %s and "
                                "has not been told the cluster's; learning waits in the shards",
                                self.refused_unconfirmed, self.compiled.version)
            raise Unavailable(f"the learner runs catalog {self.compiled.version} and has not "
                              f"been told the running one yet: the delta goes again")
        self._continue_past(known_version)
        takes_rows, based_on = (False, None) if delta is None else \
            (delta.takes_rows, getattr(delta, "based_on", None))
        origin = None if delta is None else delta.origin
        if origin is not None and self._repeated(origin):
            delta = None
        if delta is not None and catalog_version != self.compiled.version:
            delta = self._carried(catalog_version, delta)
        if delta is not None and delta.learned():
            self.models.merge(delta)
            self.models.version += 1
            self.changed.merged(self.models, self.models.merged_rows)
            self.merged += 1
            self.publishes.append((self.models.version, time.time()))
            self.announce()
        if delta is not None and origin is not None:  # taken: a merge that raised is not
            self._taken(origin)
        return self.published(known_version, takes_rows, based_on)

    def _carried(self, catalog_version: str, delta: ModelDelta) -> ModelDelta | None:
        """A delta of an earlier catalog version in the running one's layout; None (dropped)
        for one run too long ago; NotRunning for one never run."""
        remap = self._remaps.get(catalog_version)
        if remap is not None:
            return remap.delta(delta)
        if catalog_version not in self.ran:
            self.not_running[catalog_version] += 1
            raise NotRunning(f"the learner runs catalog {self.compiled.version}, not yet "
                             f"{catalog_version}: the delta goes again")
        return self._dropped(catalog_version)

    def _repeated(self, origin: DeltaOrigin) -> bool:
        """Whether a delta was taken before (its shard sent it again after a sync timed out)."""
        last = self.sequences.get((origin.shard, origin.incarnation))
        if last is not None and origin.sequence <= last[0]:
            self.sequences[origin.shard, origin.incarnation] = (last[0], time.time())
            self.repeated += 1
            return True
        return False

    def _taken(self, origin: DeltaOrigin) -> None:
        """Remember a merged delta as its shard's last."""
        key, now = (origin.shard, origin.incarnation), time.time()
        if key not in self.sequences:
            self._forget_senders(now)
        self.sequences[key] = (origin.sequence, now)

    def _forget_senders(self, now: float) -> None:
        """Room for a new shard incarnation: the silent ones go, then the least recently heard
        past SENDERS_KEPT."""
        for key in [k for k, (_, heard) in self.sequences.items() if now - heard > SENDERS_KEPT_S]:
            del self.sequences[key]
        while len(self.sequences) >= SENDERS_KEPT:
            del self.sequences[min(self.sequences, key=lambda k: self.sequences[k][1])]

    def _dropped(self, catalog_version: str) -> None:
        """A delta learned under a catalog version this learner ran more than REMAPS_KEPT
        versions ago (or before a restart, which keeps no remaps): its rows cannot be placed,
        so it is counted and lost."""
        if not self.dropped[catalog_version]:
            log.warning("learner: a delta of catalog %s, which this learner no longer runs or "
                        "remaps, is dropped (counted in status' dropped)", catalog_version)
        self.dropped[catalog_version] += 1

    def published(self, known_version: int, takes_rows: bool = False,
                  based_on: str | None = None) -> Published | None:
        """The latest models unless the caller holds them (posterior.py `published`)."""
        return published(self, known_version, takes_rows, based_on)

    def switch(self, catalog_text: str, moved: Remapped | None = None) -> int:
        """Move the posteriors to another catalog; the new model version. A catalog is its
        text: another text under the running version (a learner Ray restarted on its first
        catalog, told the one that runs) is switched to as well, or its models would sit in
        the rows of the old text's actions. `moved`: this learner's tables as `remapped` moves
        them, made beforehand (on a thread: LearnerActor._switched), else made here."""
        if catalog_text == self.catalog_text:
            self.confirm()
            return self.models.version
        version = self.models.version  # as it is now: a watch may move it on (_continue_past)
        self.compiled, self._earlier, self._remaps, self._taken_out, self.models = \
            (moved or self.remapped(catalog_text)).taken_up(self.models, self.merged, catalog_text)
        self.models.version = version + 1
        self.catalog_text, self.unconfirmed = catalog_text, False
        self.ran.pop(self.compiled.version, None)
        self.ran[self.compiled.version] = None
        while len(self.ran) > RAN_KEPT:
            del self.ran[next(iter(self.ran))]
        self.publishes.append((self.models.version, time.time()))
        self.announce()
        return self.models.version

    def remapped(self, catalog_text: str) -> Remapped:
        """This learner's tables moved to `catalog_text`, itself left as it is (switching.py)."""
        return remapped(self.models, self.merged, self.compiled, self._earlier, self._taken_out,
                        catalog_text)

    def confirm(self) -> None:
        """The cluster runs this learner's text: merge, and answer the watches it held."""
        if self.unconfirmed:
            self.unconfirmed = False
            self._changes.announce()

    def kept(self) -> tuple:
        """What a switch changes, for `put_back`."""
        return (self.models, self.compiled, self.catalog_text, self.unconfirmed, dict(self.ran),
                dict(self._earlier), dict(self._remaps), dict(self.sequences), self._taken_out)

    def put_back(self, kept: tuple) -> None:
        """Undo the switches since `kept` (the store did not save them)."""
        (self.models, self.compiled, self.catalog_text, self.unconfirmed, self.ran,
         self._earlier, self._remaps, self.sequences, self._taken_out) = kept
        while self.publishes and self.publishes[-1][0] > self.models.version:
            self.publishes.pop()
        self.announce()

    def hold_watches(self, held: bool) -> None:
        """While a switch is saved (switching.py), no watch is answered with it."""
        self.unsaved_switch = held
        self._changes.announce()  # released: the watches it held look again

    def _continue_past(self, known_version: int) -> None:
        """Versions go on above one a shard runs and this learner never published: the learner
        restarted with a clock behind the one it had. Else the shard would keep its models
        (they look newer) until enough merges passed them, and be answered every interval."""
        if known_version > self.models.version:
            self.models.version = known_version + 1
            self.publishes.append((self.models.version, time.time()))
            self.announce()

    def announce(self) -> None:
        """Wake the watches if the version moved on since the last call (a merge, a switch,
        a saved posterior taken up)."""
        if self.models.version != self._announced:
            self._announced = self.models.version
            self._changes.announce()

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        """Long poll: the latest models once they are for `catalog_version` and the caller
        does not have them (`published`); None when `timeout_s` passes first. A shard with
        nothing to send waits here rather than syncing every MODEL_SYNC_S (an idle cluster's
        Ray calls), also while a catalog switch has reached the learner and not yet it (models
        it could not use)."""
        self.calls["watch"] += 1
        self._continue_past(known_version)
        self.watching += 1
        try:
            if not await self._changes.wait_until(
                    lambda: self.compiled.version == catalog_version and not self.unconfirmed
                    and not self.unsaved_switch
                    and not holds(self, known_version, takes_rows, based_on), timeout_s):
                return None
        finally:
            self.watching -= 1
        return self.published(known_version, takes_rows, based_on)

    def status(self) -> dict[str, Any]:
        digest = "" if self.catalog_text is None else catalog_digest(self.catalog_text)
        return {"model_version": self.version, "merged": self.merged,
                "catalog_version": self.compiled.version, "catalog_digest": digest,
                "unconfirmed": self.unconfirmed, "refused": self.refused,
                "refused_unconfirmed": self.refused_unconfirmed,
                "publishes": list(self.publishes), "calls": dict(self.calls),
                "watching": self.watching, "switching": self.unsaved_switch,
                "dropped": dict(self.dropped), "not_running": dict(self.not_running),
                "repeated": self.repeated, "senders": len(self.sequences)}


@ray.remote(num_cpus=0, max_restarts=-1)
class LearnerActor:
    """Started by the controller as LEARNER_NAME. An async actor: each idle shard's watch
    holds one of Ray's 1,000 concurrent calls for up to LONG_POLL_S (one its shard gives up
    on is cancelled here too: RayBackend.call's `poll`). A save (about every LEARNER_SAVE_S
    while the shards learn, or a switch's) holds the loop only to copy the posterior, written
    on a thread (posterior.py `Saves`), as a switch's remap is made (switching.py), but for
    one: a saved posterior of another catalog taken up at a call (`_ready`: the store did not
    answer as the learner started) is remapped on the loop (posterior.py `restore_models`)."""

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
        # whom an unconfirmed learner asks the cluster's catalog (tests give another)
        self.controller: Callable[[], ControllerControl] = RayBackend().controller
        self._asking: asyncio.Task | None = None
        self._asked_at = -float("inf")
        # restarted by Ray with the arguments it was created with: the saved catalog runs
        self._restore(follow_catalog=True)
        if restarted():  # to be told the cluster's catalog
            RayBackend().nudge_controller()

    def _restore(self, follow_catalog: bool = False) -> None:
        """Take up the saved posterior. Nothing here raises, as Ray does not restart an actor
        whose constructor raised: a blob that cannot be read is logged and kept aside under
        DAMAGED_KEY (the learner starts from its priors), and a store that does not answer
        leaves it unread, read again before anything merges or publishes (`_ready`)."""
        self._read_at = time.monotonic()
        try:
            blob = self.store.get_meta(STATE_KEY)
            if blob is not None:
                try:
                    self._took_up = restore_models(self.learner, blob, follow_catalog)
                except Exception as exc:  # whatever the damage: the actor must come up
                    log.error("learner: the saved posterior under meta key %r cannot be read "
                              "(%s: %s); it is kept under %r and every model starts from its "
                              "prior", STATE_KEY, type(exc).__name__, exc, DAMAGED_KEY)
                    self.store.put_meta(DAMAGED_KEY, blob)
        except StoreCorrupt as exc:  # a chunk of it lost: nothing whole to keep aside
            log.error("learner: saved posterior unreadable (%s): models start from priors", exc)
        except StoreUnavailable as exc:
            log.warning("learner: could not read the saved posterior, merges wait: %s", exc)
            return
        self._unread = False
        if self._took_up:
            log.warning("learner: took up the saved posterior of catalog %s, now version %d",
                        self.learner.compiled.version, self.learner.version)

    def _ready(self) -> None:
        """Start the periodic save (a call runs on the actor's loop; the constructor may not).
        StoreUnavailable (the caller tries again) while the saved posterior is unread: a merge
        would be saved over it, and a watch answered with the priors."""
        if self._saving is None:
            self._saving = asyncio.get_running_loop().create_task(self._save_unsaved())
        if self._unread and time.monotonic() - self._read_at >= RESTORE_RETRY_S:
            self._restore(follow_catalog=True)  # nothing merged or switched meanwhile
        if self._unread:
            raise StoreUnavailable("the learner has not read its saved posterior yet (the "
                                   "store does not answer)")
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

    async def flush(self) -> None:
        """Save the merges since the last save now (also runtime.stop's, before the kill,
        which warns of a failure raised here); a store that does not take it is logged, with
        the merges lost (`Saves.flush`)."""
        await self.switches.passed()  # not left to asyncio's order of callbacks (`passed`)
        await self.saves.flush(self.learner)

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
        await self.switches.passed()
        self._ready()
        try:
            published = self.learner.sync(catalog_version, delta, known_version)
        finally:  # a refused sync counts too
            self.metrics.flush(self.learner.refused, sum(self.learner.dropped.values()),
                               self.learner.repeated, self.learner.refused_unconfirmed)
        await self.saves.periodic(self.learner, LEARNER_SAVE_S)  # not waited for if a retry
        return published

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        self._ready()
        return await self.learner.watch(catalog_version, known_version, timeout_s,
                                        takes_rows, based_on)

    async def switch(self, catalog_text: str) -> int:
        """Run this catalog from now on; the model version. StoreUnavailable, the learner
        left as it was, if the switch could not be saved: restarted, the learner would come
        back on the saved catalog, behind the shards the controller switched (switching.py)."""
        # compiled on a thread, before the switch finds it compiled (compiled_from_text keeps
        # the last texts): a large catalog takes seconds, and this loop serves every watch
        await asyncio.to_thread(compiled_from_text, catalog_text)
        self._ready()
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
            # a fresh learner, on the catalog of a posterior an older release saved without its text
            self._restore()
            self.learner.announce()

        def put_back() -> None:
            self.learner.put_back(kept)
            self._took_up = took_up
        return version, put_back

    async def status(self) -> dict[str, Any]:
        return self.learner.status()
