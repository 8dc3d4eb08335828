"""`python -m bench.resident --judge`: a saved run judged again with this version's targets,
and whether its customers were measured as served ones."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

from bench import resident
from bench.journeys import PROFILE_EVENT, crm_profiles
from kairos.cluster.shard.actor import rings_written
from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine

# the committed runs, of customers loaded with a profile event each and nothing else
UNSERVED = resident.RESULTS / "resident-20261204T061318Z.json"


def test_a_late_generator_leaves_the_p99_ratio_unjudged(capsys):
    # the committed run: its 1,000,000 step's generator fell behind its schedule
    saved = resident.RESULTS / "resident-20261203T193146Z.json"
    assert resident.main(["--judge", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "0.114x — **not judged** (the generator fell behind" in out


def test_a_run_of_unserved_customers_is_not_judged(capsys):
    # its customers' ring pages were never written, so never resident: the figure undercounts
    assert resident.main(["--judge", str(UNSERVED)]) == 0
    out = capsys.readouterr().out
    assert "bytes per customer ≤ 1024: 781 — **not judged** (customers not served: the ring " \
           "pages were never written)\n" in out
    saved = json.loads(UNSERVED.read_text())
    assert resident.targets(*saved["phases"])["bytes_per_customer"]["met"] is False


def served(tmp_path, row: int, rings: int | None = None):
    """The unserved run's file as a run of served customers would have written it, `rings`
    of the larger population's rows written (default: every one)."""
    saved = json.loads(UNSERVED.read_text())
    for p in saved["phases"]:
        p["load"]["impressions"] = p["load"]["events"]
        p["rings_written"] = p["customers"]
    if rings is not None:
        saved["phases"][-1]["rings_written"] = rings
    path = tmp_path / "served.json"
    path.write_text(json.dumps({**saved, "row_bytes": row, "outcome_rate_window_s": 1.0}))
    return path


def test_a_run_of_served_customers_is_judged_and_says_what_served_leaves_out(capsys,
                                                                             tmp_path):
    assert resident.main(["--judge", str(served(tmp_path, 733))]) == 0
    out = capsys.readouterr().out
    assert "A profile row's arrays: 733 bytes. The shards' outcome-rate window: 1 s." in out
    assert "bytes per customer ≤ 1024: 781 — **met** (-243 bytes) — served: a row and its " \
           "ring each, without idempotency keys, outcome keys, taught labels or the decision " \
           "memo (per shard, at most 100,000 decisions' inputs)\n" in out


def test_a_run_whose_rings_were_not_all_written_is_not_judged(capsys, tmp_path):
    # impressions sent are not rings written: the shards' count must be every customer
    path = served(tmp_path, 733, rings=9_999_000)
    assert resident.main(["--judge", str(path)]) == 0
    out = capsys.readouterr().out
    assert "781 — **not judged** (customers not served: 9,999,000 of 10,000,000 rows have " \
           "their ring written)" in out
    saved = json.loads(path.read_text())
    assert resident.targets(*saved["phases"], 733)["bytes_per_customer"]["met"] is False


def test_a_figure_below_a_rows_own_arrays_is_not_judged(capsys, tmp_path):
    # RSS that holds less than the rows' arrays missed pages: no verdict rests on it
    assert resident.main(["--judge", str(served(tmp_path, 813))]) == 0
    out = capsys.readouterr().out
    assert "781 — **not judged** (below a profile row's own arrays, 813 bytes" in out
    saved = json.loads(served(tmp_path, 813).read_text())
    assert resident.targets(*saved["phases"], 813)["bytes_per_customer"]["met"] is False


def test_each_customer_is_shown_an_action_its_channel_offers():
    # the impression the load gives each customer is taken, and written to its ring
    action, channel = resident.shown_action(default_compiled())
    engine = DecisionEngine(default_compiled())
    engine.record_outcomes([("c0000001", action, channel, "impression", time.time(), None)])
    assert engine.table.ring_head[engine.table.index["c0000001"]] == 1


def test_the_shards_count_the_rows_whose_ring_was_written():
    # what the bench checks its customers by: a profile alone writes no ring, an impression
    # does, and the count holds once a ring wraps (its head back at 0) and after an eviction
    compiled = default_compiled()
    action, channel = resident.shown_action(compiled)
    engine = DecisionEngine(compiled)
    shard = SimpleNamespace(engine=engine)
    now = time.time()
    engine.apply([engine.encode_event(c, PROFILE_EVENT, now, attributes)
                  for c, attributes in crm_profiles(3)])
    assert len(engine.table) == 3 and rings_written(shard) == 0
    engine.record_outcomes([(c, action, channel, "impression", now, None)
                            for c in ("c0000000", "c0000001")])
    assert rings_written(shard) == 2
    engine.record_outcomes([("c0000001", action, channel, "impression", now, None)]
                           * (compiled.history_size - 1))
    assert engine.table.ring_head[engine.table.index["c0000001"]] == 0
    assert rings_written(shard) == 2
    engine.table.evict("c0000000")
    assert rings_written(shard) == 1
