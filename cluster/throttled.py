"""A warning logged at most once in a while, with how many it held back meanwhile: for what a
peer or a failing dependency can cause on every call (a shard that is down, a client gone
wrong), where one line per call would flood the log and cost more than the call."""
from __future__ import annotations

import logging
import math
import time


class ThrottledWarning:
    """`warn(message, *args)`: logged as a WARNING if `every_s` passed since the last one it
    logged, else counted; the next one logged says how many were held back. Used from one
    event loop (no lock)."""

    def __init__(self, log: logging.Logger, every_s: float):
        self._log, self._every_s = log, every_s
        self._at, self._held = -math.inf, 0

    def warn(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._at < self._every_s:
            self._held += 1
            return
        self._log.warning(f"{message} ({self._held} more since the last, not logged)", *args)
        self._at, self._held = now, 0
