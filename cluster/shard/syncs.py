"""Group commit for a shard's journal, off the event loop (see host.py)."""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from kairos.cluster.storage.store import JournalLike


class Syncs:
    """Group commit off the event loop: one journal fsync at a time, on a thread of its own.
    Whoever asks waits for the first sync that starts after it asked, which covers everything
    written before; meanwhile the shard applies its next rounds."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-sync")
        self._running = False
        self._next: asyncio.Future | None = None  # waiting for the sync after the running one
        self._journal: JournalLike | None = None

    def after_writes(self, journal: JournalLike) -> asyncio.Future:
        self._journal = journal
        waiting = self._next
        if waiting is None:
            waiting = self._next = asyncio.get_running_loop().create_future()
            if not self._running:
                self._start()
        return waiting

    def _start(self) -> None:
        waiting, self._next = self._next, None
        self._running = True
        syncing = asyncio.get_running_loop().run_in_executor(self._pool, self._journal.sync)
        syncing.add_done_callback(functools.partial(self._finished, waiting))

    def _finished(self, waiting: asyncio.Future, syncing: asyncio.Future) -> None:
        self._running = False
        if syncing.exception() is None:
            waiting.set_result(None)
        else:
            waiting.set_exception(syncing.exception())
        if self._next is not None:
            self._start()

