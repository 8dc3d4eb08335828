"""A system's idle CPU is measured only after it has had no request for a while: the settle
probes' aftermath (the shedder's fast updates, the control loop's pace before it backs off)
would otherwise count as what the system spends whatever the rate."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bench import loadgen

pytestmark = pytest.mark.unit


def test_idle_cpu_is_measured_only_after_quiet_s_without_requests(monkeypatch):
    settled: list[float] = []
    starts: list[float] = []
    monkeypatch.setattr(loadgen, "settle", lambda target: settled.append(time.time()))
    measure = loadgen.server_cpu

    def server_cpu(generators, start, seconds):
        starts.append(start)
        return measure(generators, start, seconds)
    monkeypatch.setattr(loadgen, "server_cpu", server_cpu)
    pool = SimpleNamespace(pids=set)  # no generators: every child of this process is measured
    by_process = loadgen.GeneratorPool.idle(pool, "127.0.0.1:1", 0.2, quiet_s=1.5)
    assert starts[0] - settled[0] >= 1.5  # the window opens quiet_s after settling
    assert time.time() - settled[0] >= 1.5 + 0.2  # and is measured, 0.2 s
    assert all(ms >= 0.0 for ms in by_process.values())
