"""A step starts once every generator process has built its requests: each reports its build
in shared memory (loadgen._started) and the parent, once all have (GeneratorPool._built),
sets the start. One process failing before it reports: the step raises its error at once,
not after BUILD_TIMEOUT_S; the other gives up waiting for a start that will not come, and
the pool runs the next step. Two spawned generators against a gRPC server of their own, no
Ray."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

import pytest

from bench import loadgen
from bench.loadgen import GeneratorPool, Step
from bench.peers.serving import in_process
from tests.bench.servers import Answering

PROMPT_S = 10.0  # far below the generators' BUILD_TIMEOUT_S


class Broken(Exception):
    pass


def failing_first(step: Step, index: int, processes: int, tag: int) -> dict:
    """The generators' step, but process 1 fails before it builds the first step's requests
    (runs in the generator process: the pool submits loadgen._run_step by name)."""
    if index == 1 and tag == 1:
        raise Broken("process 1 could not build its requests")
    return loadgen._run_step(step, index, processes, tag)


@pytest.fixture
def failing(monkeypatch) -> Iterator[tuple[GeneratorPool, Step]]:
    """Two generators whose first step fails in process 1, and a step to run. The parent
    waits PROMPT_S at most for their builds: one that waited for the failed process's would
    raise a TimeoutError, not hang the test."""
    monkeypatch.setattr(loadgen, "_run_step", failing_first)
    monkeypatch.setattr(loadgen, "BUILD_TIMEOUT_S", PROMPT_S)
    pool = GeneratorPool(2)
    generators = pool.pids()
    try:
        with in_process(Answering) as target:
            yield pool, Step(target, "decide", 200.0, 0.0, 0.5, 100)
    finally:
        closed_promptly(pool, generators)


def closed_promptly(pool: GeneratorPool, generators: set[int]) -> bool:
    """Whether the pool closed within PROMPT_S: its processes idle. If not, they are killed,
    so that a process still waiting for a step fails the test instead of hanging it."""
    closing = threading.Thread(target=pool.close, daemon=True)
    closing.start()
    closing.join(PROMPT_S)
    if not closing.is_alive():
        return True
    for pid in generators:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    closing.join()
    return False


def raises_at_once(pool: GeneratorPool, step: Step) -> None:
    started = time.monotonic()
    with pytest.raises(Broken):
        pool.run(step)
    assert time.monotonic() - started < PROMPT_S


@pytest.mark.timeout(120)
def test_a_process_failing_before_its_build_fails_the_step_at_once_and_not_the_next(failing):
    pool, step = failing
    raises_at_once(pool, step)
    started = time.monotonic()
    result = pool.run(step)
    assert time.monotonic() - started < PROMPT_S
    assert result["kinds"]["decide"]["count"] == result["sent"] > 0


@pytest.mark.timeout(120)
def test_the_other_process_gives_the_failed_step_up(failing):
    """It waited for the start until BUILD_TIMEOUT_S (5 minutes), holding the pool's close."""
    pool, step = failing
    raises_at_once(pool, step)
    assert closed_promptly(pool, pool.pids())
