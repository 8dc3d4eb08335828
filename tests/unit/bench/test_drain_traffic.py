"""The drain benchmark's traffic figures count a step where no Decide came back as all its
calls failed, not as none."""
from __future__ import annotations

from bench.drain import traffic_seen


def step(sent: int, decide: dict | None = None, first: bool = False) -> dict:
    return {"started_at": 0.0, "ended_at": 5.0, "settled_s": 0.1 if first else None,
            "chained": not first, "sent": sent, "kinds": {"decide": decide} if decide else {}}


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
