"""A sync's thread makes the journal durable before the event loop hears of it, so a journal no
longer `unsynced` does not mean its rounds were answered (nor their pushes sent): `settled`
waits for the waiters of the syncs asked for so far, running or queued, to be told first."""
from __future__ import annotations

import asyncio
import threading

from kairos.cluster.shard.syncs import Syncs


class Journal:
    """Syncs when let; `unsynced` ends on the sync's thread, as a file journal's does."""

    def __init__(self) -> None:
        self.unsynced = True
        self.go, self.synced = threading.Event(), threading.Event()

    def sync(self) -> None:
        assert self.go.wait(5)
        self.unsynced = False
        self.synced.set()


def test_settled_waits_for_the_rounds_of_syncs_whose_threads_are_done():
    async def main() -> list[str]:
        syncs, journal, told = Syncs("t"), Journal(), []
        syncs.after_writes(journal).add_done_callback(lambda _: told.append("running"))
        await asyncio.sleep(0)
        # a round written while the first sync runs waits for the next one
        syncs.after_writes(journal).add_done_callback(lambda _: told.append("queued"))
        journal.go.set()
        assert journal.synced.wait(5)  # the loop held: the thread is done, nobody told yet
        assert not journal.unsynced and told == []
        await syncs.settled()
        told.append("settled")
        return told
    assert asyncio.run(main()) == ["running", "queued", "settled"]


def test_settled_with_no_sync_asked_for_does_not_wait():
    async def main() -> None:
        await asyncio.wait_for(Syncs("t").settled(), 1)
    asyncio.run(main())
