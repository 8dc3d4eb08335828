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
    the process at once and leave Ray's processes behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def within(seconds: float, work: Callable[[], T], what: str) -> T:
    """`work()`'s answer, or TimeoutError after `seconds`, for a call that waits with no
    deadline of its own (a Ray actor that never starts, its worker killed by Ray's memory
    monitor). It runs on a daemon thread, which a timed-out call leaves waiting: the
    process can still exit. Signals reach the caller meanwhile."""
    answer: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            answer.set_result(work())
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller)
            answer.set_exception(exc)

    threading.Thread(target=run, name=what, daemon=True).start()
    try:
        return answer.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{what}: no answer in {seconds:g} s") from None
