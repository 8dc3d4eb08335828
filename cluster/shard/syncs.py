"""Group commit for a shard's journal, off the event loop (see host.py), and the syncs' points
that tell a shard's models which learning is durable (core/models.py `take_synced`).

Why a thread of its own and not `loop.run_in_executor`: rounds are small under a sparse load,
so nearly every round starts a sync of its own, and the executor's hand-off (a concurrent
Future, a work item, the executor's locks and idle semaphore, a wrapping asyncio Future and
the chaining between them) was a tenth of a shard's GIL-held time at 1,500 events/s. Here a
sync is one tuple put on a queue the thread blocks on, and one `call_soon_threadsafe` back
that tells the sync's waiters. Measured driving Syncs as host.py does, each round a sync of
its own, process CPU time per sync (median of 3, 2-core machine): on a fsynced Journal 311 us
with the executor, 216 us so (wall 464 and 360 us); with a sync that does nothing, 74 and
39 us.
The loop, not the thread, still starts each sync (`_start`): that is the moment its coverage
is fixed for the models (`sync_started`), so a thread that picked up the next sync itself, as
it finished one, would cover rounds the models were not told of."""
from __future__ import annotations

import asyncio
import threading
import weakref
from queue import SimpleQueue

from kairos.core.models import ModelTable

from kairos.cluster.storage.store import JournalLike


class Syncs:
    """Group commit off the event loop: one journal fsync at a time, on a thread of its own.
    Whoever asks waits for the first sync that starts after it asked, which covers everything
    written before; meanwhile the shard applies its next rounds. The models of the latest
    write are told when a round they learnt from is written and when a sync starts and ends,
    so model sync sends the learner only learning of rounds a sync made durable. The thread
    ends once its Syncs is dropped (daemon: it never holds up the process's exit)."""

    def __init__(self, name: str):
        self._asked: SimpleQueue = SimpleQueue()  # the syncs to run, None to end the thread
        threading.Thread(target=_serve, args=(self._asked,), name=f"{name}-sync",
                         daemon=True).start()
        weakref.finalize(self, self._asked.put, None)
        self._running: asyncio.Future | None = None  # the waiting of the sync running
        self._next: asyncio.Future | None = None  # waiting for the sync after the running one
        self._journal: JournalLike | None = None
        self._models: ModelTable | None = None

    def after_writes(self, journal: JournalLike, models: ModelTable | None = None
                     ) -> asyncio.Future:
        """A future for the first sync that starts from now; `models` learnt from what was
        written. The caller's own (a shield of the sync's): one waiter cancelled (a tick's
        `host.run` stopped) must not cancel what the other rounds of its sync wait for, nor
        leave the sync to end on a cancelled future and start no next one."""
        self._journal = journal
        if models is not None:
            models.written()
            self._models = models
        waiting = self._next
        if waiting is None:
            waiting = self._next = asyncio.get_running_loop().create_future()
            if self._running is None:
                self._start()
        return asyncio.shield(waiting)

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
        self._asked.put((asyncio.get_running_loop(), self._journal.sync, self._finished,
                         waiting, models))

    def _finished(self, waiting: asyncio.Future, models: ModelTable | None,
                  failed: Exception | None) -> None:
        self._running = None
        if failed is None:
            waiting.set_result(None)
        else:
            waiting.set_exception(failed)
        if models is not None:  # a failed sync's round is never taken to the learner
            models.sync_finished(failed is None, idle=self._next is None)
        if self._next is not None:
            self._start()


def _serve(asked: SimpleQueue) -> None:
    """The sync thread: run each sync asked for in turn, and have its loop tell its waiters."""
    for loop, sync, finished, waiting, models in iter(asked.get, None):
        failed: Exception | None = None
        try:
            sync()
        except Exception as exc:  # the waiters fail with the journal's own error
            failed = exc
        try:
            loop.call_soon_threadsafe(finished, waiting, models, failed)
        except RuntimeError:  # the loop closed meanwhile: nobody is left to tell
            pass
        # nothing of the Syncs held while the thread waits: dropping the Syncs ends it
        del sync, finished, waiting, models, failed
