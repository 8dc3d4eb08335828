"""Runtime tunables. Each reads an environment override of the same name, prefixed KAIROS_."""
from __future__ import annotations

import os


def _env(name: str, default: float, cast: type = float):
    raw = os.environ.get(f"KAIROS_{name}")
    if raw is None:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"KAIROS_{name} must be {'an integer' if cast is int else 'a number'}"
                         f", got {raw!r}") from None
    if value < 0:
        raise ValueError(f"KAIROS_{name} must not be negative, got {raw!r}")
    return value


NAMESPACE = "kairos"  # Ray namespace of every Kairos actor
CONTROLLER_NAME = "kairos-controller"
LEARNER_NAME = "kairos-learner"

# Requests a shard has admitted but not yet processed; past it, new batches answer BUSY.
SHARD_QUEUE_LIMIT = _env("SHARD_QUEUE_LIMIT", 20_000, int)
# Requests one kernel round may take from a shard's queue.
SHARD_ROUND_LIMIT = _env("SHARD_ROUND_LIMIT", 2048, int)
# A customer idle this long is passivated to the store.
PASSIVATE_IDLE_S = _env("PASSIVATE_IDLE_S", 900.0)
# Most customers resident in one shard; past it the least recently used are passivated.
RESIDENT_LIMIT = _env("RESIDENT_LIMIT", 2_000_000, int)
# How often a shard fires due timers and passivates: timers fire within this of their due time.
TICK_S = _env("TICK_S", 0.1)
# How often a shard sends its model deltas to the learner and adopts the latest version.
MODEL_SYNC_S = _env("MODEL_SYNC_S", 0.5)
# How long a routing-table long poll waits for a newer version before answering "no change".
LONG_POLL_S = _env("LONG_POLL_S", 10.0)
# Requests a client puts in one call to a shard, and calls it keeps in flight per shard.
# Fewer calls in flight make bigger batches (when calls were Ray calls, IngestStream on 2
# cores acked 1.6k/s with 4, 2.1k/s with 2); over the data plane a call is cheap, and 2 or 4
# measured the same at 1,000 decisions/s.
CLIENT_BATCH_LIMIT = _env("CLIENT_BATCH_LIMIT", 512, int)
CLIENT_INFLIGHT_CALLS = _env("CLIENT_INFLIGHT_CALLS", 2, int)
# Under load (a call to the shard in flight), how long a call waits for more requests before
# it goes; at low load calls go at once.
CLIENT_BATCH_WINDOW_S = _env("CLIENT_BATCH_WINDOW_S", 0.001)
# Requests a client lets wait for one shard while its calls are in flight; past it, Busy.
CLIENT_QUEUE_LIMIT = _env("CLIENT_QUEUE_LIMIT", 10_000, int)
# The address shards serve their data path on (cluster/dataplane.py): empty for the node's
# address as Ray knows it; `kairos up` and the tests, all on one machine, use 127.0.0.1.
DATA_HOST = os.environ.get("KAIROS_DATA_HOST", "")
# Where shards keep customers, snapshots and journals: "memory" (volatile), a directory, or
# redis://host:port/db. `kairos up` defaults to a directory (see cli.py).
STORE = os.environ.get("KAIROS_STORE", "memory")
# Journal durability: "fsync" (an fsync per batch before the ack), "os" (survives a process
# crash, not a power cut) or "off" (recovery has only the snapshots).
JOURNAL_POLICY = os.environ.get("KAIROS_JOURNAL_POLICY", "fsync")
# A partition is snapshotted this long after its first change since its last snapshot, or
# sooner once the journal holds SNAPSHOT_BACKLOG records since that change; the journal keeps
# everything since the oldest change not yet in a snapshot. Snapshotting costs about 2 ms of a
# shard's thread per partition of 250 customers (export, write, fsync): with every partition
# busy, a 60 s cycle is ~4 % of it, and recovery replays at most about a minute of events.
SNAPSHOT_AFTER_S = _env("SNAPSHOT_AFTER_S", 60.0)
SNAPSHOT_BACKLOG = _env("SNAPSHOT_BACKLOG", 1_000_000, int)
# How long one tick may spend on snapshots (at least one partition): requests wait for it.
SNAPSHOT_BUDGET_S = _env("SNAPSHOT_BUDGET_S", 0.003)
# How often a shard recounts the customers it has in the store (for status and metrics).
STORE_COUNT_S = _env("STORE_COUNT_S", 10.0)
# How long a shard that was scaled away lingers, answering MOVED, before it is stopped.
RETIRE_GRACE_S = _env("RETIRE_GRACE_S", 5.0)
