"""Model sync: a shard's side of learning together (control/learner.py has the other).

Shards keep model statistics as deltas of natural parameters against the last published
version. Every MODEL_SYNC_S, a shard that learned something sends its delta to the learner,
which adds it to the global posterior, publishes the next version and answers with it. A
shard that learned nothing waits for the next version in the learner's long poll (`watch`)
instead: one at a time, asked again at the next interval once it ended, and at once when the
engine's catalog or model version moved from the ones it waits with (a switch committed; a
shard rebuilt from the store starts from the priors). A sync cancels it, since its answer is
the latest version anyway (and a watch answered meanwhile would replace the models without
the delta in flight). A delta the learner could not take goes with the next sync, unless the
catalog switched meanwhile (its rows mean something else then: it stays only in this shard's
models).

The last ADOPTIONS_KEPT adoptions are kept with their wall-clock time, and `health` reports
them, so the time a published version takes to reach every shard can be measured exactly
(bench/simulate.py) however seldom the shards are asked.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from kairos.core.engine import DecisionEngine
from kairos.core.models import ModelDelta

from kairos.cluster.settings import MODEL_SYNC_S
from kairos.cluster.transport.backend import LearnerControl, Unavailable

if TYPE_CHECKING:  # types only: the learner's module is the control side's
    from kairos.cluster.control.learner import Published

log = logging.getLogger("kairos.shard")
ADOPTIONS_KEPT = 64  # at one sync per MODEL_SYNC_S, the last half minute


class ModelSync:
    def __init__(self, name: str):
        self.name = name
        self._outbox: tuple[str, ModelDelta] | None = None  # (catalog version, unsent delta)
        # (model version, epoch seconds) of the latest adoptions, oldest first
        self.adoptions: deque[tuple[int, float]] = deque(maxlen=ADOPTIONS_KEPT)
        # the long poll, and the catalog and version it waits to pass
        self._watch: tuple[asyncio.Task, tuple[str, int]] | None = None

    async def run(self, engine: Callable[[], DecisionEngine | None],
                  learner: Callable[[], LearnerControl], interval_s: float = MODEL_SYNC_S
                  ) -> None:
        """Sync or watch every `interval_s` until cancelled; `engine()` is the engine in use
        (None while the shard rebuilds)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                if engine() is not None:
                    await self.step(engine, learner)
        finally:
            self._stop_watching()

    async def step(self, engine: Callable[[], DecisionEngine | None],
                   learner: Callable[[], LearnerControl]) -> None:
        """One interval's sync, or the watch kept going."""
        catalog_version, delta, known = self.take(engine())
        if delta is None:
            if self._watch is not None and self._watch[1] != (catalog_version, known):
                self._stop_watching()
            if self._watch is None or self._watch[0].done():
                self._watch = (asyncio.get_running_loop().create_task(
                    self._watched(engine, learner(), catalog_version, known)),
                    (catalog_version, known))
            return
        self._stop_watching()
        try:
            published = await learner().sync(catalog_version, delta, known)
        except Unavailable:
            self.unsent(catalog_version, delta)  # sent with the next sync
            return
        self._adopt_into(engine(), published)

    async def _watched(self, engine: Callable[[], DecisionEngine | None],
                       learner: LearnerControl, catalog_version: str, known: int) -> None:
        try:
            self._adopt_into(engine(), await learner.watch(catalog_version, known))
        except Unavailable:
            pass  # the learner is restarting: watched again at the next interval
        except Exception:  # not a reason to stop syncing: logged, tried again
            log.exception("%s: watching the learner failed", self.name)

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch[0].cancel()
            self._watch = None

    def _adopt_into(self, engine: DecisionEngine | None, published: Published | None) -> None:
        if published is not None and engine is not None:
            self.adopt(engine, published)

    def take(self, engine: DecisionEngine) -> tuple[str, ModelDelta | None, int]:
        """What the engine learnt since the last sync, with what an unsent sync had, for its
        catalog version (None if nothing), and the model version it has."""
        delta = engine.models.take_delta()
        version = engine.compiled.version
        if self._outbox is not None:
            unsent_version, unsent = self._outbox
            self._outbox = None
            if unsent_version == version:
                delta = delta + unsent
            else:
                log.warning("%s: model learning from before the switch to catalog %s could "
                            "not reach the learner and is kept only here", self.name, version)
        if not delta.learned():
            delta = None
        return version, delta, engine.models.version

    def unsent(self, catalog_version: str, delta: ModelDelta | None) -> None:
        """The learner could not be reached: the delta goes with the next sync."""
        if delta is not None:
            self._outbox = (catalog_version, delta)

    def adopt(self, engine: DecisionEngine, published: Any) -> None:
        """Use a model version the learner published (control/learner.py's Published) if it
        is for the engine's catalog and newer than the engine's."""
        if published.catalog_version == engine.compiled.version and \
                published.version > engine.models.version:
            engine.adopt_models(published)
            self.adoptions.append((published.version, time.time()))
