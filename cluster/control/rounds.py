"""The control loop's round (`Controller.reconcile`, which ControllerActor's loop runs): each
step on its own, so that one that fails (logged, and tried again the next round) holds up
none of the others.

1. Shards whose node left are replaced: a new shard recovers their partitions from the store.
   The replacement is recorded (saved) before it starts, with the journal each partition
   recovers from, until its health says it serves: a start that fails (or whose recovery
   does not succeed before Ray restarts it) is tried again, by the next round or a restarted
   controller, with the same journals. It is published once a start of it succeeds.
2. Every alive node that serves gets a gateway (nodes.py).
3. Shards Ray restarted are started again (they recover from the store), and those that answer
   are caught up: the catalog, channel watches, moves a round left unsettled. So is a shard
   whose journal is no longer its own while it is the incarnation the controller knows: only
   the store can have lost its claim (a failover, a restart from older persistence, FLUSHALL),
   since the actor Ray's name reaches is its one incarnation. Not while this cluster's claim on
   the store is lost: a second cluster holding it may have started that shard, and gets its
   journal only after this claim ran out, which the next renewal finds (then this one stops).
   A source of a move not settled starts once the move's target released the partitions, or
   answers as a process Ray restarted (the adopt died with the old one: scaling.py), serving
   none of its own meanwhile: a started target that keeps it waiting for HELD_TARGET_S is
   replaced as one whose node left (step 1), its journal fenced; one not started is not (it
   waits on a target of its own, replaced in its turn, or its start fails). A shard down
   because its node reaches another store by the cluster's URL (host.py) is logged, at once
   and every UNCLAIMED_LOG_S while it stays so (it tries again on its own); one down because
   it checks the claim of a controller before this one (a `kairos up` took it up while it
   rebuilt, or could not tell it its token: resuming.py) is started again, with this one's,
   and not logged as one on another store.
4. A learner that runs another catalog text than the controller's, or was not told it (Ray
   restarted it, a resume could not tell it), is told the running one.
5. Drains a crash (or a shard that did not answer) cut short are finished: after step 3, as a
   drain may wait on a shard that only step 3 starts again. Not while the node holds a shard
   of a move left unsettled by a shard that did not answer step 3: it would fail again every
   round, so it waits (said once) until that shard answers or its node leaves, and meanwhile
   its other partitions move, around that move. A drain the autoscaler started marks its
   node released once finished, as its own would have (a step up takes the node back).
6. Nodes that joined get shards; a node over its share (shards per CPU) gives one up to the
   node furthest under its own.
7. Channel watches whose sink is Gone (the gateway process whose streams registered them
   died, or Ray restarted it: the streams died with it) are removed, as those streams would
   have removed them on leaving; a sink that does not answer in time keeps them.
8. The decision logs of shards gone (scaled away, replaced: names are never reused) are held
   to the retention bounds, as each shard's writer holds its own, every DECISION_LOG_TRIM_S,
   and removed once empty: nobody else writes or trims them, and customers' records must not
   outlive the retention because the shard that logged them did not.
9. The serving nodes the round read are recorded, a full restart's take-up waiting for no
   more (takeup.py `NodesRun`: a rise at any round, a drop only after settled ones for a
   wait's length), and the state saved where the count changed or its last save failed (a
   save refused leaves the round unsettled: the next comes within CONTROL_LOOP_S).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable

from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.control.moves import HELD_LOG_S, Unreleased, confirm_owned
from kairos.cluster.control.nodes import NodeRefused
from kairos.cluster.control.partitions import Move
from kairos.cluster.settings import (DECISION_LOG_MAX_BYTES, DECISION_LOG_RETENTION_S,
                                     DECISION_LOG_TRIM_S)
from kairos.cluster.storage.ownership import UNCLAIMED_LOG_S
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.ray_backend import Gone

log = logging.getLogger("kairos.controller")
CONFIRM_OWNED_S = 30.0  # how often the shards are confirmed the partitions the map gives them
HELD_TARGET_S = 300.0  # how long a start waits on a move's target before it is replaced


async def _step(what: str, work: Awaitable[Any]) -> bool:
    """Run a step; whether it did not fail (a failure is logged)."""
    try:
        await work
    except Exception:
        log.exception("control loop: %s failed; the next round tries again", what)
        return False
    return True


def _disowned(health: dict[str, Any]) -> bool:
    """Whether a shard's health says it is down because its journal is not its own (host.py)."""
    return not health.get("started") and bool((health.get("recovery") or {}).get("disowned"))


def _unclaimed_by(health: dict[str, Any], owner: str) -> bool:
    """Whether a shard's health says it is down because the store does not hold the claim of
    the owner it checks, and that owner is not `owner`: another controller created or last
    started it (a `kairos up` that took up a shard rebuilding, or one it could not tell its
    token: resuming.py), so the claim it looks for is gone for good. A health that names no
    owner (a shard of an older release) is not: started again, it would be so every round."""
    return not health.get("started") and health.get("owner", owner) != owner and \
        bool((health.get("recovery") or {}).get("unclaimed"))


class ControlLoop:
    """Controller's control loop (a part of Controller: controller.py)."""

    _logs_trimmed = -math.inf  # when step 8 last ran
    _owned_confirmed = -math.inf  # when the shards were last confirmed what the map gives them
    _learner_by_version = False  # whether a learner that gives no digest was logged
    settled = False  # the last round left nothing to do (pace.py)
    round_alive: list[str] | None = None  # the nodes it saw

    async def reconcile(self) -> None:
        """One round of the control loop (this module's docstring); `settled` and
        `round_alive` say how it left the cluster (pace.py)."""
        self.settled, self.round_alive = False, None
        alive = self.nodes.alive()
        steps = [await _step("replacing shards whose node left", self._replace_departed(alive)),
                 await _step("starting gateways", self.nodes.ensure_gateways(sorted(alive))),
                 await _step("re-starting and catching up shards", self._restart_shards()),
                 await _step("telling the learner the catalog", self._tell_learner())]
        await self._finish_drains(alive)
        steps += [await _step("giving shards to nodes that joined", self._grow()),
                  await _step("re-placing a shard of a crowded node", self._uncrowd()),
                  await _step("dropping the channel watches of sinks gone",
                              self._drop_gone_sinks()),
                  await _step("confirming the moves the map shows done", self._confirm_owned()),
                  await _step("trimming the decision logs of shards gone",
                              self._trim_gone_logs())]
        settled = all(steps) and self._nothing_left(alive)
        recorded = await _step("saving the serving nodes the cluster runs on",
                               self._record_nodes(alive, settled))
        self.settled, self.round_alive = settled and recorded, alive

    async def _record_nodes(self, alive: list[str], settled: bool) -> None:
        """Step 9, `settled` saying whether the steps before left nothing to do."""
        self.nodes_run.ran(len(self.nodes.serving(alive)), settled, time.monotonic())
        if self.nodes_run.unsaved:
            count = self.nodes_run.count
            await self._save()
            self.nodes_run.saved = count  # after: a save that failed is made again

    def _nothing_left(self, alive: list[str]) -> bool:
        """Whether a round left nothing for the next one to do or retry: every shard placed
        on an alive node answered its health started, as the incarnation known, and no
        move, replacement, start, drain, catch-up or gateway start waits."""
        healthy = set(self._healths) == set(self.placement) and all(
            h.get("started") and h.get("incarnation") == self.incarnations.get(name)
            for name, h in self._healths.items())
        draining = [n for n in self.nodes.draining & set(alive)
                    if not self._drained(n) or n in self.nodes.releasing]
        waiting = (self.moving, self.replacing, self.starting, self._unanswered,
                   self._held_starts, self._waiting_since, self._drains, draining,
                   self.lagging.catalog, self.lagging.watches, self.nodes.retrying())
        placed = {node for node in self.placement.values() if node is not None}
        return healthy and placed <= set(alive) and not any(waiting)

    async def _finish_drains(self, alive: list[str]) -> None:
        """Step 5, but for a node that holds a shard of a move held by a shard that did not
        answer the catch-up (step 3): its drain would fail after settling again (a new map
        version each time, and the lock held for a call's deadline), so it waits, said once
        and then every HELD_LOG_S, until that shard answers or its node leaves. Its
        partitions that can move do meanwhile, around that move (`_drain_around`)."""
        notices, self._held_drains = self._held_drains, {}
        for node in sorted((self.nodes.draining & set(alive)) - self._drains):
            if self._drained(node):
                if node in self.nodes.releasing:  # the autoscaler's, finished since it failed
                    await _step(f"marking node {node} released", self._released(node))
                continue
            if not (waits_on := self._held_by(node)):
                log.warning("finishing the drain of node %s", node)
                await _step(f"finishing the drain of node {node}", self._join_drain(node))
                continue
            notice = self._held_drains[node] = notices.get(node) or ThrottledWarning(
                log, HELD_LOG_S)
            notice.warn("the drain of node %s waits: a move of its shards is not settled, as "
                        "%s did not answer; its other partitions move meanwhile, and it is "
                        "finished once that shard answers (one that hangs: have Ray restart "
                        "it, `ray.kill(actor, no_restart=False)`) or its node leaves the "
                        "cluster", node, ", ".join(waits_on))
            await _step(f"moving the partitions of node {node} around a move not settled",
                        self._drain_around(node))

    async def _drain_around(self, node: str) -> None:
        """Move the partitions of a draining `node` that can move now: neither held by a move
        nor owned by a shard that did not answer. The moves of the shards that did not answer
        are not settled again (the catch-up asked them), so that none holds the lock for a
        call's deadline; with nothing to move, nothing is saved and no map published."""
        async with self._reconfiguring:
            held = {m.partition for m in self.moving}
            if not any(p not in held for s, n in self.placement.items()
                       if n == node and s not in self._unanswered
                       for p in self.map.partitions_of(s)):
                return
            moved = await self._spread(self._serving_shards(), frozenset(self._unanswered))
        if moved:
            log.warning("node %s: %d partitions moved in a spread while its drain waits",
                        node, moved)

    def _held_by(self, node: str) -> list[str]:
        """The shards that did not answer of the moves not settled with a shard on `node`."""
        on_node = {s for s, n in self.placement.items() if n == node}
        return sorted({s for m in self.moving if {m.source, m.target} & on_node
                       for s in (m.source, m.target)} & self._unanswered & set(self.placement))

    async def _replace_departed(self, alive: list[str]) -> None:
        async with self._reconfiguring:
            self.nodes.left(alive)
            for name in [s for s, node in self.placement.items()
                         if node is not None and node not in alive]:
                await _step(f"replacing {name}", self._replace(name))

    async def _replace(self, dead: str, why: str = "was on a node that left") -> None:
        """A new shard in place of `dead`, whose node left (or as `why` says): it owns dead's
        partitions, and recovers those never snapshotted from dead's journal. A creation that
        fails leaves `dead` as it was, for the next round. A start that fails (Unreleased: the
        target of a move of dead's partitions does not answer) is tried again by
        `_restart_shards`."""
        log.warning("%s %s; a new shard recovers its partitions from the store (%s)", dead, why,
                    self.store_shown)
        await self.backend.kill_shard(dead)
        # should it still run, it acknowledges nothing more: its heir fences the journals it
        # recovers from, but not dead's own when dead was itself a replacement that served
        # (its snapshots name its journal, while its sources name the first dead shard's)
        await asyncio.to_thread(self.store.fence_journal, dead)
        name = await self._create_shard()
        partitions = self.map.partitions_of(dead)
        earlier = self.replacing.pop(dead, {})  # dead replaced a shard, and never started
        self.replacing[name] = {p: earlier.get(p, dead) for p in partitions}
        self._forget_shard(dead)
        # granted at the new version: stale senders re-route
        self.map = self.map.apply([Move(p, dead, name) for p in partitions], self.shards)
        await self._save()  # recorded before the start: one that fails is tried again
        try:
            await self._start_shard(name)  # published once it serves
        except Unreleased as exc:  # replaced all the same: `_restart_shards` starts it
            self._held_start(name, "wait").warn("%s; the next round tries again", exc)

    async def _restart_shards(self) -> None:
        # asked outside the lock, so that a stuck shard does not hold up a reconfiguration;
        # one that does not answer is being restarted by Ray, or stuck: looked at next round
        names, known = self.shards, dict(self.incarnations)
        healths = await asyncio.gather(*(self.backend.shard(n).health() for n in names),
                                       return_exceptions=True)
        # what each shard that answered said: a start held by a move's target tells from it
        # whether that target can still adopt late (scaling.py `_released_before_start`)
        self._healths = {n: h for n, h in zip(names, healths) if not isinstance(h, Exception)}
        self._say_unclaimed()
        async with self._reconfiguring:
            # re-checked: one (re)started meanwhile is known already
            answering = [n for n, h in zip(names, healths) if not isinstance(h, Exception)
                         and n in self.placement and known.get(n) == self.incarnations.get(n)]
            for name, health in zip(names, healths):
                if name not in answering:
                    continue
                restarted = health["incarnation"] != known.get(name)
                if not restarted and _disowned(health) and self.store_claim.lapsed():
                    # another cluster may hold the store, and have its shard claim the journal
                    # back next: each would rebuild the other's (both running, with their maps)
                    log.warning("%s lost its claim on its journal; started again once this "
                                "cluster's claim on the store is renewed", name)
                    answering.remove(name)
                elif restarted or _disowned(health) or \
                        _unclaimed_by(health, self.store_claim.owner):
                    if (name, "wait") not in self._held_starts:  # else said while it waits
                        log.warning("%s %s; it recovers its partitions from the store (%s)",
                                    name, "restarted" if restarted
                                    else "lost its claim on its journal" if _disowned(health)
                                    else "checks the claim of a controller before this one",
                                    self.store_shown)
                    try:
                        # a cluster that lost the store must not take the journal back
                        self.store_claim.check()
                        await self._start_shard(name)  # it claims the journal
                    except Unreleased as exc:  # a move's target does not answer: no traceback
                        self._held_start(name, "wait").warn("%s; the next round tries again",
                                                            exc)
                        answering.remove(name)
                        await self._replace_holding(name, exc.targets, answering)
                    except Exception:
                        log.exception("%s did not start; the next round tries again", name)
                        answering.remove(name)
                elif health.get("started") and self.replacing.pop(name, None) is not None:
                    await self._save()  # it serves what it recovered from those journals
            await self._catch_up(answering)

    def _say_unclaimed(self) -> None:
        """Log each shard down because the store its node reaches by the cluster's URL is not
        this one's (its health: host.py, ownership.py `check_claimed`), at once and then every
        UNCLAIMED_LOG_S while it stays down: operators read this log, not every shard's. Not
        one that checks an earlier controller's claim (`_unclaimed_by`): its refusal names
        this cluster's own controller as another cluster's, and this round starts it again."""
        down = {n: h for n, h in self._healths.items()
                if not h.get("started") and (h.get("recovery") or {}).get("unclaimed")
                and not _unclaimed_by(h, self.store_claim.owner)}
        self._unclaimed = {n: self._unclaimed.get(n) or ThrottledWarning(log, UNCLAIMED_LOG_S)
                           for n in down}
        for name, health in down.items():
            self._unclaimed[name].warn("%s on node %s serves nothing: %s", name,
                                       health.get("node"), health["recovery"]["failed"])

    async def _replace_holding(self, waiting: str, targets: list[str],
                               answering: list[str]) -> None:
        """Replace, as shards whose node left, the move targets that kept `waiting` from
        starting for HELD_TARGET_S: it serves none of its partitions meanwhile (not only those
        of the move, as the freeze did before it restarted), and a target hung, or cut off
        from Ray on a node that stays, may never release them. Once it is stopped and its
        journal fenced, no adopt of it can write a snapshot late, so `waiting` starts the next
        round. `answering` (the catch-up's) loses those replaced."""
        since = self._waiting_since.setdefault(waiting, time.monotonic())
        if time.monotonic() - since < HELD_TARGET_S:
            return
        # one not started is not hung: it waits on a target of its own (replaced in its
        # turn), or its start fails, and replacing it would keep `waiting` down longer
        for target in (t for t in targets if t in self.placement
                       and t not in self._waiting_since
                       and self._healths.get(t, {}).get("started", True)):
            why = (f"has not released the partitions of a move for "
                   f"{time.monotonic() - since:.0f} s, while {waiting} serves none of its own "
                   f"until it does")
            await _step(f"replacing {target}", self._replace(target, why))
            if target not in self.placement and target in answering:
                answering.remove(target)

    async def _tell_learner(self) -> None:
        learner = self.backend.learner()
        if self._learner_runs(await learner.status()):
            return  # asked without the lock: a learner that does not answer holds up nothing
        # under the lock, asked again: a catalog switch tells the learner before it decides
        async with self._reconfiguring:
            running = await learner.status()
            if not self._learner_runs(running):
                log.warning("the learner runs catalog %s (text %.12s%s), the cluster %s (text "
                            "%.12s; Ray restarted it?): switching it",
                            running.get("catalog_version"), running.get("catalog_digest"),
                            ", not told yet" if running.get("unconfirmed") else "",
                            self.catalog_version, catalog_digest(self.catalog_text))
                await learner.switch(self.catalog_text)

    def _learner_runs(self, status: dict[str, Any]) -> bool:
        """Whether a learner's `status` says it runs the running catalog, and was told so (an
        unconfirmed one merges nothing until then: merging.py). By the text's digest, not the
        version: a learner on another text under the running version would publish models
        that the shards take up into other actions' rows. One that gives none (made without
        its text, or by an older release) by the version: else every round would switch it
        again."""
        if status.get("unconfirmed"):
            return False
        digest = status.get("catalog_digest")
        if digest:
            return digest == catalog_digest(self.catalog_text)
        if not self._learner_by_version:  # once: it says so every round
            self._learner_by_version = True
            log.info("the learner gives no catalog digest (an older release, or made without "
                     "its text): it is checked by catalog version alone")
        return status.get("catalog_version") == self.catalog_version

    # -- the autoscaler's drains (autoscaling.py) ------------------------------------------

    async def release_node(self, node: str) -> None:
        """Drain `node` for the autoscaler, then mark it released: a step up takes it back
        while Ray has not removed it. Marked releasing first (saved): a drain that fails still
        leaves shards or a gateway there, and the control loop (or a restarted controller)
        finishes it, and then marks it released (`_finish_drains`); else a step up would ask
        for a new node, which the drained one's unit stands in for. A drain refused, or that
        failed before marking the node draining, leaves it serving and unmarked."""
        self.nodes.releasing.add(node)
        await self._save()
        try:
            await self._join_drain(node)
        except Exception:
            if node not in self.nodes.draining and self.nodes.disown(node):
                await self._save()
            raise
        if node in self.nodes.releasing:  # else an operator drained it meanwhile: theirs
            await self._released(node)

    async def _join_drain(self, node: str) -> dict[str, Any]:
        """`node`'s drain, joined where one runs (drains.py), the autoscaler's marks of it
        kept: drain_node, an operator's, drops them."""
        return await self.drains.join(node, lambda: self._drain(node))

    async def _released(self, node: str) -> None:
        """`node`, drained for the autoscaler, is one a step up may take back."""
        self.nodes.releasing.discard(node)
        self.nodes.released.add(node)
        await self._save()

    def _drained(self, node: str) -> bool:
        """Whether `node` is marked draining and holds no shard and no gateway."""
        return (node in self.nodes.draining and node not in self.placement.values()
                and not self.nodes.gateway_of(node))

    def drain_running(self, node: str) -> bool:
        return node in self._drains

    async def reuse_node(self, node: str) -> None:
        """Take back a node the autoscaler released, or whose drain for it is held and not
        running, that has not left: it serves again, and the control loop gives it a gateway
        and shards as a node that joined (one with shards left keeps them, and takes its share
        of partitions). A held drain made its gateway NOT_SERVING for good: it is stopped, and
        the control loop starts another."""
        async with self._reconfiguring:
            if node not in self.nodes.released | self.nodes.releasing or node in self._drains:
                raise NodeRefused(f"node {node} is not a node the autoscaler released or "
                                  f"holds a drain of")
            self.nodes.reuse(node)
            await self._save()
        await self.nodes.stop_gateway(node)
        log.warning("node %s, drained by the autoscaler and not removed yet, serves again", node)

    async def _grow(self) -> None:
        """New shards on the nodes that joined, as many as the policy gives each, then their
        share of partitions (bounded rounds, as ScaleShards moves them). A node is known once
        a rebalance with its shards ended, or they own partitions: until then each round gives
        it its share again (a crash before its first move leaves shards that own nothing,
        which a resume stops). Its share may be none, where shards outnumber partitions."""
        async with self._reconfiguring:
            wanted = self.nodes.wanted(self.nodes.alive(), self.placement)
            if not wanted:
                return
            for node, count in wanted.items():
                if count:  # none: its join was cut short, and is taken up again
                    log.warning("node %s joined: %d new shard(s), its shards take their share "
                                "of partitions", node, count)
                for _ in range(count):
                    await self._start_shard(await self._create_shard(node=node))
            # once placed: each save lowers the density to the placement's
            self.density.joined(self.nodes.shares(list(wanted)).values())
            await self._save()
            try:
                await self._rebalance(self._serving_shards())
            except BaseException:  # saved with the next save: a crash before gives it again
                owning = {self.placement.get(s) for s in self.map.shards_in_use()}
                self.nodes.known.update(n for n in wanted if n in owning)
                raise
            self.nodes.known.update(wanted)
            await self._save()

    async def _drop_gone_sinks(self) -> None:
        # an empty push asks each sink whether its process is the one that registered them
        sinks = sorted({sink for sink, _, _ in self.channel_watches})
        answers = await asyncio.gather(*(self.backend.sink(s).deliver([]) for s in sinks),
                                       return_exceptions=True)
        for sink, answer in zip(sinks, answers):
            if isinstance(answer, Gone):
                log.warning("watch sink %s is gone (%s): its channel watches go too", sink,
                            answer)
                for watch in sorted((w for w in self.channel_watches if w[0] == sink), key=str):
                    await self.watch_channel(*watch, active=False)

    async def _confirm_owned(self) -> None:
        # a target whose confirmation failed, or that an older controller never confirmed,
        # holds its partitions arriving: their timers would never fire (shard/handoff.py);
        # a call to every shard, so every CONFIRM_OWNED_S, not every round
        now = time.monotonic()
        if now - self._owned_confirmed < CONFIRM_OWNED_S:
            return
        async with self._reconfiguring:
            if self.map is not None:  # a stuck move holds back its partitions' alone
                await confirm_owned(self.backend, self.map, self.moving)
                self._owned_confirmed = now

    async def _uncrowd(self) -> None:
        """A node over its share of shards gives one up to the node furthest under its own
        (`Nodes.crowded`): a new shard there takes its partitions. Not while a move is not
        settled, nor while a shard is not started (a replacement, a restarted shard whose
        start waits or failed): the rebalance would fail, after the new shard started and
        before the old one stopped, round after round, one more shard each time."""
        async with self._reconfiguring:
            # `_grow`'s read where it changed nothing and this took the lock without waiting
            crowded = self.nodes.crowded(self.nodes.alive(again=True), self.placement)
            if (crowded is None or self._in_moves() or self.replacing or self._waiting_since
                    or self._unanswered & set(self.placement)):
                return
            busiest, emptiest = crowded
            victim = next(s for s, n in self.placement.items() if n == busiest)
            name = await self._create_shard(node=emptiest)
            await self._start_shard(name)
            target = [s for s in self._serving_shards() if s != victim]
            await self._rebalance(target)
            await self._retire([victim])

    async def _trim_gone_logs(self) -> None:
        now = time.time()  # the shards' clock: their logs' entries are stamped with it
        if not self.store.shared or now - self._logs_trimmed < DECISION_LOG_TRIM_S:
            return  # a store of this process only holds no shard's log
        self._logs_trimmed = now
        known = set(self.placement) | set(self.replacing) | {m.target for m in self.moving}
        for name in sorted(set(await asyncio.to_thread(self.store.decision_logs)) - known):
            try:
                gone = await asyncio.to_thread(self.store.decision_log, name)
                await asyncio.to_thread(gone.trim, now - DECISION_LOG_RETENTION_S,
                                        DECISION_LOG_MAX_BYTES, True)
            except Exception as exc:  # one log that fails must not spare the others
                log.warning("control loop: trimming the decision log of %s (a shard gone) "
                            "failed, tried again in %g s: %s: %s", name, DECISION_LOG_TRIM_S,
                            type(exc).__name__, exc)
