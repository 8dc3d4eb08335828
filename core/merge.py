"""Profile merge: fold one customer's profile into another's, as identity linking needs.

When an anonymous visitor (a cookie, a device) turns out to be a known customer, the two
profiles become one. The merged profile is the one the customer would have if every event of
both had been applied to it: counts and sums add, decayed values add once both are aged to
the later clock, `last` keeps the newer value, and so does an attribute set `from` an event,
min and max combine, `time_since` keeps the latest time, and the interaction histories
interleave by time (the newest that fit the ring). Where neither value has a time to go by
(an attribute no event sets, a row from before attributes kept one) the known customer's
value wins, and the other's fills only one it never had (NaN). The number of events applied
adds up.

Merges are rare (one per link), so this is plain NumPy over two rows, not kernel code.
"""
from __future__ import annotations

import math

import numpy as np

from .compiler import CLOCK_SLOT, CompiledCatalog
from .state import EMPTY, ProfileTable

ADD, DECAYED, LAST, MIN, MAX, LATEST, KEEP = range(7)
_FEATURE_OPS = {"count": ADD, "sum": ADD, "decayed_count": DECAYED, "decayed_sum": DECAYED,
                "last": LAST, "min": MIN, "max": MAX, "time_since": LATEST}


def slot_ops(compiled: CompiledCatalog) -> np.ndarray:
    """How each profile slot merges (the clock is handled on its own)."""
    ops = np.full(compiled.layout.size, KEEP, np.int8)
    for feature in compiled.catalog.features:
        ops[compiled.layout.slot[feature.name]] = _FEATURE_OPS[feature.kind]
    for attr in compiled.catalog.attributes:
        if attr.from_event is not None:  # events set it as they set a `last` (compiler.py)
            ops[compiled.layout.slot[attr.name]] = LAST
    return ops


def merge_profiles(compiled: CompiledCatalog, table: ProfileTable, into: str,
                   other: str) -> None:
    """Fold `other`'s row into `into`'s (both resident in `table`); `other` is left as is."""
    a, b = table.index[into], table.index[other]
    table.values[a] = merge_values(compiled, table.values[a], table.values[b])
    _merge_rings(table, a, b)
    table.applied[a] += table.applied[b]


def merge_values(compiled: CompiledCatalog, mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The merged slot values of two rows (`mine` wins where the slots do not combine)."""
    ops = slot_ops(compiled)
    out = mine.copy()
    clocks = [mine[CLOCK_SLOT], theirs[CLOCK_SLOT]]
    known = [t for t in clocks if not math.isnan(t)]
    clock = max(known) if known else math.nan
    out[CLOCK_SLOT] = clock
    inv_hl = compiled.layout.view_inv_half_life
    for s, op in enumerate(ops):
        x, y = mine[s], theirs[s]
        if op == ADD:
            out[s] = x + y
        elif op == DECAYED:
            out[s] = _aged(x, clocks[0], clock, inv_hl[s]) + _aged(y, clocks[1], clock, inv_hl[s])
        elif op == LAST:
            # no time (NaN) is older than any; a value the known customer never had is filled
            # whatever its time (a row from before attributes kept times has none)
            if theirs[s + 1] > mine[s + 1] or (math.isnan(mine[s + 1])
                                               and not math.isnan(theirs[s + 1])) \
                    or math.isnan(x):
                out[s], out[s + 1] = y, theirs[s + 1]
        elif op in (MIN, MAX, LATEST):
            pick = np.fmin if op == MIN else np.fmax
            out[s] = pick(x, y)
        elif s != CLOCK_SLOT and math.isnan(x) and ops[s - 1] != LAST:
            out[s] = y  # an attribute the known customer never had
    return out


def _aged(value: float, since: float, until: float, inv_half_life: float) -> float:
    if math.isnan(since) or until <= since:
        return value
    return value * 2.0 ** (-(until - since) * inv_half_life)


def _merge_rings(table: ProfileTable, a: int, b: int) -> None:
    """Interleave both histories by time; keep the newest that fit, oldest first."""
    entries = _ring_entries(table, a) + _ring_entries(table, b)
    entries.sort(key=lambda e: e[3])  # stable: at equal times, the known customer's first
    kept = entries[-table.history_size:]
    table.ring_action[a] = EMPTY
    table.ring_channel[a] = 0
    table.ring_outcome[a] = 0
    table.ring_time[a] = 0
    for j, (action, channel, outcome, when) in enumerate(kept):
        table.ring_action[a, j] = action
        table.ring_channel[a, j] = channel
        table.ring_outcome[a, j] = outcome
        table.ring_time[a, j] = when
    table.ring_head[a] = len(kept) % table.history_size


def _ring_entries(table: ProfileTable, row: int) -> list[tuple[int, int, int, int]]:
    """A row's history, oldest first."""
    size, head = table.history_size, int(table.ring_head[row])
    order = [(head + k) % size for k in range(size)]
    return [(int(table.ring_action[row, e]), int(table.ring_channel[row, e]),
             int(table.ring_outcome[row, e]), int(table.ring_time[row, e]))
            for e in order if table.ring_action[row, e] != EMPTY]
