"""Group commit for a shard's journal, off the event loop (see host.py), and the syncs' points
that tell a shard's models which learning is durable (core/models.py `take_synced`)."""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from kairos.core.models import ModelTable

from kairos.cluster.storage.store import JournalLike


class Syncs:
    """Group commit off the event loop: one journal fsync at a time, on a thread of its own.
    Whoever asks waits for the first sync that starts after it asked, which covers everything
    written before; meanwhile the shard applies its next rounds. The models of the latest
    write are told when a round they learnt from is written and when a sync starts and ends,
    so model sync sends the learner only learning of rounds a sync made durable."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-sync")
        self._running: asyncio.Future | None = None  # the waiting of the sync running
        self._next: asyncio.Future | None = None  # waiting for the sync after the running one
        self._journal: JournalLike | None = None
        self._models: ModelTable | None = None

    def after_writes(self, journal: JournalLike, models: ModelTable | None = None
                     ) -> asyncio.Future:
        """A future for the first sync that starts from now; `models` learnt from what was
        written."""
        self._journal = journal
        if models is not None:
            models.written()
            self._models = models
        waiting = self._next
        if waiting is None:
            waiting = self._next = asyncio.get_running_loop().create_future()
            if self._running is None:
                self._start()
        return waiting

    async def settled(self) -> None:
        """Once the syncs asked for so far have ended and their waiters were told: a sync's
        thread makes the journal durable (no longer `unsynced`) before the event loop hears
        of it, and whoever waits on the journal alone would go on before they are told."""
        asked = [w for w in (self._running, self._next) if w is not None]
        if asked:  # told in the order they asked: these waiters before this one
            await asyncio.wait(asked)

    def _start(self) -> None:
        waiting, self._next = self._next, None
        self._running = waiting
        models = self._models
        if models is not None:
            models.sync_started()
        syncing = asyncio.get_running_loop().run_in_executor(self._pool, self._journal.sync)
        syncing.add_done_callback(functools.partial(self._finished, waiting, models))

    def _finished(self, waiting: asyncio.Future, models: ModelTable | None,
                  syncing: asyncio.Future) -> None:
        self._running = None
        if syncing.exception() is None:
            waiting.set_result(None)
        else:
            waiting.set_exception(syncing.exception())
        if models is not None:  # a failed sync's round is never taken to the learner
            models.sync_finished(syncing.exception() is None, idle=self._next is None)
        if self._next is not None:
            self._start()

