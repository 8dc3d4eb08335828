"""Model sync's bookkeeping, apart from reaching the learner (the actor does that).

Shards keep model statistics as deltas of natural parameters against the last published
version; at least every MODEL_SYNC_S the actor sends the delta to the learner, which adds it
to the global posterior and publishes the next version, which the shard then uses. A delta
the learner could not take goes with the next sync, unless the catalog switched meanwhile
(its rows mean something else then: it stays only in this shard's models).

The last ADOPTIONS_KEPT adoptions are kept with their wall-clock time, and `health` reports
them, so the time a published version takes to reach every shard can be measured exactly
(bench/simulate.py) however seldom the shards are asked.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from kairos.core.engine import DecisionEngine
from kairos.core.models import ModelDelta

log = logging.getLogger("kairos.shard")
ADOPTIONS_KEPT = 64  # at one sync per MODEL_SYNC_S, the last half minute


class ModelSync:
    def __init__(self, name: str):
        self.name = name
        self._outbox: tuple[str, ModelDelta] | None = None  # (catalog version, unsent delta)
        # (model version, epoch seconds) of the latest adoptions, oldest first
        self.adoptions: deque[tuple[int, float]] = deque(maxlen=ADOPTIONS_KEPT)

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
