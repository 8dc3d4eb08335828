"""Verdicts a Kairos that mostly fails, or whose figures leave a cost out, must not earn (review
rev45 bench findings 1-4 and 6, its fabricated cases): the load report's targets and the
overload verdict."""
from __future__ import annotations

import json

import pytest

from bench import overload
from bench.report import markdown, targets
from bench.sweep import holds

P99_CORE = "Decide p99 ÷ redis-core's (same decision work), the worst rate both ran"
P50_FLOOR = "Decide p50 ÷ floor-grpc p50 (the gRPC call Kairos's path makes), same rate"
BATCH_CPU = "Ingest server CPU per event applied, IngestBatch, re-evaluated (µs)"
CORE_CPU = "Decide server CPU per request served ÷ redis-core's, same rate"


def step(rate: float, p50: float, p99: float, served_p99: float, count: int = 2500,
         errors: dict | None = None, fallbacks: int = 0, sent: int | None = None,
         cpu_s: float = 2.0, kind: str = "decide") -> dict:
    """A 10 s step that answered `count` of what it `sent` (all, unless said), `errors` and
    `fallbacks` among them; `served_p99` is the p99 of those served."""
    errors = errors or {}
    s = {"op": kind, "rate_target": rate, "sent": count if sent is None else sent,
         "server_cpu_s": cpu_s, "cpu_us_per_request": cpu_s / count * 1e6, "settled_s": 0.0,
         "generator": {"behind": False, "lag_p99_ms": 0.5},
         "kinds": {kind: {"count": count, "ok": count - sum(errors.values()),
                          "rate": count / 10, "p50_ms": p50, "p90_ms": p99, "p99_ms": p99,
                          "p99_9_ms": p99, "max_ms": p99, "admitted_p99_ms": served_p99,
                          "errors": errors, "fallbacks": fallbacks}}}
    s["holds"] = holds(s, kind)
    return s


def sweep(*steps: dict, kind: str = "decide") -> dict:
    return {"op": kind, "kind": kind, "steps": list(steps)}


def judged(systems: dict, batch: dict | None = None, accounting: int | None = 2) -> dict:
    results = {"systems": systems, "ingest": {}, "batch": batch or {}, "push": {}}
    if accounting is not None:
        results["cpu_accounting"] = accounting
    return {t["target"]: t for t in targets(results) if t["system"] == "kairos-1node"}


def report_of(systems: dict, batch: dict, accounting: int | None = 2) -> dict:
    """A saved run of these sweeps, its targets judged, for markdown."""
    results = {"systems": systems, "ingest": {}, "batch": batch, "push": {}, "journey": {},
               "populate": {}, "ray_call": {}, "layout": {}, "failures": [], "run": "load-x",
               "command": "python -m bench.load", "seconds": 1.0,
               "machine": {"platform": "Linux", "cpus": 2, "ray": "2"},
               "plan": {"customers": 10, "generators": 2, "measure_s": 10.0, "warmup_s": 1.0}}
    if accounting is not None:
        results["cpu_accounting"] = accounting
    return {**results, "targets": targets(results)}


# Kairos at 250/s beside redis-core serving all 2,500 at p99 5 ms: how ours failed, what it
# served at p99 3 ms. Fallbacks come at the 1 s deadline.
MOSTLY_FAILING = [
    pytest.param({"fallbacks": 2400}, 2500, id="fell back"),
    pytest.param({"errors": {"RESOURCE_EXHAUSTED": 2400}}, 2500, id="refused"),
    pytest.param({}, 2500, id="unanswered"),  # 100 answered of 2,500 sent
]


@pytest.mark.parametrize("failing,sent", MOSTLY_FAILING)
def test_a_kairos_that_mostly_fails_does_not_meet_the_same_work_p99(failing, sent):
    count = 100 if not failing else 2500
    ours = step(250, 1000.0, 1000.0, 3.0, count=count, sent=sent, **failing)
    check = judged({"kairos-1node": sweep(ours),
                    "redis-core": sweep(step(250, 2.0, 5.0, 5.0))})[P99_CORE]
    # failures ranked slowest: the p99 of every Decide sent is a failure's, no finite figure
    assert (check["value"], check["met"]) == (None, False)
    assert check["note"] == "over the error budget at 250/s"


def test_the_same_work_p99_is_met_within_the_error_budget():
    ours = step(250, 1.0, 4.0, 3.0, errors={"RESOURCE_EXHAUSTED": 2})  # 0.08 % refused
    check = judged({"kairos-1node": sweep(ours),
                    "redis-core": sweep(step(250, 2.0, 5.0, 5.0))})[P99_CORE]
    assert (check["value"], check["met"]) == (pytest.approx(0.6), True)


# The peer past its capacity at 1,000/s: 750 of 10,000 DEADLINE_EXCEEDED, served p99 900 ms
PEER_BROKE = step(1000, 300.0, 1000.0, 900.0, count=10_000, errors={"DEADLINE_EXCEEDED": 750})


def test_the_same_work_p99_is_not_failed_where_the_peer_broke_the_error_budget_too():
    """Review rev45 d-bench finding 4 (case E): at 1,000/s ours shed 0.3 % and served at p99
    8 ms where the peer broke the budget too, at 900 ms: no miss of ours there; at 250/s both
    kept to the budget, ours at 4 ms to its 5. With the peer at 1,000/s alone, nothing is
    compared (its failures once scored the rate 0.0, and met: a peer that failed every
    request passed any Kairos)."""
    ours = sweep(step(250, 2.0, 4.0, 4.0),
                 step(1000, 3.0, 8.0, 8.0, count=10_000, errors={"RESOURCE_EXHAUSTED": 30}))
    check = judged({"kairos-1node": ours,
                    "redis-core": sweep(step(250, 2.0, 5.0, 5.0), PEER_BROKE)})[P99_CORE]
    assert (check["value"], check["rate"], check["met"]) == (pytest.approx(0.8), 250, True)
    assert check["note"] == "redis-core failed 1 % or more at 1,000/s: not compared there"
    alone = judged({"kairos-1node": ours, "redis-core": sweep(PEER_BROKE)})[P99_CORE]
    assert (alone["value"], alone["rate"], alone["met"], alone["note"]) == (
        None, None, None, "redis-core failed 1 % or more at every rate both ran")


def test_the_same_work_p99_counts_a_rate_where_the_peer_lost_a_few_calls():
    """Review rev45 d-bench2 finding 1 (case H): at 1,000/s the peer lost 20 of 10,000 calls
    (past the 0.1 % budget) and served the rest at p99 7 ms, ours all at 60 ms: leaving that
    rate out passed a Kairos 8.6 times slower."""
    ours = sweep(step(250, 2.0, 4.0, 4.0), step(1000, 20.0, 60.0, 60.0, count=10_000))
    peer = sweep(step(250, 2.0, 5.0, 5.0),
                 step(1000, 3.0, 7.0, 7.0, count=10_000, errors={"DEADLINE_EXCEEDED": 20}))
    check = judged({"kairos-1node": ours, "redis-core": peer})[P99_CORE]
    assert (check["value"], check["rate"], check["met"]) == (pytest.approx(60 / 7), 1000,
                                                             False)


def test_a_miss_of_the_same_work_p99_says_why_in_its_row():
    ours = step(250, 1000.0, 1000.0, 3.0, errors={"RESOURCE_EXHAUSTED": 2400})
    systems = {"kairos-1node": sweep(ours), "redis-core": sweep(step(250, 2.0, 5.0, 5.0))}
    assert (f"| {P99_CORE} | kairos-1node | — | 250 | < 1 | **no** (over the error budget "
            "at 250/s) |") in markdown(report_of(systems, {}))


def test_cpu_per_request_served_is_judged_where_both_kept_to_the_error_budget():
    """Review rev45 d-bench finding 5 (case F): both spent 400 µs per request, and the peer
    lost half its calls to the deadline, so per request served it spent twice ours. Judged
    at the next rate both kept to the budget, or not at all."""
    peer_broke = step(250, 5.0, 1000.0, 900.0, errors={"DEADLINE_EXCEEDED": 1250}, cpu_s=1.0)
    ours = step(250, 3.0, 12.0, 12.0, cpu_s=1.0)
    alone = judged({"kairos-1node": sweep(ours), "redis-core": sweep(peer_broke)})[CORE_CPU]
    assert (alone["value"], alone["rate"], alone["met"]) == (None, None, None)
    assert alone["note"] == "redis-core kept to the error budget at no rate both ran"
    later = judged({"kairos-1node": sweep(ours, step(500, 3.0, 12.0, 12.0, cpu_s=2.0)),
                    "redis-core": sweep(peer_broke, step(500, 3.0, 12.0, 12.0, cpu_s=2.0))}
                   )[CORE_CPU]
    assert (later["value"], later["rate"], later["met"]) == (1.0, 500, False)


def test_a_run_from_before_the_batch_sweep_is_judged_again():
    """load-20261123T031155Z and 033654Z have no "batch" section: --judge raised KeyError."""
    systems = {"kairos-1node": sweep(step(250, 2.0, 5.0, 5.0))}
    saved = report_of(systems, {})
    del saved["batch"], saved["targets"]
    assert "## Targets" in markdown({**saved, "targets": targets(saved)})


@pytest.mark.parametrize("refused,met", [(2400, False), (2, True)])
def test_the_p50_against_the_floor_does_not_count_fast_refusals(refused, met):
    """Neither held a rate (p99 over 10 ms): at 250/s the floor served all at p50 3 ms; ours
    refused `refused` in 1 ms and served the rest at 40 ms (p50 1 ms where it mostly
    refused)."""
    ours = step(250, 1.0, 40.0, 40.0, errors={"RESOURCE_EXHAUSTED": refused}, cpu_s=1.0)
    check = judged({"kairos-1node": sweep(ours),
                    "floor-grpc": sweep(step(250, 3.0, 12.0, 12.0, cpu_s=1.0))})[P50_FLOOR]
    assert (check["value"], check["rate"], check["met"]) == (pytest.approx(1 / 3), 250, met)


def batch_step(window_cpu_s: float, deferred_us: float | None) -> dict:
    """An IngestBatch step of 50,000 events served at 5,000/s; the snapshot of what it
    dirtied, settled after its window, cost `deferred_us` per event (None: a run before
    the settle)."""
    s = step(5000, 5.0, 9.0, 9.0, count=50_000, cpu_s=window_cpu_s, kind="event")
    if deferred_us is not None:
        s["deferred"] = {"server_cpu_s": deferred_us * 0.05, "cpu_us_per_write": deferred_us,
                         "seconds": 12.0, "dirty_partitions": 4096, "partitions": 4096,
                         "customers": 50_000}
    return s


@pytest.mark.parametrize("deferred_us,value,met", [(200.0, 230.0, False), (5.0, 35.0, True),
                                                   (None, 30.0, True)])
def test_ingest_cpu_per_event_counts_the_snapshot_the_step_caused(deferred_us, value, met):
    """30 µs per event in the window (1.5 s over 50,000) and the snapshot after it."""
    systems = {"kairos-1node": sweep(step(250, 2.0, 5.0, 5.0))}
    batch = {"kairos-1node": sweep(batch_step(1.5, deferred_us), kind="event")}
    check = judged(systems, batch)[BATCH_CPU]
    assert (check["value"], check["met"]) == (value, met)
    text = markdown(report_of(systems, batch))
    parts = f" (30 in the window + {deferred_us:g} snapshotting after it)" if deferred_us \
        else ""
    assert f"| {BATCH_CPU} | kairos-1node | {value:g}{parts} | 5,000 |" in text


@pytest.mark.parametrize("accounting,met", [(2, True), (None, None), (1, None)])
def test_cpu_counted_the_old_way_cannot_meet_an_at_most_target(accounting, met):
    """Server CPU counted before `"cpu_accounting": 2` missed processes born and reaped
    between samples: a lower bound. Under the target it says nothing; over it, a miss."""
    systems = {"kairos-1node": sweep(step(250, 1.0, 4.0, 4.0, cpu_s=0.5)),
               "redis-core": sweep(step(250, 1.0, 4.0, 4.0, cpu_s=2.0))}
    checks = judged(systems, {"kairos-1node": sweep(batch_step(1.5, None), kind="event")},
                    accounting)
    assert (checks[CORE_CPU]["value"], checks[CORE_CPU]["met"]) == (0.25, met)
    assert checks[BATCH_CPU]["met"] is met


@pytest.mark.parametrize("ours_cpu_s", [0.5, 6.0])
def test_a_ratio_of_cpu_counted_the_old_way_is_no_bound_and_judges_nothing(ours_cpu_s):
    """Both figures lower bounds: their ratio bounds nothing, under the target or over it
    (review rev45 d-bench finding 6: it was labelled "≥" and judged a miss over it)."""
    systems = {"kairos-1node": sweep(step(250, 1.0, 4.0, 4.0, cpu_s=ours_cpu_s)),
               "redis-core": sweep(step(250, 1.0, 4.0, 4.0, cpu_s=2.0))}
    check = judged(systems, accounting=None)[CORE_CPU]
    assert (check["met"], check["lower_bound"]) == (None, False)
    assert check["note"] == "older accounting, not comparable"
    text = markdown(report_of(systems, {}, accounting=None))
    assert (f"| {CORE_CPU} | kairos-1node | {ours_cpu_s / 2:g} | 250 | ≤ 0.5 | not judged "
            "(older accounting, not comparable) |") in text
    assert "redis not run), 1 not judged (older accounting, not comparable)." \
        in text


def test_cpu_counted_the_old_way_still_misses_over_the_target():
    systems = {"kairos-1node": sweep(step(250, 1.0, 4.0, 4.0))}
    checks = judged(systems, {"kairos-1node": sweep(batch_step(5.0, None), kind="event")},
                    accounting=None)
    assert (checks[BATCH_CPU]["value"], checks[BATCH_CPU]["met"]) == (100.0, False)


def ostep(rate: float, admitted_p99: float, ok: int, refused: int = 0,
          behind: bool = False, other: dict | None = None, unanswered: int = 0) -> dict:
    """An overload-harness step: `ok` admitted at p99 `admitted_p99`, `refused` refused
    RESOURCE_EXHAUSTED at the same p99, `other` errors, and `unanswered` sent but never
    answered."""
    errors = {"RESOURCE_EXHAUSTED": refused} if refused else {}
    errors.update(other or {})
    count = ok + sum(errors.values())
    return {"op": "decide", "rate_target": rate, "sent": count + unanswered,
            "offered_rate": rate, "generator": {"behind": behind},
            "kinds": {"decide": {"count": count, "ok": ok + refused, "fallbacks": 0,
                                 "errors": errors, "admitted_p99_ms": admitted_p99,
                                 "p99_ms": admitted_p99, "refused_p99_ms": admitted_p99,
                                 "refused_max_ms": admitted_p99}}}


# (nominal p99, nominal behind, overload behind, held): a 3x step admitting at p99 300 ms,
# refusing as fast, keeps within 2x a nominal of 160 ms, which did not hold its rate
OVERLOAD = [
    (160.0, True, False, None),  # overload-20261203T042509Z's nominal
    (160.0, False, False, None),
    (10.111, False, False, None),  # overload-20261204T053425Z's: over 10 ms
    (9.0, True, False, None),
    (9.0, False, True, None),
    (9.0, False, False, False),  # judged: 300 ms is over 18
]


@pytest.mark.parametrize("nominal_p99,nominal_behind,overload_behind,held", OVERLOAD)
def test_overload_is_not_judged_on_a_nominal_step_that_did_not_hold(
        nominal_p99, nominal_behind, overload_behind, held):
    v = overload.verdict(ostep(250, nominal_p99, 2500, behind=nominal_behind),
                         ostep(750, 300.0, 2500, 5000, behind=overload_behind))
    assert v["held"] is held
    assert bool(v["not_judged"]) is (held is None)


def test_overload_holds_where_every_check_passed_on_schedule():
    v = overload.verdict(ostep(250, 9.0, 2500), ostep(750, 15.0, 2500, 5000))
    assert (v["held"], v["not_judged"]) == (True, [])
    assert all(v["checks"].values())


# a 3x step whose generators fell behind (so its latencies judge nothing), failing what no
# generator's lag explains: a call's deadline runs from its actual send
LAG_FREE_FAILURES = [
    pytest.param({"other": {"INTERNAL": 2000}, "unanswered": 3000}, id="case G"),
    pytest.param({"other": {"DEADLINE_EXCEEDED": 1242}}, id="overload-20261202T222036Z"),
    pytest.param({"unanswered": 10}, id="unanswered"),
]


@pytest.mark.parametrize("failing", LAG_FREE_FAILURES)
def test_overload_fails_on_what_lag_cannot_explain_even_when_not_judged(failing):
    """Review rev45 d-bench finding 1: such a step read "not judged", not "NOT held"."""
    v = overload.verdict(ostep(250, 7.0, 2500),
                         ostep(750, 2500.0, 1000, 1500, behind=True, **failing))
    assert v["held"] is False
    assert v["not_judged"] == ["the overload step's generators fell behind their schedule"]
    text = overload.markdown({"run": "overload-x", "command": "python -m bench.overload",
                              "held_rate": 250.0, "search": None, "customers": 10,
                              "shards": 2, "nominal": ostep(250, 7.0, 2500),
                              "overload": ostep(750, 2500.0, 1000, 1500, behind=True,
                                                **failing), "verdict": v})
    assert "**Verdict: NOT held**" in text
    assert ("Its latency checks judge nothing: the overload step's generators fell behind "
            "their schedule.") in text


def test_overload_judges_a_saved_run_again(tmp_path, capsys):
    saved = {"run": "overload-x", "command": "python -m bench.overload", "held_rate": 250.0,
             "search": None, "customers": 10, "shards": 2,
             "nominal": ostep(250, 160.0, 2500, behind=True),
             "overload": ostep(750, 300.0, 2500, 5000),
             "verdict": {"held": True}}  # as judged when it ran
    path = tmp_path / "overload-x.json"
    path.write_text(json.dumps(saved))
    assert overload.main(["--judge", str(path)]) == 0
    text = capsys.readouterr().out
    assert ("**Verdict: not judged (the nominal step did not hold its rate (p99 160 ms "
            "against 10, 0 of 2500 failed against a budget of 0.1%); the nominal step's "
            "generators fell behind their schedule)**") in text
    assert json.loads(path.read_text()) == saved  # left as it was


def test_a_rate_where_only_ours_broke_the_error_budget_is_a_miss_whatever_rate_is_judged():
    """Review rev45 d-bench2 finding 2 (case M): ours refused 2 % at 250/s, where the peer kept
    to the budget, and kept to it at 500/s: judged at 500 it looked met, with no word of 250."""
    ours = sweep(step(250, 1.0, 3.0, 3.0, errors={"RESOURCE_EXHAUSTED": 50}, cpu_s=1.0),
                 step(500, 1.2, 4.0, 4.0, count=5000, cpu_s=1.0))
    peer = sweep(step(250, 1.0, 3.0, 3.0, cpu_s=1.0), step(500, 1.0, 3.0, 3.0, count=5000,
                                                             cpu_s=1.0))
    check = judged({"kairos-1node": ours, "redis-core": peer})[CORE_CPU]
    assert (check["rate"], check["met"], check["note"]) == (500, False,
                                                            "over the error budget at 250/s")


@pytest.mark.parametrize("ours_failed, peer_failed, expected", [
    (5000, 20, (None, False)),  # review rev45 d-bench3 N1: ours shed half, the peer 0.2 %
    (10_000, 20, (None, False)),  # N2: ours served nothing where the peer served 99.8 %
    (0, 5000, (0.8, True)),  # N4: the peer shed half: its p99 is no bar; ours at 250/s is
])
def test_the_same_work_p99_ranks_failures_slowest(ours_failed, peer_failed, expected):
    ours = sweep(step(250, 2.0, 4.0, 4.0), step(1000, 3.0, 9.0, 6.0, count=10_000,
                                                  errors={"RESOURCE_EXHAUSTED": ours_failed}))
    peer = sweep(step(250, 2.0, 5.0, 5.0), step(1000, 2.0, 4.0, 4.0, count=10_000,
                                                  errors={"DEADLINE_EXCEEDED": peer_failed}))
    check = judged({"kairos-1node": ours, "redis-core": peer})[P99_CORE]
    assert (check["value"], check["met"]) == expected


def test_a_rate_above_the_one_judged_where_only_ours_broke_the_budget_is_not_a_cost_miss():
    """Review rev45 d-bench3 N7: held at 250 and 500/s, 0.2 % shed at 1,000/s where the floor
    shed nothing: a shortfall of the rate held (its own target), not of the p50 or CPU at 500."""
    ours = sweep(step(250, 1.1, 3.0, 3.0, cpu_s=1.0), step(500, 1.1, 3.0, 3.0, count=5000,
                                                            cpu_s=1.0),
                 step(1000, 1.5, 30.0, 30.0, count=10_000, errors={"RESOURCE_EXHAUSTED": 20},
                      cpu_s=2.0))
    peer = sweep(step(250, 1.0, 3.0, 3.0, cpu_s=1.0), step(500, 1.0, 3.0, 3.0, count=5000,
                                                            cpu_s=1.0),
                 step(1000, 1.0, 3.0, 3.0, count=10_000, cpu_s=2.0))
    check = judged({"kairos-1node": ours, "redis-core": peer})[CORE_CPU]
    assert (check["rate"], check["met"]) == (500, False)  # 1.0 > 0.5: missed on its value
    assert check["note"] is None
