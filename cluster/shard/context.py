"""What every part of a shard shares and none owns: its name and partition count, the engine
of the catalog in use, the store, the clock and the tallies that `stats` and the metrics read.

The engine is replaced when the catalog switches (catalogs.py), so parts reach it through the
context each time and never keep it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from kairos.core.compiler import CompiledCatalog
from kairos.core.engine import DecisionEngine

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.storage.store import Store

LEARNED_COUNT = "learned_from:"  # tallies of outcomes by what they taught from (+ its kind)
SEEN_GRAIN_S = 0.001  # readings of `seen` this close share one float object


@dataclass
class ShardContext:
    name: str
    n_partitions: int
    engine: DecisionEngine
    store: Store
    clock: Callable[[], float]
    seed: int
    counts: Counter = field(default_factory=Counter)  # events, decisions, snapshots, ...
    _seen: float = field(default=-math.inf, repr=False)

    def seen(self) -> float:
        """The clock, as the float object it last read while they differ by under
        SEEN_GRAIN_S: every resident's last use is kept (residency.py), and a round's
        customers so share one object, not 24 bytes each (idleness is judged in minutes)."""
        now = self.clock()
        if not abs(now - self._seen) < SEEN_GRAIN_S:
            self._seen = now
        return self._seen

    @property
    def compiled(self) -> CompiledCatalog:
        return self.engine.compiled

    def partition_of(self, customer_id: str) -> int:
        return partition_of(customer_id, self.n_partitions)


def touch(touched: dict[str, float], customer_id: str, when: float) -> None:
    """Note that a round changed the customer as of `when` (its watches are looked at)."""
    touched[customer_id] = max(touched.get(customer_id, 0.0), when)
