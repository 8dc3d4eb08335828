"""The learner's merges: the shards' model statistics merged into the global posterior, and
model versions published (the Learner, without Ray; learner.py runs it in an actor that saves it).

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

Deltas of the last REMAPS_KEPT catalog versions before the running one are carried over, each by one
remap; one of an older version it ran is dropped, and counted by version (`dropped`); one of a
version it never ran (its switch has not reached it yet) is refused, NotRunning, and its shard sends
it again. A delta is remembered as taken only once merged. An action a switch takes out and a later
one puts back (a rollback, a seasonal offer) goes on from the models it had when it was last taken
out, not from its group's, if that was within the last REMAPS_KEPT switches of this process
(core/models.py `TakenOut`: the models a switch takes out are kept, not whole earlier posteriors; a
restart keeps only the running posterior).

A learner Ray constructs runs the catalog it was created with, which may not be the one the
cluster runs (its saved posterior unreadable, saved without its text by an older release, or
none), and deltas and watches carry only the catalog's version, under which another text lays
the rows out otherwise. So until it takes up a posterior saved with its text (the latest it
was switched to) or is switched (told the running catalog: the controller's start, or the
control loop's next round, which sees `unconfirmed` in its status), it merges and answers
nothing: a sync is Unavailable (the shard keeps its delta, logged as throttled WARNINGs,
counted in `refused_unconfirmed`) and a watch waits. As a controller of an older release, one
restarting or a stopped control loop tells it nothing, it also asks the controller's catalog
(learner.py: at most every CONFIRM_ASK_S while calls come) and confirms itself when that is its
own text: the controller names no text the learner was not created with or switched to
successfully.

What it publishes reaches every shard and the store, so nothing that is not sound gets in (not
finite, or what no outcome makes: counts or a precision taken back, a precision matrix not
positive definite; core/models.py `sound_rows`): a delta's rows that are not are refused
(ModelTable.merge), a saved model that is not starts again from its prior, and both are counted
(`refused`, kairos_model_rows_refused_total).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from typing import Any

from kairos.core.compiler import CompiledCatalog
from kairos.core.models import DeltaOrigin, ModelDelta, ModelRemap, ModelTable, TakenOut

from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.control.posterior import RAN_KEPT, ChangedRows, holds, published
from kairos.cluster.control.switching import REMAPS_KEPT, Remapped, remapped
from kairos.cluster.longpoll import Changes
from kairos.cluster.settings import LONG_POLL_S
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import NotRunning, Published, Unavailable

log = logging.getLogger("kairos.learner")
PUBLISHES_KEPT = 256  # (version, time) of the latest publishes `status` reports
# The shard incarnations whose last merged delta the learner remembers (saved with the
# posterior): at most SENDERS_KEPT, the most recently heard, none silent for SENDERS_KEPT_S (a
# shard sends a delta again at its next interval; one silent for days is a process gone)
SENDERS_KEPT = 4096
SENDERS_KEPT_S = 7 * 86400.0
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
        """Model rows of deltas or saved posteriors refused as not sound (`sound_rows`)."""
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
