"""`python -m bench.resident --judge`: a saved run judged again with this version's targets,
and whether its customers were measured as served ones."""
from __future__ import annotations

import json
import time

from bench import resident
from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine

# the committed runs, of customers loaded with a profile event each and nothing else
UNSERVED = resident.RESULTS / "resident-20261204T061318Z.json"


def test_a_late_generator_leaves_the_p99_ratio_unjudged(capsys):
    # the committed run: its 1,000,000 step's generator fell behind its schedule
    saved = resident.RESULTS / "resident-20261203T193146Z.json"
    assert resident.main(["--judge", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "bytes per customer ≤ 1024: 779 — **met**" in out
    assert "0.114x — **not judged** (the generator fell behind" in out


def test_a_run_of_unserved_customers_is_judged_as_before_but_may_undercount(capsys):
    assert resident.main(["--judge", str(UNSERVED)]) == 0
    out = capsys.readouterr().out
    assert "bytes per customer ≤ 1024: 781 — **met** (-243 bytes) — may undercount: its " \
           "customers had a profile event each and nothing else" in out


def served(tmp_path, row: int):
    """The unserved run's file as a run of served customers would have written it."""
    saved = json.loads(UNSERVED.read_text())
    for p in saved["phases"]:
        p["load"]["impressions"] = p["load"]["events"]
    path = tmp_path / "served.json"
    path.write_text(json.dumps({**saved, "row_bytes": row}))
    return path


def test_a_run_of_served_customers_is_judged_with_no_caveat(capsys, tmp_path):
    assert resident.main(["--judge", str(served(tmp_path, 733))]) == 0
    out = capsys.readouterr().out
    assert "A profile row's arrays: 733 bytes." in out
    assert "bytes per customer ≤ 1024: 781 — **met** (-243 bytes)\n" in out


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
