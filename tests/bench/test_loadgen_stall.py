"""The load generators measure latency from each request's intended send time, so time a
request spent waiting to be sent counts (no coordinated omission). The generator itself is
stalled here (stopped for STALL_S in the middle of a measured window) against a server that
answers at once: the requests due during the stall leave late, their latency carries the
stall, their service time (from when they left) does not. Were latency timed from the actual
send, the two would be alike. No Ray: a gRPC server in a process of its own."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.loadgen import START_DELAY_S, GeneratorPool, Step
from bench.peers.serving import in_process
from tests.bench.servers import Answering, Slow

STALL_S = 0.5
RATE, WARMUP_S, MEASURE_S = 200.0, 0.5, 3.0


def stall(pids: set[int], seconds: float) -> None:
    """Stop the processes for `seconds`: their event loops send nothing and read nothing.
    Every one is let go on the way out, whatever failed (a worker left stopped would hang the
    pool's close)."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def stalled_traffic(pool: GeneratorPool, step: Step) -> dict:
    """Traffic of one step: its schedule is known once it starts, so the stall falls half a
    second into its measured window."""
    traffic = pool.traffic(step, 1)
    time.sleep(max(traffic.measured_at + 0.5 - time.time(), 0.0))
    stall(pool.pids(), STALL_S)
    (result,) = traffic.results()
    return result


def stalled_run(pool: GeneratorPool, step: Step) -> dict:
    """A sweep's step (bench.load): it settles first (a few ms against this server), so the
    stall falls about half a second into its measured window."""
    with ThreadPoolExecutor(1) as runner:
        running = runner.submit(pool.run, step)
        time.sleep(START_DELAY_S + WARMUP_S + 0.5)
        stall(pool.pids(), STALL_S)
        return running.result()


@pytest.mark.parametrize("stalled", [stalled_traffic, stalled_run])
def test_a_stalled_generator_shows_the_stall_in_latency_not_in_service_time(stalled):
    pool = GeneratorPool(1)
    try:
        with in_process(Answering) as target:
            step = stalled(pool, Step(target, "decide", RATE, WARMUP_S, MEASURE_S, 100))
    finally:
        pool.close()
    decide, stall_ms = step["kinds"]["decide"], STALL_S * 1e3
    # a sixth of the measured requests were due during the stall, waiting up to all of it:
    # the p99 is one of the longest waits, the p90 one of about 0.4 of it
    assert decide["p99_ms"] >= stall_ms / 2, decide
    assert decide["p90_ms"] >= stall_ms / 5, decide
    # only those in flight when it began waited on the server's side of the stall: few, but
    # on a loaded machine more than 1 % (a server 35 ms behind at 200/s), so the p99 may be
    # one of them; not 10 %
    assert decide["service_p90_ms"] <= decide["p90_ms"] / 2, decide
    assert step["generator"]["behind"] and step["generator"]["lag_max_ms"] >= stall_ms / 2


def test_a_generator_stalled_past_a_step_end_loses_no_answer():
    # stalled 1.5 s into the first of two steps, for longer than the rest of it: the requests
    # due in the stall leave past the step's end, all at once, and are answered half a second
    # after they leave, past the step's end + DEADLINE_S + ANSWER_GRACE_S; the step waits
    pool = GeneratorPool(1)
    try:
        with in_process(Slow, 0.5) as target:
            traffic = pool.traffic(Step(target, "decide", RATE, 0.0, 2.0, 1000), 2)
            time.sleep(max(traffic.measured_at + 1.5 - time.time(), 0.0))
            stall(pool.pids(), 2.7)
            steps = traffic.results()
    finally:
        pool.close()
    for step in steps:
        decide = step["kinds"]["decide"]
        assert decide["count"] == step["sent"] > 0, step
        # only those in flight when the stall began may fail: their deadline passed in it
        assert sum(decide["errors"].values()) <= RATE * 0.5 * 2, decide
        assert decide["max_ms"] >= 2_000, decide  # the stall's own requests are counted
