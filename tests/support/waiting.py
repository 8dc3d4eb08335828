"""Waiting on a condition with a deadline, in place of sleeping and hoping: the wait ends as soon
as the condition holds (polled every few milliseconds, so the suite pays only for what it
waits on), and a condition that never holds fails the test naming what it waited for and the
condition's last value."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

T = TypeVar("T")

POLL_S = 0.01


def wait_until(condition: Callable[[], T], timeout_s: float, what: str,
               poll_s: float = POLL_S) -> T:
    """`condition()` once it is truthy (its value), polled until `timeout_s` has passed; then
    AssertionError naming `what`. An exception from `condition` counts as not yet: the last
    one is reported."""
    poll = _Poll(condition, timeout_s, what)
    while not (value := poll()):
        time.sleep(poll_s)
    return value


async def until(condition: Callable[[], T], timeout_s: float, what: str,
                poll_s: float = POLL_S) -> T:
    """wait_until on an event loop: the loop runs between polls (poll_s=0: every turn)."""
    poll = _Poll(condition, timeout_s, what)
    while not (value := poll()):
        await asyncio.sleep(poll_s)
    return value


class _Poll:
    """One look at the condition per call: its value, or None while it does not hold yet;
    past the deadline, AssertionError with what was waited for and the last value seen."""

    def __init__(self, condition: Callable[[], T], timeout_s: float, what: str):
        self.condition = condition
        self.timeout_s = timeout_s
        self.what = what
        self.deadline = time.monotonic() + timeout_s

    def __call__(self) -> T | None:
        try:
            value, error = self.condition(), None
        except Exception as exc:
            value, error = None, exc
        if value:
            return value
        if time.monotonic() >= self.deadline:
            last = f"last raised {error!r}" if error is not None else f"last value {value!r}"
            raise AssertionError(f"timed out after {self.timeout_s:g} s waiting for "
                                 f"{self.what} ({last})")
        return None
