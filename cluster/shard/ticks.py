"""How long an idle shard's background loop may sleep before its next tick (host.py).

A tick (`Shard.tick`) fires due timers, passivates, snapshots and trims. A shard that serves
requests ticks every TICK_S, as each round may arm a timer or dirty a partition; one that
serves nothing would wake ten times a second to find nothing due, a few milliseconds of CPU
a second per shard for nothing. So once a tick passed with no request or shard method meanwhile
(ShardHost wakes the loop on either), the loop sleeps until the earliest timer or the first
snapshot is due, as the tick computes them, so timers still fire within TICK_S of their due time
and a partition is still snapshotted SNAPSHOT_AFTER_S after its first unsnapshotted change.
Residents past the resident limit are passivated a tick's budget at a time, every TICK_S as
under load. What has no due time of its own here (idle customers' passivation, which waits
PASSIVATE_IDLE_S anyway, the decision log's trim, erasures the log's writer finished on its
thread, a write that failed and is tried again) waits at most QUIET_TICK_S.
"""
from __future__ import annotations

import math

from kairos.cluster.settings import SNAPSHOT_AFTER_S
from kairos.cluster.shard.shard import Shard

QUIET_TICK_S = 1.0


def quiet_s(shard: Shard) -> float:
    """Seconds from now (the shard's clock) to the idle shard's next due tick: its earliest
    timer, its first snapshot, or QUIET_TICK_S."""
    residency = shard.residency
    if len(residency.recent) > residency.resident_limit:  # a tick's budget of them at a time
        return 0.0
    now = shard.ctx.clock()
    snapshot = min((when for _, when in shard.dirty.values()), default=math.inf)
    due = min(shard.timers.next_due(), snapshot + SNAPSHOT_AFTER_S, now + QUIET_TICK_S)
    return max(due - now, 0.0)

