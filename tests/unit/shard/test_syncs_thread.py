"""Syncs on a thread of its own (syncs.py): on a real fsynced Journal, a round written while a
sync runs is told by the next sync, which covers it; a failed fsync fails exactly its sync's
waiters, and the next sync fails as the journal then refuses; the thread ends once its Syncs
is dropped, and never holds up the process's exit, even stuck in an fsync. A caller cancelled
holds up neither its sync's other waiters nor the next sync; `settled` returns only once an
ended sync's waiters' callbacks ran; a sync or a hook that raises anything leaves Syncs going."""
from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading

import pytest

from kairos.cluster.shard.syncs import Syncs
from kairos.cluster.storage.journal import Journal

from tests.support.faults import fsync_fails_once

RECORD = [{"event": "app_open"}]


class GatedJournal(Journal):
    """A real fsynced journal whose syncs, once they fsynced (or failed to), wait to be let go
    before they return; `covered`: the LSN each sync left synced."""

    def __init__(self, directory) -> None:
        super().__init__(directory, "fsync")
        self.go, self.synced = threading.Semaphore(0), threading.Semaphore(0)
        self.covered: list[int] = []

    def sync(self, needed: int | None = None) -> None:
        try:
            super().sync(needed)
        finally:
            self.covered.append(self.synced_lsn)
            self.synced.release()
            assert self.go.acquire(timeout=5)


async def fsynced(journal: GatedJournal) -> None:
    """Once the journal's next sync has fsynced, and waits to return (on the sync thread)."""
    assert await asyncio.to_thread(journal.synced.acquire, timeout=5)


def test_a_round_written_while_a_sync_runs_is_told_by_the_next_which_covers_it(tmp_path):
    async def main() -> None:
        journal, syncs = GatedJournal(tmp_path), Syncs("t")
        first_lsn = journal.append(RECORD, sync=False)
        first = syncs.after_writes(journal)
        await fsynced(journal)
        second_lsn = journal.append(RECORD, sync=False)
        second = syncs.after_writes(journal)
        journal.go.release()
        await asyncio.wait_for(first, 5)
        # the sync that ran covered the rounds before it began, not the later one (whose
        # sync may have started already)
        assert journal.covered[0] == first_lsn < second_lsn and not second.done()
        await fsynced(journal)
        journal.go.release()
        await asyncio.wait_for(second, 5)
        assert journal.synced_lsn == second_lsn and not journal.unsynced
    asyncio.run(main())


def test_a_failed_fsync_fails_its_syncs_waiters_only_and_the_next_sync_as_the_journal_refuses(
        tmp_path, monkeypatch):
    async def main() -> None:
        journal, syncs = GatedJournal(tmp_path), Syncs("t")
        journal.append(RECORD, sync=False)
        told = syncs.after_writes(journal)
        journal.go.release()
        await asyncio.wait_for(told, 5)  # a sync that worked
        failures = fsync_fails_once(monkeypatch)
        journal.append(RECORD, sync=False)
        failing = syncs.after_writes(journal)
        await fsynced(journal)
        later = syncs.after_writes(journal)  # asked while the failing sync runs
        journal.go.release()
        with pytest.raises(OSError, match="I/O error"):
            await asyncio.wait_for(failing, 5)
        assert failures and not later.done()  # its waiters alone
        await fsynced(journal)
        journal.go.release()
        with pytest.raises(OSError, match="the journal failed earlier"):
            await asyncio.wait_for(later, 5)
    asyncio.run(main())


def test_the_sync_thread_ends_once_its_syncs_is_dropped(tmp_path):
    before = set(threading.enumerate())

    async def main() -> set[threading.Thread]:
        journal, syncs = Journal(tmp_path, "fsync"), Syncs("t")
        journal.append(RECORD, sync=False)
        await asyncio.wait_for(syncs.after_writes(journal), 5)
        assert not journal.unsynced
        return set(threading.enumerate()) - before
    started = asyncio.run(main())
    assert [t.name for t in started] == ["t-sync"]
    gc.collect()
    for thread in started:
        thread.join(5)
        assert not thread.is_alive(), thread.name


def test_a_process_exits_with_its_sync_thread_stuck_in_a_sync():
    """A sync that never returns (a hung disk) leaves its waiters waiting, and the process
    free to exit: nothing it covers was acknowledged."""
    code = """if True:
        import asyncio, threading
        from kairos.cluster.shard.syncs import Syncs
        class Hung:
            entered = threading.Event()
            def sync(self):
                self.entered.set()
                threading.Event().wait()
        async def main():
            syncs, journal = Syncs("t"), Hung()
            waiting = syncs.after_writes(journal)
            assert await asyncio.to_thread(journal.entered.wait, 5)
            assert not waiting.done()
            return syncs
        kept = asyncio.run(main())
        print("exiting", flush=True)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, "exiting\n"), done.stderr


def test_a_waiter_cancelled_leaves_its_syncs_other_waiters_told_and_the_next_sync_started(
        tmp_path):
    """As host._apply awaits a sync that a round waits for too: a tick's `host.run` stopped
    mid-sync must neither leave the round unanswered nor Syncs stuck."""
    async def main() -> None:
        errors = on_the_loop()
        journal, syncs = GatedJournal(tmp_path), Syncs("t")
        journal.append(RECORD, sync=False)
        first = syncs.after_writes(journal)
        await fsynced(journal)  # the first sync runs: the next two share the one after it
        shared_lsn = journal.append(RECORD, sync=False)

        async def apply() -> None:  # as _apply, awaited; asked before the round, told first
            await syncs.after_writes(journal)
        applying = asyncio.ensure_future(apply())
        await asyncio.sleep(0)
        round_told = syncs.after_writes(journal)  # a round's, told by callback
        journal.go.release()
        await asyncio.wait_for(first, 5)
        await fsynced(journal)  # the shared sync runs
        applying.cancel()
        later_lsn = journal.append(RECORD, sync=False)
        later = syncs.after_writes(journal)  # asked while it runs: the next one's
        journal.go.release()
        await asyncio.wait_for(round_told, 5)
        assert round_told.exception() is None and journal.covered[1] == shared_lsn
        await fsynced(journal)
        journal.go.release()
        await asyncio.wait_for(later, 5)
        assert journal.covered[2] == later_lsn and not errors
    asyncio.run(main())


def on_the_loop() -> list[dict]:
    """The errors the running loop's exception handler gets from now (none may go unseen)."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    return errors


def test_a_hook_that_raises_as_a_sync_ends_still_has_the_next_sync_run(tmp_path):
    class Models:
        raises = True

        def written(self) -> None:
            pass

        def sync_started(self) -> None:
            pass

        def sync_finished(self, ok: bool, idle: bool) -> None:
            if self.raises:
                self.raises = False
                raise RuntimeError("a hook's bug")

    async def main() -> None:
        errors = on_the_loop()
        journal, syncs = GatedJournal(tmp_path), Syncs("t")
        journal.append(RECORD, sync=False)
        first = syncs.after_writes(journal, Models())
        await fsynced(journal)
        later_lsn = journal.append(RECORD, sync=False)
        later = syncs.after_writes(journal)  # queued behind the sync that ends badly
        journal.go.release()
        await asyncio.wait_for(first, 5)
        await fsynced(journal)
        journal.go.release()
        await asyncio.wait_for(later, 5)
        assert journal.covered == [later_lsn - 1, later_lsn]
        assert [str(e.get("exception")) for e in errors] == ["a hook's bug"]
    asyncio.run(main())


def test_settled_returns_once_the_ended_syncs_waiters_callbacks_ran(tmp_path):
    """A task that asks for `settled` right after a sync ended (ShardActor.freeze, after a
    `host.run` that journaled nothing) goes on only once that sync's rounds were answered:
    their callbacks queue the pushes that its flush must send."""
    async def main() -> list[str]:
        journal, syncs, order = GatedJournal(tmp_path), Syncs("t"), []
        ended = asyncio.get_running_loop().create_future()
        finished = syncs._finished

        def finishing(*args) -> None:
            ended.set_result(None)  # freeze's wake-up queued before the waiters' callbacks
            finished(*args)
        syncs._finished = finishing

        async def freeze() -> None:
            await ended  # woken as the sync ends, right after Syncs is told
            await syncs.settled()
            order.append("settled")
        freezing = asyncio.ensure_future(freeze())
        journal.append(RECORD, sync=False)
        syncs.after_writes(journal).add_done_callback(lambda _: order.append("round"))
        await fsynced(journal)
        journal.go.release()
        await asyncio.wait_for(freezing, 5)
        return order
    assert asyncio.run(main()) == ["round", "settled"]


class Interrupted(BaseException):
    pass


@pytest.mark.parametrize("raised", [Interrupted, StopIteration])
def test_a_sync_that_raises_what_a_future_cannot_hold_fails_its_waiters_and_goes_on(raised):
    """No plain Exception (the thread died of it), or StopIteration (a future refuses it): the
    waiters fail as on any journal error, and the next sync runs."""
    class Journal:
        raises = True

        def sync(self) -> None:
            if self.raises:
                self.raises = False
                raise raised()

    async def main() -> None:
        journal, syncs = Journal(), Syncs("t")
        with pytest.raises(OSError, match=raised.__name__):
            await asyncio.wait_for(syncs.after_writes(journal), 1)
        await asyncio.wait_for(syncs.after_writes(journal), 1)
    asyncio.run(main())
