"""Long polls within one event loop: callers wait until what they know is out of date, and
whatever changes it announces the change. The controller's routing table (`get_map`), the
client following it, and the learner's models (`watch`) wait this way."""
from __future__ import annotations

import asyncio
from typing import Callable


class Changes:
    def __init__(self) -> None:
        self._changed = asyncio.Event()  # set, and replaced, at each announcement

    def announce(self) -> None:
        """Wake every waiter: each looks again whether it is done."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Whether `done()` came true (checked now, then after each announcement) before
        `timeout_s` passed."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that races
        # with the awaited event (cpython gh-86296), and a client's close() hung on it.
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True
