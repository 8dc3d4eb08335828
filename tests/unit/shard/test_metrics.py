"""What a shard's tallies become as metrics."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter as Tally

import pytest

from ray.util.metrics import Counter, Gauge

from kairos.cluster import metrics
from kairos.cluster.metrics import ShardMetrics
from kairos.cluster.shard.context import LEARNED_COUNT

from tests.support.metrics import Recorder


def test_outcomes_are_counted_by_what_they_taught_from():
    shard = ShardMetrics("s1")
    shard.learned = Recorder()
    for decided, offline in ((2, 0), (2, 1), (5, 1)):
        shard.flush(Tally({LEARNED_COUNT + "decision": decided,
                           LEARNED_COUNT + "profile_no_decision": offline}),
                    Tally(), Tally(), 0, 0, 0, 0.0, 0)
    assert shard.learned.calls == [
        (2, {"shard": "s1", "learned_from": "decision"}),
        (1, {"shard": "s1", "learned_from": "profile_no_decision"}),
        (3, {"shard": "s1", "learned_from": "decision"})]


GAUGES = ("queue", "resident", "model_version", "recovery_s", "unsnapshotted")


def recorded(shard: ShardMetrics) -> ShardMetrics:
    """Every counter and gauge of `shard` a Recorder."""
    for name, metric in list(vars(shard).items()):
        if isinstance(metric, (Counter, Gauge)):
            setattr(shard, name, Recorder())
    return shard


def sent(shard: ShardMetrics) -> int:
    return sum(len(m.calls) for m in vars(shard).values() if isinstance(m, Recorder))


def test_a_flush_with_nothing_changed_sends_nothing_until_the_gauges_are_due(monkeypatch):
    """An idle shard flushes every METRICS_FLUSH_S: only changes go to Ray, and the gauges
    again every `gauge_refresh_s` (Ray drops a gauge not set between two of its exports)."""
    now = [100.0]
    monkeypatch.setattr(metrics, "monotonic", lambda: now[0])
    shard = recorded(ShardMetrics("s1"))
    values = (Tally({"events": 3}), Tally({"web": 2}), Tally(), 0, 5, 1, 0.5, 0)
    shard.flush(*values)
    assert sent(shard) == 2 + len(GAUGES)
    now[0] += shard._refresh_s / 2
    shard.flush(*values)
    assert sent(shard) == 2 + len(GAUGES)  # nothing changed: nothing sent
    shard.flush(Tally({"events": 3}), Tally({"web": 2}), Tally(), 1, 5, 1, 0.5, 0)
    assert [len(getattr(shard, g).calls) for g in GAUGES] == [2] * len(GAUGES)
    now[0] += shard._refresh_s
    shard.flush(Tally({"events": 3}), Tally({"web": 2}), Tally(), 1, 5, 1, 0.5, 0)
    assert [getattr(shard, g).calls[-1][0] for g in GAUGES] == [1, 5, 1, 0.5, 0]
    assert [len(getattr(shard, g).calls) for g in GAUGES] == [3] * len(GAUGES)
    assert len(shard.events.calls) == 1  # a counter that gained nothing sends nothing


@pytest.mark.parametrize("interval_ms, refresh_s", [(10_000, 5.0), (3_000, 1.5), (60_000, 30.0),
                                                    (200, 0.5)])
def test_the_gauges_refresh_at_half_rays_export_interval_as_the_process_reads_it(
        interval_ms, refresh_s):
    """However the cluster sets metrics_report_interval_ms (Ray exports at least every 1 s),
    a shard sets its gauges at least twice an export, so none goes unexported for two."""
    assert metrics.gauge_refresh_s(interval_ms) == refresh_s
    shown = subprocess.run(
        [sys.executable, "-c", "from kairos.cluster.metrics import ShardMetrics; "
                               "print(ShardMetrics('s1')._refresh_s)"],
        env={**os.environ, "RAY_metrics_report_interval_ms": str(interval_ms)},
        capture_output=True, text=True, check=True, timeout=120).stdout
    assert float(shown) == refresh_s


def test_the_flush_refreshes_the_gauges_at_the_interval_the_process_read(monkeypatch):
    """Not a fixed 5 s: a cluster exporting every 3 s has its idle shard's gauges set again
    after 1.5 s (review rev-idlefix L3)."""
    now = [100.0]
    monkeypatch.setattr(metrics, "monotonic", lambda: now[0])
    monkeypatch.setattr(metrics, "_report_interval_ms", lambda: 3_000.0)
    shard = recorded(ShardMetrics("s1"))
    values = (Tally(), Tally(), Tally(), 0, 5, 1, 0.5, 0)
    shard.flush(*values)
    now[0] += 1.4
    shard.flush(*values)
    assert [len(getattr(shard, g).calls) for g in GAUGES] == [1] * len(GAUGES)
    now[0] += 0.1
    shard.flush(*values)
    assert [len(getattr(shard, g).calls) for g in GAUGES] == [2] * len(GAUGES)
