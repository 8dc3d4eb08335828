"""Short garbage-collector pauses in processes that hold many customers.

CPython's full collection walks every container it tracks, and a shard's long-lived ones were
big: the profile table's index, the recency order, per-partition members and idempotency keys
held an entry per customer (the first three are now C arrays, an untracked dict and a column:
core/_rowindex.pyx). Measured on this machine, a full pass took 28 ms per 100,000
resident customers, and one came every few seconds after a bulk load: shards answered
p99 ≥ 40 ms for that while. Freezing moves the survivors out of the collector's sight
(gc.freeze, as Instagram's servers do); they are still freed by reference counting, and only
cyclic garbage that was frozen would outlive its use, so:

- `settle()` collects everything, then freezes: for moments where a pause is expected anyway
  (a shard rebuilt or restarted, a catalog switched), and where a whole Shard or engine may
  just have been dropped (unfreezing first lets a full pass free it);
- `keep_short()`, called every second, freezes again once enough new objects have aged into
  the oldest generation, after a full pass that is short because everything older is frozen;
  and every SETTLE_EVERY_S it settles, so that cycles which died inside the frozen set (a
  finished stream's state, an exception's traceback) are freed: one long pass every ten
  minutes instead of one every few seconds.

`track()` times every collection from then on (gc.callbacks), so a process can say what its
pauses were (`observed()`: the shards' `stats`, which bench.resident reads).
"""
from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

# Objects in the oldest generation (outside the frozen set) that trigger a collect-and-freeze:
# a few milliseconds of collector work at most.
OLDEST_FREEZE_AT = 5_000
SETTLE_EVERY_S = 600.0
_settled = time.monotonic()
# Collections at least this long are kept one by one (the last LONG_KEPT), with when they ended.
LONG_MS = 1.0
LONG_KEPT = 1000
GENERATIONS = 3
_counts = [0] * GENERATIONS
_seconds = [0.0] * GENERATIONS
_long: deque[tuple[float, int, float]] = deque(maxlen=LONG_KEPT)  # (epoch s, generation, ms)
_began = 0.0


def settle() -> None:
    global _settled
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _settled = time.monotonic()


def keep_short() -> bool:
    """Settle if SETTLE_EVERY_S passed; else collect and freeze if the oldest generation grew
    past OLDEST_FREEZE_AT. Whether it did either."""
    if time.monotonic() - _settled >= SETTLE_EVERY_S:
        settle()
        return True
    if len(gc.get_objects(generation=2)) < OLDEST_FREEZE_AT:
        return False
    gc.collect()
    gc.freeze()
    return True


def track() -> None:
    """Time every collection in this process from now on (once per process)."""
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


def _timed(phase: str, info: dict[str, Any]) -> None:
    global _began
    if phase == "start":
        _began = time.perf_counter()
        return
    seconds = time.perf_counter() - _began
    generation = info["generation"]
    _counts[generation] += 1
    _seconds[generation] += seconds
    if seconds * 1e3 >= LONG_MS:
        _long.append((time.time(), generation, round(seconds * 1e3, 3)))


def observed() -> dict[str, Any]:
    """Collections since `track()`, per generation (0, 1, 2: 2 is the full pass): how many and
    their total seconds; and the last LONG_KEPT that took LONG_MS or more, as (epoch seconds
    when it ended, generation, milliseconds)."""
    # copied with the collector off: a collection that copy's allocation started would append
    # to the record mid-copy ('deque mutated during iteration')
    enabled = gc.isenabled()
    gc.disable()
    try:
        long = tuple(_long)
    finally:
        if enabled:
            gc.enable()
    return {"collections": list(_counts), "seconds": [round(s, 6) for s in _seconds],
            "long": [list(x) for x in long]}
