"""Catalog switches, in two phases so that every shard moves to version v or none does: each
shard `prepare`s v (compiles it; errors raise), then the controller tells each to `commit`,
which moves every resident customer and the models to v's layout. A decision names the
version it used and never mixes two."""
from __future__ import annotations

import math

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.models import ModelRemap

from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.durability import Durability
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.residency import Residency, table_rows
from kairos.cluster.shard.watches import Watches


class CatalogSwitch:
    def __init__(self, ctx: ShardContext, ownership: Ownership, residency: Residency,
                 watches: Watches, durability: Durability):
        self._ctx = ctx
        self._ownership = ownership
        self._residency = residency
        self._watches = watches
        self._durability = durability
        self._prepared: CompiledCatalog | None = None

    def prepare(self, catalog_text: str) -> str:
        """Phase one: compile the catalog (errors raise); its version."""
        self._prepared = compiled_from_text(catalog_text)
        return self._prepared.version

    def commit(self, version: str) -> None:
        """Phase two: move every resident customer and the models to the prepared version."""
        new, ctx = self._prepared, self._ctx
        if new is None or new.version != version:
            raise ValueError(f"{ctx.name} has not prepared catalog version {version!r}")
        old = ctx.engine
        residents = [c for c in old.table.ids if c is not None]
        state = self._residency.export(residents)
        rows = table_rows(self._residency.resident_limit, self._residency.overflow)
        ctx.engine = DecisionEngine(new, capacity=max(len(residents), rows), seed=ctx.seed)
        ctx.engine.keep_eligible = old.keep_eligible
        # totals the metrics export, which ignore one that went down (as models.refused)
        ctx.engine.values_clipped = old.values_clipped
        ctx.engine.values_unbounded = old.values_unbounded
        ctx.engine.use_models(ModelRemap(old.compiled, new).table(old.models))
        self._watches.switched()
        self._residency.reload(state)
        self._prepared = None
        # the journal's records were written under the old version: a checkpoint means no
        # recovery ever replays them under the new one
        self._durability.checkpoint(math.inf, len(self._ownership.owned))
