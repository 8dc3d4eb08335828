"""Partition moves that a crash cannot leave half done.

The controller records a round's moves in its saved state before the first freeze, and keeps
each recorded until it is settled: after a crash (of the controller, or of a call that timed
out) `settle` brings every recorded partition to exactly one serving shard, the owner the
saved map names. A move the map shows done is finished (the source forgets the partition);
one it does not is undone (the target forgets what it may have adopted, then the source
serves the partition again). A done move's target is confirmed too: until then it holds the
partition as arriving (shard/handoff.py) and fires none of its timers, since an undone move's
source fires them; a confirmation that fails is not retried here (the move is done), but by
`confirm_owned`, which the control loop runs for the saved map. A shard older than `confirm`
has no such call (logged once per shard), and a controller older than `confirm` never sends
it: either way an adopted partition fires its timers once a request routed under the new map
arrives, so shards and controller may be upgraded in either order. Every step is idempotent,
so settling again after another crash is safe. The target forgets before the source thaws
because both write the partition's snapshot: the source's must be the last. So a source whose
target does not answer the release stays frozen (its MOVED names a version the clients hold
already: they wait, client.py), for as long as the target may still adopt late: the store
keeps one snapshot per partition and has no fence by map version that would refuse the
target's. That freeze is in the source's memory alone: a source Ray restarts (or a shard
replacing it) starts unfrozen, so it is started only once the target answered the release
(scaling.py `_released_before_start`) or answers as a process Ray restarted, or was replaced,
its journal fenced, after keeping it waiting HELD_TARGET_S (rounds.py `_replace_holding`).
Meanwhile later rounds plan around that move (`plan_around`): the rest of the cluster scales
and drains, and neither of its shards is stopped until it settles (scaling.py; a shard stopped
has its journal fenced too, controller.py `_retire`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Set
from typing import Callable, Iterable, NamedTuple

from kairos.cluster.control.partitions import Move, PartitionMap
from kairos.cluster.settings import MAX_MOVE_FRACTION, MOVE_ROUND_CUSTOMERS
from kairos.cluster.transport.backend import Backend, NoSuchCall

log = logging.getLogger("kairos.controller")
_PREDATE_CONFIRM: set[str] = set()  # the shards logged as older than `confirm`
HELD_LOG_S = 600.0  # how often a drain or a start held by a move not settled is said again


async def round_budget(backend: Backend, pmap: PartitionMap, skip: Set[str] = frozenset()
                       ) -> int:
    """Partitions one round may move: MAX_MOVE_FRACTION of them, and no more than carry about
    MOVE_ROUND_CUSTOMERS customers (resident and passivated) at the densest shard's mean, so
    that a round's freeze, which holds its partitions' requests, stays short however many
    customers the shards hold. A shard that does not answer counts as empty, and so does one
    in `skip` (known not to answer: it is not asked)."""
    shards = [s for s in pmap.shards_in_use() if s not in skip]
    healths = await asyncio.gather(*(backend.shard(s).health() for s in shards),
                                   return_exceptions=True)
    density = max((h.get("resident", 0) + h.get("passivated", 0))
                  / max(len(pmap.partitions_of(s)), 1)
                  for s, h in zip(shards, healths) if not isinstance(h, BaseException)) \
        if any(not isinstance(h, BaseException) for h in healths) else 0.0
    by_share = max(1, int(pmap.n_partitions * MAX_MOVE_FRACTION))
    return min(by_share, max(1, int(MOVE_ROUND_CUSTOMERS / max(density, 1.0))))


def moves_to_state(moves: Iterable[Move]) -> list[list]:
    return [[m.partition, m.source, m.target] for m in moves]


def moves_from_state(raw: list[list]) -> list[Move]:
    return [Move(int(p), source, target) for p, source, target in raw]


async def hand_over(backend: Backend, source: str, target: str, partitions: list[int],
                    version: int) -> int:
    """Freeze the partitions on `source` (MOVED to `version`) and have `target` adopt them;
    the customers adopted. A failure leaves the move to `settle`."""
    payload = await backend.shard(source).freeze(partitions, version)
    return await backend.shard(target).adopt(payload, version)


def plan_around(pmap: PartitionMap, shards: list[str], budget: int, unsettled: Iterable[Move],
                stuck: set[str]) -> list[Move]:
    """`pmap.plan` over the partitions and shards that can move now: neither a partition of an
    `unsettled` move (its source may be frozen: a freeze would be refused) nor one of a
    `stuck` shard (it did not answer: a move to or from it would fail, and hold more
    partitions frozen) moves, and the shards that answer end as even as those pinned allow:
    a shard's pinned partitions count in its load (they come first in its list, so `plan`'s
    donors give the others), and one pinned with more than an even share takes nothing and
    gives all it may (it is left out, as a leaving shard)."""
    held = {m.partition for m in unsettled}
    free = [p for p, owner in enumerate(pmap.owners) if p not in held and owner not in stuck]
    receivers = [s for s in shards if s not in stuck]
    if not receivers:
        return []
    pinned = {s: [p for p in sorted(held) if pmap.owners[p] == s] for s in receivers}
    while heavy := {s for s in receivers if len(pinned[s]) > (
            len(free) + sum(len(pinned[r]) for r in receivers)) // len(receivers)}:
        receivers = [s for s in receivers if s not in heavy]  # never all of them
    kept = [p for s in receivers for p in pinned[s]] + free
    part = PartitionMap([pmap.owners[p] for p in kept], pmap.version, pmap.shards)
    return [Move(kept[m.partition], m.source, m.target) for m in part.plan(receivers, budget)]


class Unreleased(RuntimeError):
    """A shard is not started: a move's target that may still adopt late what it is to serve
    did not answer the release (scaling.py); `targets`, those that did not."""

    def __init__(self, message: str, targets: list[str]):
        super().__init__(message)
        self.targets = targets


class Settled(NamedTuple):
    unsettled: list[Move]  # as a shard did not answer: settle them again later
    failed: set[str]  # the shards that did not answer
    thawed: set[int]  # the partitions whose source was sent a thaw (answered or not): publish
    # `version`


async def settle(backend: Backend, moves: list[Move], owners: list[str], shards: set[str],
                 version: int, warn: Callable[..., None] = log.warning) -> Settled:
    """Bring each move's partition to its owner in `owners` alone. Shards not in `shards` are
    gone and are skipped; an undone move's source serves again granted at `version`, which
    the caller publishes next: a thaw whose answer was lost may have run. A shard that fails
    a step is said by `warn`."""
    drop: dict[str, set[int]] = {}
    thaw: dict[str, set[int]] = {}
    confirm: dict[str, set[int]] = {}
    for m in moves:
        owner = owners[m.partition]
        for shard in {m.source, m.target} - {owner}:
            if shard in shards:
                drop.setdefault(shard, set()).add(m.partition)
        if owner == m.source and owner in shards:
            thaw.setdefault(owner, set()).add(m.partition)
        elif owner == m.target and owner in shards:
            confirm.setdefault(owner, set()).add(m.partition)
    failed = await _each(drop, lambda shard, parts: backend.shard(shard).release(parts, version),
                         warn)
    # a source whose target did not answer stays frozen: the target may still adopt later
    held = {m.partition for m in moves if m.target in failed or m.source in failed}
    thaw = {s: ps - held for s, ps in thaw.items() if ps - held}
    failed |= await _each(thaw, lambda shard, parts: backend.shard(shard).thaw(parts, version),
                          warn)
    await _confirm(backend, confirm, version)
    return Settled([m for m in moves if m.partition in held
                    or (m.source in failed and m.partition in thaw.get(m.source, ()))],
                   failed, {p for ps in thaw.values() for p in ps})


async def confirm_owned(backend: Backend, pmap: PartitionMap, moving: Iterable[Move] = ()
                        ) -> None:
    """Confirm to every shard the partitions the (saved) map gives it, but those of `moving`
    (not settled yet): a move's target whose confirmation failed, or came from an older
    controller, fires their timers from then on. A partition adopted by a move newer than
    the map stays arriving (handoff.py)."""
    unsettled = {m.partition for m in moving}
    steps = {s: set(pmap.partitions_of(s)) - unsettled for s in pmap.shards_in_use()}
    await _confirm(backend, {s: ps for s, ps in steps.items() if ps}, pmap.version)


async def _confirm(backend: Backend, steps: dict[str, set[int]], version: int) -> None:
    async def call(shard: str, partitions: list[int]) -> None:
        try:
            await backend.shard(shard).confirm(partitions, version)
        except NoSuchCall as exc:  # said once, not every round
            if shard not in _PREDATE_CONFIRM:
                _PREDATE_CONFIRM.add(shard)
                log.warning("shard %s predates confirm (%s): its adopted partitions fire "
                            "their timers once a request routed under the new map arrives",
                            shard, exc)

    await _each(steps, call)


async def _each(steps: dict[str, set[int]], call,
                warn: Callable[..., None] = log.warning) -> set[str]:
    """Run `call(shard, partitions)` for every shard at once; the shards that failed."""
    names = list(steps)
    results = await asyncio.gather(*(call(n, sorted(steps[n])) for n in names),
                                   return_exceptions=True)
    failed = set()
    for name, result in zip(names, results):
        if isinstance(result, Exception):
            warn("settling a move on %s failed (retried later): %r", name, result)
            failed.add(name)
    return failed
