"""Shards that missed a broadcast of the controller, and catching them up.

A catalog commit or a channel watch goes to every shard at once, each call with its deadline;
a shard that does not answer (stopped, wedged, restarting) must not fail the others nor hold
the controller. It is remembered here as lagging and caught up once it answers again (the
control loop), or when it (re)starts, since it then starts on the current catalog and watches.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Awaitable, Callable

from kairos.cluster.transport.backend import Backend, ShardControl

log = logging.getLogger("kairos.controller")

Watch = tuple[str, str, "str | None"]  # sink, channel, placement
WatchChange = tuple[str, str, "str | None", bool]  # a Watch, and whether it is on


async def on_each(backend: Backend, names: list[str],
                  call: Callable[[ShardControl], Awaitable[Any]]) -> dict[str, Exception]:
    """`call(shard)` on every named shard at once; the failures by shard."""
    results = await asyncio.gather(*(call(backend.shard(n)) for n in names),
                                   return_exceptions=True)
    return {n: r for n, r in zip(names, results) if isinstance(r, Exception)}


def named(failures: dict[str, Exception]) -> str:
    """Each failure with its shard's name (Unavailable's message starts with it already)."""
    return "; ".join(str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
                     for name, exc in failures.items())


class Lagging:
    def __init__(self, backend: Backend):
        self._backend = backend
        self.catalog: set[str] = set()  # shards not known to have committed the catalog
        self.watches: dict[str, list[WatchChange]] = {}  # shard -> the changes it missed
        # per shard, its watch changes in turn: a change replayed late must not land after a
        # newer broadcast (a watch removed meanwhile would stay on there)
        self._order: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def forget(self, name: str) -> None:
        """`name` is gone."""
        self.catalog.discard(name)
        self.watches.pop(name, None)

    async def started(self, name: str, given: set[Watch], now: Callable[[], set[Watch]],
                      changed: bool) -> None:
        """`name` (re)started on the current catalog with the channel watches `given`: all
        it missed before is moot, but not the changes made while its start ran (`changed`;
        `now()`: the watches as they are, read in turn with the broadcasts to it). Which of
        their broadcasts reached it, before or after the start set `given`, is unknown (a
        watch removed and added again may be off there): so every watch of `now()` is sent on
        again (one that is on stays on), and those of `given` since gone are sent off."""
        self.forget(name)
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
        `prepared`); the ones that fail keep lagging."""
        async def switch(shard: ShardControl) -> None:
            if not prepared:
                await shard.prepare(text)
            await shard.commit(version)

        behind = [n for n in names if n in self.catalog]
        failed = await on_each(self._backend, behind, switch)
        self.catalog.difference_update(set(behind) - set(failed))
        if failed:
            log.warning("catalog %s is not committed yet on %s; the control loop retries",
                        version, named(failed))

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
