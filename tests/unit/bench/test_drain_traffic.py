"""The drain benchmark's traffic figures count a step where no Decide came back as all its
calls failed, not as none, and keep the generators' lag beside the p99 it is part of."""
from __future__ import annotations

from bench.drain import markdown, traffic_seen


def step(sent: int, decide: dict | None = None, first: bool = False, lag_p99_ms: float = 0.5,
         behind: bool = False) -> dict:
    return {"started_at": 0.0, "ended_at": 5.0, "settled_s": 0.1 if first else None,
            "chained": not first, "sent": sent, "kinds": {"decide": decide} if decide else {},
            "generator": {"lag_p99_ms": lag_p99_ms, "behind": behind}}


def test_a_step_where_nothing_came_back_failed_all_it_sent():
    # 98 of 100 answered, one of them an error and one a fallback; then 100 with no answer
    answered = step(100, {"count": 98, "errors": {"UNAVAILABLE": 1}, "fallbacks": 1,
                          "p99_ms": 4.0}, first=True)
    seen = traffic_seen([answered, step(100)])
    assert seen["sent"] == 200 and seen["failed"] == 4 + 100
    assert [s["failed"] for s in seen["steps"]] == [4, 100]
    assert seen["decide_p99_ms"] == 4.0 and seen["steps"][1]["p99_ms"] is None


def test_each_step_says_whether_it_went_on_from_the_last_or_settled_first():
    # settled_s is None both where settling timed out and in a step that went on: chained
    # tells them apart
    seen = traffic_seen([step(100, first=True), step(100), step(100)])
    assert [(s["settled_s"], s["chained"]) for s in seen["steps"]] == [
        (0.1, False), (None, True), (None, True)]


def test_generator_lag_is_kept_per_step_and_a_p99_it_is_in_says_so():
    """The p99 counts from each call's intended send: a step whose generators fell behind
    has their lag in it (review rev45 bench finding 7: the report dropped it)."""
    decide = {"count": 100, "errors": {}, "fallbacks": 0, "p99_ms": 255.0}
    seen = traffic_seen([step(100, decide, first=True), step(100, decide, lag_p99_ms=180.0,
                                                          behind=True)])
    assert [(s["generator_lag_p99_ms"], s["generator_behind"]) for s in seen["steps"]] == [
        (0.5, False), (180.0, True)]
    assert (seen["generator_lag_p99_ms"], seen["generators_behind_steps"]) == (180.0, 1)
    size = {"customers": 1000, "on_drained_node": 500, "drain_s": 6.0, "partitions_moved": 8,
            "customers_per_s": 83.3, **seen}
    text = markdown({"run": "drain-x", "command": "python -m bench.drain",
                     "machine": "2 cores", "sizes": [size], "grace_for": 1000, "grace_s": 90})
    assert "| 255.0 (its step's generators behind) | 180.0 (behind in 1 of 2 steps) |" in text


def test_the_worst_p99_is_marked_by_its_own_steps_generators():
    """The worst p99 came from a step on schedule; another step's generators fell behind:
    the p99 is the system's own, and the lag is marked beside the lag (review rev45 d-bench
    finding 8: the p99 was marked "generators behind in 1 of 2 steps")."""
    seen = traffic_seen([step(100, {"count": 100, "errors": {}, "fallbacks": 0,
                                    "p99_ms": 255.0}, first=True),
                         step(100, {"count": 100, "errors": {}, "fallbacks": 0, "p99_ms": 40.0},
                              lag_p99_ms=30.0, behind=True)])
    assert (seen["decide_p99_ms"], seen["decide_p99_generators_behind"]) == (255.0, False)
    size = {"customers": 1000, "on_drained_node": 500, "drain_s": 6.0, "partitions_moved": 8,
            "customers_per_s": 83.3, **seen}
    text = markdown({"run": "drain-x", "command": "python -m bench.drain",
                     "machine": "2 cores", "sizes": [size], "grace_for": 1000, "grace_s": 90})
    assert "| 255.0 | 30.0 (behind in 1 of 2 steps) | 0 / 200 |" in text
