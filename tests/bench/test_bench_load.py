"""The load harness runs end to end (smoke mode) and reports what the README quotes.

It asserts that the harness works and that its summary is well-formed, never how fast
anything was: figures come from full runs on a quiet machine.
"""
from __future__ import annotations

import json
import math

from tests.bench.harness import run_harness

SYSTEMS = ("floor-grpc", "floor-ray-1node", "redis", "redis-core", "kairos-1node",
           "kairos-direct-1node", "actors")


def test_smoke_run_writes_reports_and_a_summary_line(tmp_path):
    summary = run_harness("load", ["--smoke"], tmp_path, 240)
    assert set(SYSTEMS) <= set(summary["systems"])
    for section in ("ingest", "batch", "push"):
        assert "kairos-1node" in summary[section], section
    for section in ("ingest", "batch"):  # events acknowledged with nothing applied
        assert "floor-grpc" in summary[section], section
    for section in ("systems", "ingest", "batch", "push"):
        for name, figures in summary[section].items():
            where = f"{section}: {name}"
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] < math.inf, where
            assert figures["rate"] > 0, where
            assert isinstance(figures["errors"], int) and figures["errors"] >= 0, where
            if section != "push":  # server CPU of the system's own processes, per request,
                assert 0 < figures["cpu_us_per_request"] < math.inf, where
                # and what the generators spent on each
                assert 0 < figures["generator_cpu_us_per_request"] < math.inf, where
    run = summary["run"]
    report = json.loads((tmp_path / f"{run}.json").read_text())
    assert report["actor_per_customer"]["capacity_extrapolated"] > 0
    # CPU by process: with no load, and per request in each step (Kairos's own actors named)
    assert sum(report["idle_cpu"]["kairos-1node"].values()) > 0
    by_process = report["systems"]["kairos-1node"]["steps"][0]["cpu_us_per_request_by_process"]
    assert by_process["ray::GatewayActor"] > 0 and by_process["ray::ShardActor"] > 0
    # called as a client that routes: each Decide went to its owner's own endpoint
    assert len(report["layout"]["kairos-direct-1node"]["routes"]) > 1
    assert report["cpu_accounting"] == 2
    # met, missed, or not judged: on a CPU figure that is only a lower bound, or one with
    # no value (the Redis peer held no rate to set Kairos's against)
    assert report["targets"] and all(isinstance(t["met"], bool) or t["lower_bound"]
                                     or t["value"] is None for t in report["targets"])
    # the snapshots each Kairos step that wrote left due, taken after it, outside its window
    written = [*report["ingest"]["kairos-1node"]["steps"],
               *report["batch"]["kairos-1node"]["steps"], report["journey"]["kairos-1node"],
               report["push"]["kairos-1node"]]
    for step in written:
        deferred = step["deferred"]
        assert deferred["customers"] > 0  # those of the partitions the step dirtied
        assert 0 < deferred["dirty_partitions"] <= deferred["partitions"]
        assert deferred["server_cpu_s"] > 0 and deferred["cpu_us_per_write"] > 0
    assert "deferred" not in report["ingest"]["floor-grpc"]["steps"][0]
    assert 0 < summary["cpu_tick_us"] < math.inf
    text = (tmp_path / f"{run}.md").read_text()
    assert "| system |" in text
    assert "| IngestBatch | kairos-1node |" in text  # its CPU per event over the floor's
    assert "| sessions | kairos-1node |" in text  # its snapshots settled after it
    assert (tmp_path / f"{run}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
