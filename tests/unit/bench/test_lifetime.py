"""The benches neither hang on a start that never answers nor leave their processes behind
when terminated (bench/lifetime.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from bench import lifetime, resident, systems


def test_within_answers_raises_or_gives_up_after_its_seconds():
    assert lifetime.within(5.0, lambda: 7, "answer") == 7
    with pytest.raises(KeyError):
        lifetime.within(5.0, lambda: {}["missing"], "raises")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="hangs: no answer in 0.2 s"):
        lifetime.within(0.2, threading.Event().wait, "hangs")
    assert time.monotonic() - started < 2.0


@pytest.mark.timeout(30)  # without the deadline the start waits for good
def test_a_runtime_start_that_never_answers_fails_the_phase_and_is_stopped(monkeypatch):
    """Ray's memory monitor killing the controller's workers left runtime.start waiting
    forever: the start now fails after START_TIMEOUT_S, and what it started is stopped. The
    start keeps waiting on its thread until then; stopped, its wait fails and it stops what
    it started, by name: that is over before the phase ends (the next one's actors would
    be stopped)."""
    stopped, ended = threading.Event(), []

    def start(**_) -> None:
        stopped.wait()
        time.sleep(0.3)  # the start's own stop, after its wait failed
        ended.append(True)

    monkeypatch.setattr(systems, "START_TIMEOUT_S", 0.2)
    monkeypatch.setattr(systems.runtime, "start", start)
    monkeypatch.setattr(systems.runtime, "stop", stopped.set)
    with pytest.raises(TimeoutError, match="runtime.start"):
        with systems.kairos(2, 10):
            pass
    assert stopped.is_set() and ended == [True]


def test_sigterm_unwinds_the_run():
    """Terminated, a bench runs its `finally`s (where its servers and Ray nodes stop) and
    exits 143."""
    code = ("import time; from bench.lifetime import exit_on_sigterm\n"
            "exit_on_sigterm()\n"
            "try:\n    print('ready', flush=True); time.sleep(30)\n"
            "finally:\n    print('cleaned up', flush=True)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
        assert proc.stdout.read() == "cleaned up\n"


def test_the_resident_bench_unwinds_on_sigterm(monkeypatch):
    """bench.resident has load's handler: it is set before anything is started."""
    seen = []

    def pool(processes: int) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise RuntimeError("stop here")

    monkeypatch.setattr(resident, "GeneratorPool", pool)
    monkeypatch.setenv("KAIROS_RESIDENT_LIMIT", "0")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            resident.main(["--smoke"])
    finally:
        signal.signal(signal.SIGTERM, before)
    with pytest.raises(SystemExit) as exited:
        seen[0](signal.SIGTERM, None)
    assert exited.value.code == 143
