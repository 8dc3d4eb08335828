"""The soak's verdict on threads: gRPC's EventEngine pool may grow with load and then settle;
any other thread, or a pool that keeps adding, is growth."""
from __future__ import annotations

from bench.soak import verdict

STEPS = [{"sent": 1000, "kinds": {}, "generator": {"behind": False}}]


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
    checks = verdict(run, 0.0, STEPS)["checks"]
    assert checks["threads_flat"] and checks["grpc_pool_settled"]


def test_a_pool_that_keeps_adding_is_not_settled():
    run = samples([4 + i // 5 for i in range(40)], [20] * 40)
    checks = verdict(run, 0.0, STEPS)["checks"]
    assert checks["threads_flat"] and not checks["grpc_pool_settled"]


def test_any_other_thread_added_is_growth():
    run = samples([4] * 40, [20] * 20 + [21] * 20)
    checks = verdict(run, 0.0, STEPS)["checks"]
    assert not checks["threads_flat"] and checks["grpc_pool_settled"]
