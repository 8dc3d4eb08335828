"""Controller's scaling: partitions moved in bounded rounds (moves.py) and the moves a round
left settled. A part of Controller (controller.py), which holds the map, the placement, the
lock these run under and `_retire`, which stops the shards that own nothing any more."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Set
from typing import Any

from kairos.cluster.control import moves as moving
from kairos.cluster.control.partitions import Move
from kairos.cluster.throttled import ThrottledWarning

log = logging.getLogger("kairos.controller")


class Scaling:
    """ScaleShards, and the rebalancing that drains, joins and re-placements share."""

    async def scale(self, n_shards: int) -> dict[str, Any]:
        """Change the shard count while traffic flows; returns when the spread is even
        (RuntimeError, once the rest is spread, while a move a shard did not answer holds
        some partitions back)."""
        if n_shards < 1:
            raise ValueError(f"need at least one shard, got {n_shards}")
        async with self._reconfiguring:
            target = self._serving_shards()[:n_shards]
            adding = n_shards - len(target)
            for _ in range(adding):
                name = await self._create_shard()
                await self._start_shard(name)
                target.append(name)
            if adding > 0:  # once placed: each save lowers the density to the placement's
                self.density.scaled(n_shards, len(self.nodes.serving(self.nodes.alive())))
            try:
                moved = await self._rebalance(target)
            except RuntimeError:  # a move held the rest back: nothing else would stop these
                await self._retire([s for s in self.shards if s not in target
                                    and s not in self.map.owners and s not in self._in_moves()])
                raise
            await self._retire([s for s in self.shards if s not in target])
            if self.map.plan(target, 1):
                raise RuntimeError(f"the spread is not even yet: {self._unsettled()}")
            return {"shards": len(self.shards), "moved": moved, "version": self.map.version}

    async def _rebalance(self, target: list[str]) -> int:
        """Spread the partitions over `target`, around the moves a shard that does not answer
        leaves unsettled; RuntimeError if those keep partitions on a shard not in `target`,
        or keep it in a move (it cannot be stopped: the target of a move undone may still
        adopt late, and its source thaws once the shard is gone: moves.py)."""
        moved = await self._spread(target)
        if kept := sorted((self._in_moves() | set(self.map.shards_in_use())) - set(target)):
            raise RuntimeError(f"{', '.join(kept)} cannot stop yet (partitions owned, or a "
                               f"move): {self._unsettled()}")
        return moved

    async def _spread(self, target: list[str], skip: Set[str] = frozenset()) -> int:
        """Move partitions towards an even spread over `target`, around the moves not settled;
        the partitions moved. The moves of shards in `skip`, known not to answer, are not
        settled again (a call to such a shard would hold the lock for its deadline)."""
        stuck = await self._settle(skip)
        budget = await moving.round_budget(self.backend, self.map, skip)
        moved = 0
        while moves := moving.plan_around(self.map, target, budget, self.moving, stuck):
            await self._move(moves, target, stuck)  # those that just failed: not asked again
            moved += len(moves)
        return moved

    async def _move(self, moves: list[Move], target: list[str], skip: Set[str]) -> None:
        version = self.map.version + 1
        pairs: dict[tuple[str, str], list[int]] = {}
        for m in moves:
            pairs.setdefault((m.source, m.target), []).append(m.partition)
        earlier = self.moving  # an earlier round's a shard did not settle: kept until settled
        self.moving = earlier + moves
        await self._save()  # from the first freeze on, a crash leaves these to settle
        results = await asyncio.gather(*(moving.hand_over(self.backend, src, dst, parts,
                                                          version)
                                         for (src, dst), parts in pairs.items()),
                                       return_exceptions=True)
        failures = {pair: r for pair, r in zip(pairs, results) if isinstance(r, Exception)}
        done = [m for m in moves if (m.source, m.target) not in failures]
        self.map = self.map.apply(done, target)
        # the failed ones' sources serve again before the version naming them is published
        failed = [m for m in moves if m not in done]
        settled = await moving.settle(self.backend, failed, self.map.owners, set(self.placement),
                                      self.map.version)
        undone = settled.unsettled
        self.thaws_published |= {m for m in undone if m.partition in settled.thawed}
        self.moving = earlier + undone + done
        await self._publish()
        due, left = _apart(earlier, skip)
        unsettled = (await moving.settle(self.backend, due + done, self.map.owners,
                                         set(self.placement), self.map.version)).unsettled
        self.moving = undone + left + unsettled
        await self._save()
        if failures:
            raise RuntimeError("handoffs failed (their partitions stay where they were): " +
                               "; ".join(f"{a} -> {b}: {r}" for (a, b), r in failures.items()))

    async def _settle(self, skip: Set[str] = frozenset()) -> set[str]:
        """Settle the moves an interrupted round left (moves.py), but those of shards in `skip`
        (left as they are); the shards that did not answer, `skip` among them (their moves
        stay recorded, settled by a later round)."""
        before = self.moving
        due, _ = _apart(before, skip)
        if not due:
            return set(skip)
        # a thaw sent at a version since published goes again at the published one: a source
        # that keeps failing it would otherwise publish a new map, and wake every long poll,
        # each round
        again = [m for m in due if m in self.thaws_published]
        # one the map does not show done may have been handed over at the version after it (a
        # crash before its publish): its steps go at that one, published below once its source
        # may serve again. The others' go at the map's: a shard fenced at a version never
        # published would refuse the next move's adopt or freeze, made at it, as late
        fresh = [m for m in due if m not in again and self.map.owners[m.partition] == m.source]
        current = [m for m in due if m not in fresh]
        retried, settled = await asyncio.gather(*(
            moving.settle(self.backend, moves, self.map.owners, set(self.placement), at)
            for moves, at in ((current, self.map.version), (fresh, self.map.version + 1))))
        unsettled = retried.unsettled + settled.unsettled
        self.moving = [m for m in before if m not in due or m in unsettled]
        # senders that met the freeze wait for a version past it, once a source may serve
        # again: a fresh thaw sent, answered or not (one whose answer was lost re-granted them
        # all the same), or a retried one answered (its senders wait past the version it
        # went at); none while every source stays frozen (else each round's retry would wake
        # every long poll, for as long as a target does not answer or a source refuses)
        if settled.thawed or any(m not in retried.unsettled for m in again):
            self.map = self.map.apply([], self.map.shards)
        self.thaws_published = {m for m in self.moving if m in again
                                or (m in fresh and m.partition in settled.thawed)}
        if self.moving != before or self.map is not self._routable:
            await self._publish()
        return retried.failed | settled.failed | set(skip)

    async def _released_before_start(self, name: str) -> None:
        """Have the targets of the moves not settled of the partitions `name` is to serve
        release them, before it starts (Ray restarted it, or it replaces a shard whose node
        left): the freeze that kept a late adopt's snapshot the last (moves.py) was in the
        memory of a process gone, and `name` starts unfrozen. Unreleased, and `name` is not
        started (the next round tries again), while a target does not answer."""
        # a target gone had its journal fenced (`_retire`, `_replace`): it writes no snapshot
        held = [m for m in self.moving if self.map.owners[m.partition] == name
                and m.target != name and m.target in self.placement]
        if not held:
            return
        # one known not to answer is not asked (it would hold the lock for a call's deadline);
        # nor one Ray restarted: its adopt died with the process the move ran with
        asked = [m for m in held if m.target not in self._unanswered
                 and not self._restarted(m.target)]
        # as `_settle`'s fresh ones: a move may have been handed over at the version after
        # the map's; no thaw (`name` is left out), as the start serves them
        unsettled = (await moving.settle(self.backend, asked, self.map.owners,
                                         set(self.placement) - {name}, self.map.version + 1,
                                         self._held_start(name, "release").warn)).unsettled
        unsettled += [m for m in held if m not in asked and not self._restarted(m.target)]
        if done := [m for m in held if m not in unsettled]:
            self.moving = [m for m in self.moving if m not in done]
            self.thaws_published -= set(done)
            self.map = self.map.apply([], self.map.shards)  # the version they were fenced at
            await self._publish()
        if unsettled:
            targets = sorted({m.target for m in unsettled})
            raise moving.Unreleased(f"{name} starts once {', '.join(targets)} answers the "
                                    f"release of the partitions it may still adopt late",
                                    targets)

    def _restarted(self, name: str) -> bool:
        """Whether `name` last answered (`_restart_shards`) as another process than the one
        the controller started: Ray restarted it. Not when the controller knows no start of it
        (a resume), as it cannot tell."""
        answered = self._healths.get(name, {}).get("incarnation")
        known = self.incarnations.get(name)
        return None not in (answered, known) and answered != known

    def _held_start(self, name: str, what: str) -> ThrottledWarning:
        """How a start of `name` that waits on a move's target says `what` (a release asked,
        the wait): once, then every HELD_LOG_S while it waits, as each round tries again."""
        return self._held_starts.setdefault((name, what),
                                            ThrottledWarning(log, moving.HELD_LOG_S))

    def _start_unheld(self, name: str) -> None:
        """`name` no longer waits on a move's target (released, or the shard is gone): a wait
        again is said at once."""
        self._held_starts = {k: w for k, w in self._held_starts.items() if k[0] != name}
        self._waiting_since.pop(name, None)

    def _in_moves(self) -> set[str]:
        """The shards of the moves not settled yet."""
        return {s for m in self.moving for s in (m.source, m.target)} & set(self.placement)

    def _unsettled(self) -> str:
        shards = ", ".join(sorted(self._in_moves()))
        return f"moves between {shards} are not settled (a shard did not answer)"


def _apart(moves: list[Move], skip: Set[str]) -> tuple[list[Move], list[Move]]:
    """`moves` apart: those to settle, and those of a shard in `skip`."""
    left = [m for m in moves if {m.source, m.target} & skip]
    return [m for m in moves if m not in left], left
