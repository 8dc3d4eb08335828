"""Shards that missed a broadcast of the controller, and catching them up.

A catalog commit or a channel watch goes to every shard at once, each call with its deadline;
a shard that does not answer (stopped, wedged, restarting) must not fail the others nor hold
the controller. It is remembered here as lagging and caught up once it answers again (the
control loop), or when it (re)starts, since it then starts on the current catalog and watches.
A shard that answers the control loop's health checks but keeps failing its catalog catch-up
(a prepare that does not finish in time, a commit that fails) is tried again after a wait that
doubles from CATCH_UP_FIRST_S to CATCH_UP_MAX_S, not every round: each try may hold the
reconfiguration lock for a call's deadline, and each failure is a warning in the log.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from time import monotonic
from typing import Any, Awaitable, Callable

from kairos.cluster.transport.backend import Backend, ShardControl, said

log = logging.getLogger("kairos.controller")

CATCH_UP_FIRST_S = 1.0  # the wait after a shard's first failed catalog catch-up
CATCH_UP_MAX_S = 60.0  # and the longest, once it doubled

Watch = tuple[str, str, "str | None"]  # sink, channel, placement
WatchChange = tuple[str, str, "str | None", bool]  # a Watch, and whether it is on


async def on_each(backend: Backend, names: list[str],
                  call: Callable[[ShardControl], Awaitable[Any]]) -> dict[str, Exception]:
    """`call(shard)` on every named shard at once; the failures by shard."""
    results = await asyncio.gather(*(call(backend.shard(n)) for n in names),
                                   return_exceptions=True)
    return {n: r for n, r in zip(names, results) if isinstance(r, Exception)}


def named(failures: dict[str, Exception]) -> str:
    """Each failure with its shard's name (Unavailable's message starts with it already), as
    the shard's own error says it: not a RayTaskError's process and traceback (said)."""
    texts = {name: said(exc) for name, exc in failures.items()}
    return "; ".join(text if text.startswith(name) else f"{name}: {text}"
                     for name, text in texts.items())


class Lagging:
    def __init__(self, backend: Backend):
        self._backend = backend
        self.catalog: set[str] = set()  # shards not known to have committed the catalog
        self.watches: dict[str, list[WatchChange]] = {}  # shard -> the changes it missed
        # per shard, its watch changes in turn: a change replayed late must not land after a
        # newer broadcast (a watch removed meanwhile would stay on there)
        self._order: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # shard -> (the catalog version its catch-up failed for, when it is tried next, the
        # wait after that); a switch to another version starts it afresh
        self._retry: dict[str, tuple[str, float, float]] = {}

    def forget(self, name: str) -> None:
        """`name` is gone (names are never used again)."""
        self._caught_up(name)
        self._order.pop(name, None)

    def _caught_up(self, name: str) -> None:
        """Nothing is known to lag at `name`."""
        self.catalog.discard(name)
        self.watches.pop(name, None)
        self._retry.pop(name, None)

    async def started(self, name: str, given: set[Watch], now: Callable[[], set[Watch]],
                      changed: bool) -> None:
        """`name` (re)started on the current catalog with the channel watches `given`: all
        it missed before is moot, but not the changes made while its start ran (`changed`;
        `now()`: the watches as they are, read in turn with the broadcasts to it). Which of
        their broadcasts reached it, before or after the start set `given`, is unknown (a
        watch removed and added again may be off there): so every watch of `now()` is sent on
        again (one that is on stays on), and those of `given` since gone are sent off."""
        self._caught_up(name)  # its lock kept: a broadcast to it may hold it
        if not changed:
            return
        async with self._order[name]:
            current = now()
            self.watches[name] = [(*w, True) for w in sorted(current, key=str)] + \
                [(*w, False) for w in sorted(given - current, key=str)]
            await self._replay(name)

    async def commit_catalog(self, names: list[str], text: str, version: str,
                             prepared: bool = False) -> None:
        """Switch those of `names` that lag to the catalog (preparing it first unless
        `prepared`: the switch's own commit, never held back); the ones that fail keep
        lagging, and a catch-up (not `prepared`) is tried again only once its wait is over
        (the module's docstring)."""
        async def switch(shard: ShardControl) -> None:
            if not prepared:
                await shard.prepare(text)
            await shard.commit(version)

        now = monotonic()
        behind = [n for n in names
                  if n in self.catalog and (prepared or self._due(n, version, now))]
        failed = await on_each(self._backend, behind, switch)
        self.catalog.difference_update(set(behind) - set(failed))
        now = monotonic()  # the wait counts from the answer: a try may take a call's deadline
        for name in behind:
            earlier = self._retry.pop(name, None)
            if name in failed and not prepared:  # the switch's own commit: caught up at once
                wait = CATCH_UP_FIRST_S if earlier is None or earlier[0] != version \
                    else min(2 * earlier[2], CATCH_UP_MAX_S)
                self._retry[name] = (version, now + wait, wait)
        if failed:
            waits = [self._retry[n][2] for n in failed if n in self._retry]
            log.warning("catalog %s is not committed yet on %s; the control loop tries again%s",
                        version, named(failed),
                        f" after a wait (at most {max(waits):g} s)" if waits else "")

    def _due(self, name: str, version: str, now: float) -> bool:
        """Whether `name`'s catch-up to `version` is tried at `now`: its wait after failing
        the same version is over."""
        retry = self._retry.get(name)
        return retry is None or retry[0] != version or retry[1] <= now

    async def watch_channel(self, names: list[str], change: WatchChange) -> None:
        """Send a channel watch change to every shard; remember who missed it."""
        async def send(shard: ShardControl) -> None:
            # noted in turn with the other changes to this shard: a newer change for the same
            # watch that lands after this one failed must find it noted, to clear it
            async with self._order[shard.name]:
                try:
                    await shard.watch_channel(*change)
                except Exception:
                    self._missed(shard.name, [change])
                    raise
                self._reached(shard.name, change)

        failed = await on_each(self._backend, names, send)
        if failed:
            log.warning("channel watch %s not yet on %s; the control loop retries", change,
                        named(failed))

    async def replay_watches(self, names: list[str]) -> None:
        """Send each of `names` the watch changes it missed, in their order."""
        for name in [n for n in names if n in self.watches]:
            async with self._order[name]:
                await self._replay(name)

    async def _replay(self, name: str) -> None:
        changes = self.watches.pop(name, [])
        for k, change in enumerate(changes):
            try:
                await self._backend.shard(name).watch_channel(*change)
            except Exception:  # after these, what it missed meanwhile
                self._missed(name, changes[k:] + self.watches.pop(name, []))
                log.warning("%s still misses channel watches; retried", name)
                break

    def _missed(self, name: str, changes: list[WatchChange]) -> None:
        """`name` missed `changes` (in their order): after what it missed before, and only
        the latest per watch, since a watch's state at a shard is its last change."""
        for change in changes:
            self._reached(name, change)
            self.watches.setdefault(name, []).append(change)

    def _reached(self, name: str, change: WatchChange) -> None:
        """`change` reached `name`: an older change of its watch that it missed is moot (and
        replayed, would undo it)."""
        missed = [c for c in self.watches.get(name, []) if c[:3] != change[:3]]
        if missed:
            self.watches[name] = missed
        else:
            self.watches.pop(name, None)
