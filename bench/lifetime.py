"""Helper processes must not outlive the run, and the run must not hang.

The run cleans up after itself when it ends or is interrupted (Ctrl-C, or SIGTERM once
`exit_on_sigterm` is called), but its process can also die without unwinding: Ray aborts a
driver whose cluster vanished (a `ray stop` elsewhere on the machine stops every local Ray).
Load generators and peer servers then watch their parent and exit when it is gone.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")

PARENT_POLL_S = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """Exit this process (at once, without cleanup) once `parent_pid` is no longer its parent."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (exit status 143), so every server, generator and Ray node
    the run started is stopped by the `finally`s on the way out; Python's default would end
    the process at once and leave Ray's processes behind. Each Ray node started here and
    ray.init put their own handlers in its place (exit status 1, 15): systems.ray_nodes sets
    it again after each."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Abandoned(TimeoutError):
    """`within`'s timeout: `work` still runs on `thread`, which the caller may wait for once
    it has stopped what the work waits on."""

    def __init__(self, message: str, thread: threading.Thread):
        super().__init__(message)
        self.thread = thread


def within(seconds: float, work: Callable[[], T], what: str) -> T:
    """`work()`'s answer, or Abandoned (a TimeoutError) after `seconds`, for a call that waits
    with no deadline of its own (a Ray actor that never starts, its worker killed by Ray's
    memory monitor). It runs on a daemon thread, which a timed-out call leaves waiting: the
    process can still exit. Signals reach the caller meanwhile."""
    answer: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            answer.set_result(work())
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller)
            answer.set_exception(exc)

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    try:
        return answer.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise Abandoned(f"{what}: no answer in {seconds:g} s", thread) from None
