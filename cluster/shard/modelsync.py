"""Model sync: a shard's side of learning together (control/merging.py has the other).

Shards keep model statistics as deltas of natural parameters against the last published
version. Every MODEL_SYNC_S, a shard that learned something sends its delta to the learner,
which adds it to the global posterior, publishes the next version and answers with it. Both
carry rows, not the whole table: the delta the models the shard learnt in, the answer those
changed since the shard's version (every model to a shard too far behind, or new, or at a
version of another learner process: a restarted one may publish a number again), and the
shard replaces only those (core/models.py `adopt`). A learner of an older release raises on a
delta of rows: after any failure the delta goes again with a row per model, until an answer
of rows (PublishedRows) says the learner takes them. A
shard that learned nothing waits for the next version in the learner's long poll (`watch`)
instead: one at a time, asked again at the next interval once it ended, and at once when the
engine's catalog or model version moved from the ones it waits with (a switch committed; a
shard rebuilt from the store starts from the priors). Meanwhile the loop sleeps until the watch
ends, the host is stirred (a request batch, a shard method, a Shard new to serving: all that
teaches the models or moves them) or a round's journal sync ends (what it taught can go now),
not every interval: an idle shard's loop wakes once a long poll (LONG_POLL_S), where it woke
twice a second to find nothing learnt. What wakes it is kept from before each interval's
sleep, so one that comes while the loop sleeps or steps (the round it announces may be applied
or made durable after the step took) ends the wait at once.
A sync cancels the watch, since its answer is the latest version anyway (and a watch answered
meanwhile would replace the models without the delta in flight).
A sync that fails (Unavailable, also from a learner Ray restarted that
was not yet told the cluster's catalog, which merges nothing and answers no watch until it is;
StoreUnavailable while the learner has not read its saved posterior; both logged, throttled;
any other error, logged) may still have merged: the call may have run late, or the learner
merged and died before answering. So its delta goes again at the next interval as itself,
known to the learner by its origin (this shard, this process's random incarnation, a sequence
number), and a delta the learner took before is answered, not merged again; what the shard
learns meanwhile waits in its models and goes as the next delta. Should the catalog switch
meanwhile, it still goes as itself, under the catalog version it was learnt with: the learner
places its rows in the running catalog's layout (control/merging.py `_carried`; one learnt
more than REMAPS_KEPT versions ago is dropped there, and counted), unless the learner never
ran that version (NotRunning: it lost its state), which drops it here (`dropped`). A shard
that drops a delta forgets whose version it holds, so the next answer is the learner's whole
table, which replaces the dropped learning in its models.
A whole table over ADOPT_ON_LOOP_BYTES is copied and inverted on a thread (230 ms at 48.5 MiB,
while the shard decides and learns on), one at a time, and only swapped in on its event loop
(`adopt_answer`).

Only learning the journal made durable is sent: a round is applied (and learnt from) before
the sync that lets it be answered finishes, and should that sync fail its client is told
UNAVAILABLE and sends it again, which the rebuilt shard learns anew. So each interval first
waits, at most an interval, for a journal sync to cover what the shard learnt so far (at once
when nothing written waits for one; under load the next group commit, a few milliseconds), and
takes what the latest successful sync covered (core/models.py `take_synced`). The other way
round, learning of acknowledged rounds not yet taken is lost when the shard rebuilds: models
start again from the learner's version (shard/durability.py `recover`), at most an interval's
learning of that shard.

The last ADOPTIONS_KEPT adoptions are kept with their wall-clock time, and `health` reports
them, so the time a published version takes to reach every shard can be measured exactly
(bench/simulate.py) however seldom the shards are asked.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Any, Callable

from kairos.core.engine import DecisionEngine
from kairos.core.models import DeltaOrigin, ModelDelta

from kairos.cluster.settings import MODEL_SYNC_S
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import LearnerControl, NotRunning, Published, Unavailable

log = logging.getLogger("kairos.shard")
ADOPTIONS_KEPT = 64  # at one sync per MODEL_SYNC_S, the last half minute
# a delta the learner raised on this many times in a row (not Unavailable: a bug, a shape it
# cannot take) is dropped, so that the shard's later learning does not wait behind it for good
DELTA_TRIES = 5
REFUSED_LOG_S = 60.0  # how often a shard logs the learner refusing its delta as Unavailable
# a whole table whose precisions take less is adopted on the event loop, at once: a few
# milliseconds (48.5 MiB took 230), not worth a thread's round trip
ADOPT_ON_LOOP_BYTES = 1 << 20
# after a learner of an older release refused the rows arguments of a watch, how long its
# watches go without them before they are tried again (it may have been upgraded since)
ROWS_AGAIN_S = 300.0


class ModelSync:
    def __init__(self, name: str):
        self.name = name
        # with a sequence number, each delta's origin: a process's deltas are told apart from
        # those of the shard's processes before it, which numbered theirs from 1 too
        self._incarnation = uuid.uuid4().hex
        self._sequence = 0
        self._outbox: tuple[str, ModelDelta] | None = None  # (catalog version, unsent delta)
        self._failures = 0  # of the outbox's delta, in a row (DELTA_TRIES)
        # whether the learner takes deltas of the models learnt in only (one of an older
        # release raises on them: they go again as dense until it answers PublishedRows)
        self._rows = True
        # whether its watch takes the rows arguments (one of an older release raises
        # TypeError on them: its watches go without, answered with every model, until
        # ROWS_AGAIN_S later)
        self._watch_rows = True
        self._rows_again_at = 0.0
        self._refusals = ThrottledWarning(log, REFUSED_LOG_S)
        self.dropped = 0  # deltas given up on
        # (model version, epoch seconds) of the latest adoptions, oldest first
        self.adoptions: deque[tuple[int, float]] = deque(maxlen=ADOPTIONS_KEPT)
        # the long poll, and the catalog and version it waits to pass
        self._watch: tuple[asyncio.Task, tuple[str, int]] | None = None
        # a whole table's prepare on its thread, until the thread ends (its caller may have
        # been cancelled: a thread cannot be): the next waits for it, so that one prepared
        # table at most (a table's statistics and covariance again) is held at a time
        self._preparing: asyncio.Task | None = None

    async def run(self, engine: Callable[[], DecisionEngine | None],
                  learner: Callable[[], LearnerControl],
                  stirred: Callable[[], asyncio.Event], interval_s: float = MODEL_SYNC_S
                  ) -> None:
        """Sync or watch every `interval_s` until cancelled, or, with nothing to send and a
        watch waiting, once it ended or the event `stirred()` gave before the interval was
        set; `engine()` is the engine in use (None while the shard rebuilds)."""
        try:
            while True:
                # asked before the interval: what stirs the host during it or the step ends
                # the wait below (what it taught may come after the step took)
                woken = stirred()
                await asyncio.sleep(interval_s)
                if engine() is not None:
                    await self.step(engine, learner, interval_s)
                await self._idle(woken)
        finally:
            self._stop_watching()

    async def _idle(self, woken: asyncio.Event) -> None:
        """While a watch waits for the learner, wait for it to end or for `woken` (set by a
        request batch, a shard method, a Shard new to serving: only those teach the models or
        move their catalog or version; and by a round's journal sync, after which a step
        takes what the round taught)."""
        if self._watch is None or self._watch[0].done():  # a delta went: the next may be due
            return
        waiting = asyncio.ensure_future(woken.wait())
        try:
            await asyncio.wait((self._watch[0], waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    async def step(self, engine: Callable[[], DecisionEngine | None],
                   learner: Callable[[], LearnerControl], wait_s: float = MODEL_SYNC_S
                   ) -> None:
        """One interval's sync, or the watch kept going, once a journal sync covers what was
        learnt (waiting `wait_s` at most: what it did not cover goes at the next interval)."""
        await self._covered(engine(), wait_s)
        current = engine()  # the shard may have been rebuilt or switched meanwhile
        if current is None:
            return
        catalog_version, delta, known = self.take(current)
        held = current.models.published_by  # whose version `known` is (None: take all)
        if delta is None:
            asked = (catalog_version, known, held)
            if self._watch is not None and self._watch[1] != asked:
                self._stop_watching()
            if self._watch is None or self._watch[0].done():
                self._watch = (asyncio.get_running_loop().create_task(
                    self._watched(engine, learner(), *asked)), asked)
            return
        self._stop_watching()
        sent = delta if self._rows else delta.dense()
        sent.based_on = held
        try:
            published = await learner().sync(catalog_version, sent, known)
        except NotRunning:
            if catalog_version == current.compiled.version:
                self.unsent(catalog_version, delta)  # its switch is on the way to the learner
            else:  # a catalog the shard left and the learner lost: it never runs it again
                self.dropped += 1
                current.models.published_by = None
                log.warning("%s: the learner no longer knows catalog %s, which this shard "
                            "left: its unsent learning is dropped (the learner's whole "
                            "table replaces it)", self.name, catalog_version)
            return
        except (Unavailable, StoreUnavailable) as exc:
            # the learner may have merged it: it goes again, as itself. StoreUnavailable: the
            # learner has not read its saved posterior yet. Logged: one that stays so (an
            # unconfirmed learner no one tells) holds up this shard's learning
            self._refusals.warn("%s: the learner did not take this shard's delta, it goes "
                                "again: %s", self.name, exc)
            self.unsent(catalog_version, delta)
            return
        except Exception:  # a bug, logged: tried again, as itself, a few times
            self._rows = False  # with a row per model: a learner of an older release takes it
            self._failures += 1
            if self._failures < DELTA_TRIES:
                log.exception("%s: syncing with the learner failed; the delta goes again",
                              self.name)
                self.unsent(catalog_version, delta)
            else:
                self._failures, self.dropped = 0, self.dropped + 1
                current.models.published_by = None
                log.exception("%s: the learner failed on this delta %d times in a row: "
                              "dropped (the learner's whole table replaces it)",
                              self.name, DELTA_TRIES)
            return
        self._failures = 0
        if hasattr(published, "rows"):  # PublishedRows: the learner takes rows
            self._rows = self._watch_rows = True
        await self.adopt_answer(engine, published)

    @staticmethod
    async def _covered(engine: DecisionEngine | None, wait_s: float) -> None:
        if engine is None:
            return
        reached = asyncio.get_running_loop().create_future()
        engine.models.when_synced(lambda: reached.done() or reached.set_result(None))
        try:
            # not wait_for: Python 3.11's returns, swallowing a cancel (the loop's stop), when
            # `reached` is resolved as the cancel comes
            async with asyncio.timeout(wait_s):
                await reached
        except TimeoutError:
            pass  # a slow disk, or the shard failed: what a sync covered goes all the same

    async def _watched(self, engine: Callable[[], DecisionEngine | None],
                       learner: LearnerControl, catalog_version: str, known: int,
                       held: str | None) -> None:
        try:
            if not self._watch_rows and time.monotonic() >= self._rows_again_at:
                self._watch_rows = True
            if self._watch_rows:
                try:
                    published = await learner.watch(catalog_version, known, takes_rows=True,
                                                    based_on=held)
                except TypeError as exc:
                    # the call's own signature (a learner of an older release takes no rows
                    # arguments), not a TypeError raised in the learner (Ray's RayTaskError
                    # subclasses it): only then are watches made without them for a while
                    if type(exc) is not TypeError:
                        raise
                    self._watch_rows, self._rows_again_at = False, \
                        time.monotonic() + ROWS_AGAIN_S
                    log.warning("%s: the learner takes no rows arguments (%s): watched for "
                                "every model for %g s", self.name, exc, ROWS_AGAIN_S)
                    return
            else:
                published = await learner.watch(catalog_version, known)
            await self.adopt_answer(engine, published)
        except (Unavailable, StoreUnavailable):
            pass  # the learner is restarting or reading its posterior: watched again later
        except Exception:  # not a reason to stop syncing: logged, tried again
            log.exception("%s: watching the learner failed", self.name)

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch[0].cancel()
            self._watch = None

    async def adopt_answer(self, engine: Callable[[], DecisionEngine | None],
                           published: Published | None) -> None:
        """`adopt` an answer into the engine in use. A large whole table is copied and inverted
        on a thread, then taken on the event loop if it is still wanted and the engine's
        models did not move on meanwhile (a switch, a rebuild, another answer: the next sync
        or watch answers those); a watch cancelled meanwhile (a sync's delta is in flight)
        takes nothing. One table is prepared at a time: a second waits for the first's thread
        to end, even one whose caller was cancelled. Rows (a few models) and a small table are
        adopted at once."""
        current = engine()
        if published is None or current is None:
            return
        if getattr(published, "rows", None) is not None or \
                published.precision.nbytes < ADOPT_ON_LOOP_BYTES:
            self.adopt(current, published)
        else:
            while self._preparing is not None:
                await asyncio.wait([self._preparing])  # its failure is its caller's
            if engine() is not current or not self._wanted(current, published):
                return
            whole = current.models.adopting(published)
            preparing = self._preparing = asyncio.get_running_loop().create_task(
                asyncio.to_thread(whole.prepare))
            preparing.add_done_callback(self._prepared)
            await asyncio.shield(preparing)
            if engine() is current and self._wanted(current, published) and \
                    current.adopt_prepared(whole):
                self.adoptions.append((published.version, time.time()))

    def _prepared(self, preparing: asyncio.Task) -> None:
        if self._preparing is preparing:
            self._preparing = None

    def take(self, engine: DecisionEngine) -> tuple[str, ModelDelta | None, int]:
        """The catalog version of the delta to send (the engine's when there is none), the
        delta (None if nothing) and the model version the engine has. The delta is an unsent
        sync's, as it was and under the catalog version it was learnt with (the learner may
        have merged it), else what the engine learnt since the last take up to the latest
        journal sync that covered it, numbered next."""
        version, known = engine.compiled.version, engine.models.version
        if self._outbox is not None:
            (unsent_version, unsent), self._outbox = self._outbox, None
            return unsent_version, unsent, known
        delta = engine.models.take_synced(every_model=False)
        if delta is None or not delta.learned():
            return version, None, known
        self._sequence += 1
        delta.origin = DeltaOrigin(self.name, self._incarnation, self._sequence)
        return version, delta, known

    def unsent(self, catalog_version: str, delta: ModelDelta | None) -> None:
        """The sync failed: the delta goes again, as itself, with the next."""
        if delta is not None:
            self._outbox = (catalog_version, delta)

    def adopt(self, engine: DecisionEngine, published: Any) -> None:
        """Use a model version the learner published (transport/backend.py's Published) if it
        is for the engine's catalog and newer than the engine's; one of the models changed
        since a version (PublishedRows with rows) only onto that version (the engine's models
        may have been rebuilt or switched meanwhile: its next sync or watch answers them)."""
        if self._wanted(engine, published):
            engine.adopt_models(published)
            self.adoptions.append((published.version, time.time()))

    @staticmethod
    def _wanted(engine: DecisionEngine, published: Any) -> bool:
        models = engine.models
        by = getattr(published, "incarnation", None)
        if getattr(published, "rows", None) is not None and \
                (published.since != models.version or by != models.published_by):
            return False
        # a learner restarted may publish a number again: another process's version is
        # taken at the same number too
        return published.catalog_version == engine.compiled.version and \
            (published.version > models.version or
             published.version == models.version and by != models.published_by)
