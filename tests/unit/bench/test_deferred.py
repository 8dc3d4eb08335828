"""The work a step defers (the snapshots of the partitions it dirtied, SNAPSHOT_AFTER_S
later) is settled after it, outside every measured window, and reported on its own."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench import load, sweep, systems
from bench.cpu import server_cpu_during
from bench.loadgen import Step
from bench.report import _deferred_rows


class Pool:
    """A generator pool whose steps answer at once, recording what ran when."""

    def __init__(self, events: list[str]):
        self.events = events

    def run(self, step: Step) -> dict:
        self.events.append(f"step {step.rate_per_s:g}")
        return {"op": step.op, "rate_target": step.rate_per_s, "sent": 10,
                "kinds": {"event": {"count": 10, "ok": 10, "rate": 10.0, "p99_ms": 1.0,
                                    "errors": {}, "fallbacks": 0}}}

    def pids(self) -> set[int]:
        return set()


def test_each_step_is_settled_after_its_window_and_before_the_next():
    events: list[str] = []
    result = sweep.sweep(Pool(events), "kairos-1node",
                         lambda rate: Step("t", "stream", rate, 0.0, 1.0, 10), (1000, 2000),
                         after=lambda step: events.append(f"settled {step['rate_target']:g}"))
    assert events == ["step 1000", "settled 1000", "step 2000", "settled 2000"]
    assert len(result["steps"]) == 2


def test_a_settled_step_reports_its_snapshot_per_write_served(monkeypatch):
    monkeypatch.setattr(load, "settle_snapshots", lambda generators: {
        "dirty_partitions": 3, "partitions": 4, "customers": 500, "seconds": 0.5,
        "server_cpu_s": 0.02})
    bench = load.Bench(Pool([]), load.SMOKE)
    step = {**Pool([]).run(Step("t", "journey", 200, 0.0, 1.0, 10)), "kinds": {
        "event": {"count": 60, "errors": {"RESOURCE_EXHAUSTED": 10}, "fallbacks": 0},
        "respond": {"count": 50, "errors": {}, "fallbacks": 0},
        "decide": {"count": 90, "errors": {}, "fallbacks": 0}}}
    bench.settle_deferred(step)
    # 20 ms over the 100 writes served (events and outcomes; Decides write nothing)
    assert step["deferred"]["cpu_us_per_write"] == 200.0
    bench.results["journey"]["kairos-1node"] = step
    assert _deferred_rows(bench.results) == [
        ["sessions", "kairos-1node", "200", "3 of 4", "500", "0.50", "0.02", "200"]]


class Method:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def remote(self, *args):
        self.calls.append(args)
        return self.answer(*args)


class ShardActor:
    """A shard of 4 partitions, 1 of them dirty, 100 customers in each."""

    def __init__(self) -> None:
        self.stats = Method(lambda: {"dirty_partitions": 1, "partitions": 4})
        self.snapshot = Method(lambda dirty_only=False: 100 if dirty_only else 400)


def test_the_settle_snapshots_the_dirty_partitions_only(monkeypatch):
    shards = [ShardActor(), ShardActor()]
    monkeypatch.setattr(systems, "shard_actors", lambda: shards)
    monkeypatch.setattr(systems.ray, "get", lambda refs: refs)
    settled = systems.settle_snapshots(set())
    assert [s.snapshot.calls for s in shards] == [[(True,)], [(True,)]]
    assert (settled["dirty_partitions"], settled["partitions"], settled["customers"]) == \
        (2, 8, 200)


def test_the_cpu_over_a_call_is_what_the_system_spent_during_it():
    """A child of the bench (a server) that burns 0.3 s of CPU while the call waits."""
    burn = ("import sys, time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
            "print('burned', flush=True); time.sleep(30)\n")
    with subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE,
                          text=True) as child:
        try:
            answer, cpu_s = server_cpu_during(set(), child.stdout.readline)
        finally:
            child.kill()
    assert answer == "burned\n"
    assert cpu_s == pytest.approx(0.3, abs=0.1)  # the interpreter's start-up too
