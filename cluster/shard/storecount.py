"""How many customers have a home in the store: a shard's `stored` (ShardHost's loop).

`Shard.stats` reports them, less the residents that have one, as `passivated`: health and
`kairos status` show it, and the controller sizes its move rounds by the densest shard's
resident and passivated customers (control/moves.py). Only the store knows the number, and a
directory store lists a folder per partition to say it (2,048 for one of two shards of 4,096
partitions: 36 ms of CPU at 10 homes a partition, seconds at millions), so it is
counted on a thread, and only when it may have moved: at once for a Shard new to serving
(started, rebuilt), then, checked every STORE_COUNT_S, after something that may write or
delete homes. Homes are written by passivation (a tick's or `Shard.passivate`), deleted by a
snapshot after a Take or Forget (a tick's checkpoint, or a snapshot method), and moved or
gained or given up with partitions (shard methods: freeze, adopt, thaw, release), so a mark
of the host's stirs (request batches, shard methods) and the shard's passivation and
snapshot tallies moves with each of them. An idle shard, whose mark stays put, lists the
store once every STORE_RECOUNT_S only, which also puts right what no mark shows (a delete a
tick retried without a snapshot, an operator restoring homes): `passivated` is then at most
STORE_COUNT_S behind a change the shard made (as before), and STORE_RECOUNT_S behind one it
did not.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Callable

from kairos.cluster.settings import STORE_COUNT_S, STORE_RECOUNT_S
from kairos.cluster.shard.shard import Shard

log = logging.getLogger("kairos.shard")


def mark(shard: Shard, stirs: int) -> tuple[int, int, int]:
    """What moves with every write or delete of the shard's homes (with more besides)."""
    return stirs, shard.counts["passivations"], shard.counts["snapshots"]


async def keep_counted(name: str, current: Callable[[], Shard | None],
                       served: asyncio.Event, stirs: Callable[[], int]) -> None:
    """Keep `current()`'s `stored` counted (on a thread: the event loop, and every request
    behind it, must not wait for a listing); `served` is set as a Shard starts serving.
    A store that cannot answer keeps the last count: it is a statistic, and the data path
    reports the store's failures itself."""
    loop = asyncio.get_running_loop()
    counted, at, seen = None, -math.inf, None
    while True:
        served.clear()
        shard, now = current(), loop.time()
        if shard is not None:
            marked = mark(shard, stirs())
            if shard is not counted or now - at >= STORE_RECOUNT_S or \
                    marked != seen and now - at >= STORE_COUNT_S:
                counted, at, seen = shard, now, marked
                try:
                    shard.stored = await loop.run_in_executor(None, shard.store.count,
                                                              list(shard.owned))
                except Exception as exc:
                    seen = None  # counted again at the next check
                    log.warning("%s: counting the store's customers failed: %s", name, exc)
        # woken by the next Shard to serve, not polling for it
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(served.wait(), max(now + STORE_COUNT_S - loop.time(), 0.0)
                                   if shard is not None and shard is counted else None)
