"""The soak's verdict on threads: gRPC's EventEngine pool may grow with load and then settle;
any other thread, or a pool that keeps adding, is growth."""
from __future__ import annotations

from bench.soak import verdict

# traffic that sent nothing: these tests are about threads (a step's requests with no
# answer would count as unanswered)
STEPS = [{"sent": 0, "kinds": {}, "generator": {"behind": False}}]


def samples(pool: list[int], other: list[int]) -> list[dict]:
    """A run of samples every 10 s; thread names only where they changed, as the sampler
    records them."""
    out, last = [], None
    for i, (p, o) in enumerate(zip(pool, other)):
        names = {"100": {"event_engine": p, "worker": o}}
        sample = {"t_s": 10.0 * i, "processes": 1, "rss_mib": 100.0, "fds": 50,
                  "threads": p + o, "memos": []}
        if names != last:
            sample["thread_names"] = last = names
        out.append(sample)
    return out


def test_a_pool_thread_added_early_and_kept_is_settled():
    run = samples([4] * 5 + [5] * 35, [20] * 40)
    judged = verdict(run, 0.0, STEPS)
    assert judged["checks"]["threads_flat"] and judged["checks"]["grpc_pool_settled"]
    assert judged["held"], judged["checks"]  # nothing else in this run fails


def test_a_pool_that_keeps_adding_is_not_settled():
    run = samples([4 + i // 5 for i in range(40)], [20] * 40)
    checks = verdict(run, 0.0, STEPS)["checks"]
    assert checks["threads_flat"] and not checks["grpc_pool_settled"]


def test_any_other_thread_added_is_growth():
    run = samples([4] * 40, [20] * 20 + [21] * 20)
    checks = verdict(run, 0.0, STEPS)["checks"]
    assert not checks["threads_flat"] and checks["grpc_pool_settled"]


def paced_steps(p99_ms: list[float], starts: list[float] | None) -> list[dict]:
    steps = [{"sent": 600, "offered_rate": 10.0,
              "kinds": {"decide": {"count": 600, "p99_ms": v, "errors": {}, "fallbacks": 0}},
              "generator": {"behind": False}} for v in p99_ms]
    for step, start in zip(steps, starts or []):
        step["started_s"] = start
    return steps


def test_the_pace_check_counts_steps_from_when_they_began():
    # a 60 s step every 200 s (the run paused between them): the slow step began at 400 s,
    # before the warm-up ended at 500 s, though back to back it would seem to start at 180 s
    p99 = [5.0, 5.0, 5.0, 40.0, 6.0]
    run = samples([4] * 70, [20] * 70)
    recorded = verdict(run, 500.0, paced_steps(p99, [0.0, 200.0, 300.0, 400.0, 600.0]))
    assert recorded["p99_worst_ms"] == 6.0
    assert recorded["checks"]["p99_within_3x_first_steps"]
    # files from before the starts were recorded: estimated back to back, 60 s each
    estimated = verdict(run, 150.0, paced_steps(p99, None))
    assert estimated["p99_worst_ms"] == 40.0
    assert not estimated["checks"]["p99_within_3x_first_steps"]


def test_requests_never_answered_count_against_served():
    run = samples([4] * 40, [20] * 40)
    answered = paced_steps([5.0] * 4, None)
    assert verdict(run, 0.0, answered)["checks"]["served"]
    silent = paced_steps([5.0] * 4, None)
    silent[2]["kinds"]["decide"]["count"] = 500  # 100 of its 600 got no answer at all
    judged = verdict(run, 0.0, silent)
    assert not judged["checks"]["served"]
    assert judged["failed"] == 100 and judged["failures"] == {"unanswered": 100}
