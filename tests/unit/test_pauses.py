"""The collector's pauses as a process reports them (cluster/pauses.py): a collection can run
inside `observed()` (any allocation may start one), and its callback records a long pause, so
the report must not iterate the record while it can change (a 10,000,000-customer
bench.resident run failed its shards' stats with 'deque mutated during iteration')."""
from __future__ import annotations

import gc
from collections import deque

import pytest

from kairos.cluster import pauses


@pytest.mark.unit
def test_a_collection_during_the_report_does_not_break_it(monkeypatch):
    long: deque = deque([(1.0, 2, 50.0)] * 8, maxlen=16)
    monkeypatch.setattr(pauses, "_long", long)

    def recorded(phase, info):  # as _timed does for a pause of LONG_MS or more
        if phase == "stop":
            long.append((2.0, info["generation"], 60.0))
    gc.callbacks.append(recorded)
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # every allocation collects
    try:
        reported = pauses.observed()["long"]
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(recorded)
    assert len(reported) >= 8 and all(len(x) == 3 for x in reported)
