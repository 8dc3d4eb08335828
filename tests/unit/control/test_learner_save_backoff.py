"""While the store refuses the learner's saves, the periodic saves back off (posterior.py
`Saves`): each try copies the whole posterior on the learner's loop, and every sync that merged
tried, so a store outage saturated the learner (issue 18). A sync does not wait for a retry,
and the posterior is saved once the store answers again."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.control import posterior
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from .test_learner import Actor, learned, told

HELD_S = 5.0  # how long a held write waits to be let go before the store gives up


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Refusing:
    """A store that refuses writes while `down` (StoreUnavailable), at once or, while `held`,
    once let go (`go`) or after HELD_S, as a store's timeout would; counts the writes it
    refused, once each has ended."""

    def __init__(self, store):
        self.store, self.down, self.held, self.refused = store, False, False, 0
        self.go = threading.Event()

    def get_meta(self, key: str):
        return self.store.get_meta(key)

    def put_meta(self, key: str, blob: bytes) -> None:
        if not self.down:
            self.store.put_meta(key, blob)
            return
        if self.held:
            self.go.wait(HELD_S)
        self.refused += 1
        raise StoreUnavailable("refused")


def refusing_actor(tmp_path, monkeypatch) -> tuple[Refusing, Clock, list, object]:
    """The store, the clock the saves read, the learners copied for a save, the actor."""
    store, clock, copies = Refusing(open_store(str(tmp_path))), Clock(), []
    told(store.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: store)
    monkeypatch.setattr(posterior, "time", SimpleNamespace(monotonic=clock))
    saved_parts = posterior.saved_parts
    monkeypatch.setattr(posterior, "saved_parts",
                        lambda of: copies.append(of) or saved_parts(of))
    return store, clock, copies, Actor(default_catalog_text(), "x")


def test_saves_back_off_while_the_store_refuses_them_and_land_once_it_answers(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="kairos.learner")
    store, clock, copies, actor = refusing_actor(tmp_path, monkeypatch)
    c = default_compiled()

    async def main():
        store.down = True
        for _ in range(240):  # a sync that merges every 0.5 s for 120 s
            await actor.sync(c.version, learned(c, 3, 1), -1)
            await actor.saves.idle()
            clock.now += 0.5
        down = len(copies), store.refused
        store.down = False
        await actor.sync(c.version, learned(c, 3, 1), -1)  # within the wait: not tried
        tried_early = len(copies) - down[0]
        clock.now += posterior.SAVE_RETRY_MOST_S
        await actor.sync(c.version, learned(c, 3, 1), -1)  # tries again: not waited for
        await actor.saves.idle()
        return down, tried_early
    down, tried_early = asyncio.run(main())
    # tried at 0, 2, 6, 14, 30 and 62 s (the next at 122 s), not on each of the 240 merges
    assert down == (6, 6) and tried_early == 0
    refused = [r for r in caplog.records if "could not save the posterior" in r.getMessage()]
    assert len(refused) == 1  # the rest held back (SAVE_FAILED_LOG_S)
    again = [r.getMessage() for r in caplog.records if "saved again" in r.getMessage()]
    assert again == ["learner: the posterior is saved again; writes failed: 6, over 180.0 s"]
    assert actor.saves.retry_s == 0.0 and actor.saves.merges == actor.learner.merged
    assert Actor(default_catalog_text(), "x").learner.models.positives[3] == 242


def test_a_sync_does_not_wait_for_a_save_that_tries_again(tmp_path, monkeypatch):
    """The first failed write is waited for (nothing tells it will fail); a retry is not:
    the store's timeout would hold each sync that tries one."""
    store, clock, copies, actor = refusing_actor(tmp_path, monkeypatch)
    c = default_compiled()

    async def main():
        store.down = True
        await actor.sync(c.version, learned(c, 3, 1), -1)
        clock.now += posterior.SAVE_RETRY_FIRST_S
        store.held = True
        answer = await actor.sync(c.version, learned(c, 3, 1), -1)  # tries again
        ended = store.refused
        store.go.set()
        await actor.saves.idle()
        return answer, ended
    started = time.monotonic()
    answer, ended = asyncio.run(main())
    assert answer.positives[3] == 2 and len(copies) == 2
    assert (ended, store.refused) == (1, 2), f"the sync waited {time.monotonic() - started:.1f} s"


def test_a_flush_the_store_refuses_is_logged_with_the_merges_it_leaves(tmp_path, monkeypatch,
                                                                       caplog):
    """runtime.stop's flush, within SAVE_FAILED_LOG_S of a sync's warning: logged all the same
    (held back, the merges were lost without a word)."""
    caplog.set_level(logging.WARNING, logger="kairos.learner")
    store, clock, copies, actor = refusing_actor(tmp_path, monkeypatch)
    c = default_compiled()

    async def main():
        store.down = True
        await actor.sync(c.version, learned(c, 3, 1), -1)  # refused: warned
        await actor.sync(c.version, learned(c, 3, 1), -1)  # within the wait: not tried
        with pytest.raises(StoreUnavailable):  # tries at once; raised too
            await actor.flush()
    asyncio.run(main())
    assert store.refused == 2
    refused = [r.getMessage() for r in caplog.records if "could not save" in r.getMessage()]
    assert len(refused) == 2 and refused[1] == (
        "learner: could not save the posterior at the flush: the 2 merges since the last save "
        "are lost if the process ends now: refused")
