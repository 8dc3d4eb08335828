"""Partition handoff between shards, as the controller drives it (control/controller.py).

For partition p moving from A to B in map version v: A `freeze`s p (its requests answer MOVED
naming v, never applied) and hands over p's customers, resident and, when the store is not
shared, passivated (each with its idempotency keys), with p's directory (and the tombstones of
forgotten customers' links), its passivated customers waiting for timers (residency.py's
sleepers), the watches of its customers not seen yet (watches.py's `unseen`) and the sinks
found Gone (`gone`; a payload of a shard older than these has none); B `adopt`s them and
snapshots p, so recovery finds p in B's journal from then on; once the controller has published v, A
`release`s p. A's freeze parks p (`park`: MOVED from then on), lets the pushes of p's customers
A still has for its sinks land (or, past a bound, drops them: sinks.py's `flush`), so none
lands after one of B's, and only then exports p (`export`), the views whose pushes were dropped
as not shown, so that B (or A, thawed) pushes them at the customer's next change. If the
adoption fails, B `release`s p (it may have adopted it) and A `thaw`s p and serves it again. A
release or a thaw fences p at its version (ownership.py): a freeze or an adopt of that version
or an older one arriving later (a call that timed out still runs, calls to an actor can run out
of order) is refused, so p never has two owners and never stays frozen behind a settled move.

An adopted partition is `arriving` until the move is confirmed: by a request its sender routed
under v or later (the map naming B was published, so the move is not undone), or by a
`confirm` of B (the controller settling the move done; a thaw of B, serving p again at a
later version, confirms it too). Until then B fires none of p's timers: an adopt whose call
failed after it was done here is undone (B releases p, A thaws it), and A fires them then.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from kairos.cluster.identity import Directory
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.durability import Durability
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.residency import Residency, checked_sleepers
from kairos.cluster.shard.watches import View, Watches, checked_unseen
from kairos.cluster.storage import blocks


@dataclass
class Moving:
    """What a shard rebuilt in place (host.py) keeps of the failed one's moves: partitions
    leaving (-> the version their MOVED names), moves settled (fenced) and partitions
    arriving, each as ownership.py has them; and the sinks it found Gone (watches.py)."""
    leaving: dict[int, int] = field(default_factory=dict)
    fenced: dict[int, int] = field(default_factory=dict)
    arriving: dict[int, int] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)


class Handoff:
    def __init__(self, ctx: ShardContext, ownership: Ownership, residency: Residency,
                 directory: Directory, journaling: Journaling, durability: Durability,
                 watches: Watches):
        self._ctx = ctx
        self._watches = watches
        self._ownership = ownership
        self._residency = residency
        self._directory = directory
        self._journaling = journaling
        self._durability = durability
        # partition -> the homes a freeze took out of an unshared store (a thaw puts them back)
        self._frozen: dict[int, dict[str, bytes]] = {}

    def freeze(self, partitions: Sequence[int], version: int) -> bytes:
        """Stop serving the partitions (requests answer MOVED with `version`) and hand over
        their customers, resident and passivated, as one packed payload (`park`, then
        `export`: a shard with sinks flushes their pushes in between, actor.py)."""
        self.park(partitions, version)
        return self.export(partitions, version)

    def park(self, partitions: Sequence[int], version: int) -> None:
        """Stop serving the partitions (requests answer MOVED with `version`): from here
        nothing of theirs changes or is decided, so what `export` hands over later is what
        they are now, but for what the pushes left unsent."""
        ownership = self._ownership
        ownership.check_unfenced(partitions, version, "freeze")
        for p in partitions:
            if p not in ownership.owned or p in ownership.leaving:
                raise ValueError(f"{self._ctx.name} cannot hand over partition {p}: "
                                 f"not serving it")
        # the homes Take and Forget left are deleted (else they would travel as live homes)
        # once a snapshot covers the records that asked (durability.py); none is written once
        # they are leaving
        self._durability.snapshot([p for p in partitions if p in self._journaling.deletes])
        for p in partitions:
            ownership.leaving[p] = version
            self._residency.timers.park(p)  # its sleepers wait: timers.py
            if not self._ctx.store.shared:  # homes travel with the partition
                self._frozen[p] = self._ctx.store.take_partition(p)

    def export(self, partitions: Sequence[int], version: int,
               unsent: Iterable[View] = ()) -> bytes:
        """The parked partitions' customers, resident and passivated, as one packed payload;
        `unsent`: views whose pushes were dropped, not shown (watches.py), here and in it. A
        partition thawed, or parked again by another move, since `park` is refused."""
        self._watches.unshown(unsent)  # first: a thaw that came between serves them so too
        self._ownership.check_unfenced(partitions, version, "freeze")
        for p in partitions:
            if self._ownership.leaving.get(p) != version:
                raise ValueError(f"{self._ctx.name} cannot hand over partition {p}: not "
                                 f"parked for the move of map version {version}")
        return blocks.pack({
            "partitions": list(partitions),
            "block": self._residency.export(self._residency.residents(partitions)),
            "passivated": {} if self._ctx.store.shared else
            {p: self._frozen.get(p, {}) for p in partitions},
            "directory": self._directory.export(partitions),
            "sleepers": {p: self._residency.sleepers(p) for p in partitions},
            "watches": self._watches.unseen(partitions), "gone": list(self._watches.gone)})

    def adopt(self, payload: bytes, version: int, make_room: Callable[[int], None]) -> int:
        """Take over partitions handed over by `freeze` in map `version`; the number of
        customers received (in memory, and with their homes when the store is not shared).
        `make_room(n)` compacts the string table if fewer than n codes are vacant: the
        block's strings are interned as it loads, outside any round, where no pass is due."""
        data = blocks.unpack(payload)
        self._ownership.check_unfenced(data["partitions"], version, "adopt")
        unseen = checked_unseen(data.get("watches", {}))  # before anything is taken in
        make_room(len(data["block"]["strings"]))
        received = set(self._residency.load(data["block"]))
        passivated = data["passivated"]
        self._ctx.store.put_many((int(p), customer_id, blob) for p, homes in passivated.items()
                                 for customer_id, blob in homes.items())
        for homes in passivated.values():
            received.update(homes)
        self._directory.load(data["directory"])
        for p in data["partitions"]:  # first: its sleepers join the due order on `confirm`
            self._residency.timers.park(p)
        for p, sleepers in data.get("sleepers", {}).items():
            self._residency.take_sleepers(int(p), checked_sleepers(sleepers))
        self._watches.take_unseen(unseen)
        self._watches.drop_sinks(data.get("gone", ()))  # and what the customers brought of them
        for p in data["partitions"]:
            self._ownership.owned[p] = version
            self._ownership.leaving.pop(p, None)
            self._ownership.arriving[p] = version
        self._durability.snapshot(data["partitions"])  # owned from here: recovery reads ours
        return len(received)

    def release(self, partitions: Sequence[int], version: int) -> None:
        """The move of map `version` is settled with another shard owning them: forget the
        partitions' customers (MOVED answers stay), and refuse its late steps. A partition
        granted here by a newer move is kept (this release came late: dropping it would leave
        it no owner)."""
        owned = self._ownership.owned
        self._ownership.fence(partitions, version)
        partitions = [p for p in partitions if owned.get(p, -1) <= version]
        self._residency.drop_partitions(partitions)  # one pass over the table for all
        for p in partitions:
            owned.pop(p, None)
            self._ownership.arriving.pop(p, None)
            self._frozen.pop(p, None)
            self._journaling.forget(p)
        self._directory.drop(partitions)
        self._watches.drop_partitions(partitions)  # those of customers not seen yet
        self._forget_decisions(set(partitions))

    def _forget_decisions(self, partitions: set[int]) -> None:
        """Drop the decision memo's entries of the partitions' customers: a forget of one
        reaches its new owner only, and the memo holds the id and the decision's inputs."""
        partition_of = self._ctx.partition_of  # one pass: Engine.forget scans it per customer
        self._ctx.engine.forget_decisions(lambda customer_id: partition_of(customer_id)
                                          in partitions)

    def unfreeze_homes(self) -> None:
        """Put the homes freezes took out of an unshared store back (a shard rebuilt from
        the store recovers its frozen partitions, then `frozen_again`)."""
        for p, homes in self._frozen.items():
            for customer_id, blob in homes.items():
                self._ctx.store.put(p, customer_id, blob)

    def moving(self) -> Moving:
        """The moves as this shard left them, for a shard rebuilt in its place."""
        ownership = self._ownership
        return Moving(dict(ownership.leaving), dict(ownership.fenced), dict(ownership.arriving),
                      list(self._watches.gone))

    def frozen_again(self, moving: Moving) -> None:
        """After a rebuilt shard recovered (`recover(sources, moving.leaving)`): the
        partitions that were frozen are again, as `freeze` left them, without a second
        payload; the moves settled before still refuse their late steps; and those adopted
        and not confirmed are still arriving (else the rebuilt target fires timers that the
        source of a move undone fires again); the dead sinks' registrations it recovered go."""
        self._watches.drop_sinks(moving.gone)
        self._ownership.fenced.update(moving.fenced)
        self._ownership.arriving.update(moving.arriving)
        for p in moving.arriving.keys() | moving.leaving.keys():
            self._residency.timers.park(p)
        for p, version in moving.leaving.items():
            self._ownership.leaving[p] = version
            if not self._ctx.store.shared:
                self._frozen[p] = self._ctx.store.take_partition(p)

    def thaw(self, partitions: Sequence[int], version: int) -> None:
        """The handoff failed: serve the partitions again, to senders that saw `version`.
        Idempotent (the controller repeats it until it is answered); a partition this shard
        does not hold is refused, as serving it would answer from an empty partition; one
        frozen since for a newer move, or granted here by one, is left so (this thaw came late:
        serving it again would make two owners, or lower its grant)."""
        for p in partitions:
            if p not in self._ownership.owned:
                raise ValueError(f"{self._ctx.name} cannot thaw partition {p}: not held here")
        self._ownership.fence(partitions, version)
        leaving, owned = self._ownership.leaving, self._ownership.owned
        partitions = [p for p in partitions
                      if leaving.get(p, version) <= version and owned[p] <= version]
        for p in partitions:
            leaving.pop(p, None)
            owned[p] = version
            for customer_id, blob in self._frozen.pop(p, {}).items():
                self._ctx.store.put(p, customer_id, blob)
        self.confirm(partitions, version)  # served at `version`: a move that brought it stays
        self._durability.snapshot(partitions)  # the failed adopter may have written its own

    def confirm(self, partitions: Sequence[int], version: int) -> None:
        """The move of map `version` that brought the partitions here is settled done: they
        are no longer arriving (their timers fire). Idempotent; a partition not arriving here,
        or arriving by a newer move, is left as it is."""
        arriving = self._ownership.arriving
        for p in partitions:
            if arriving.get(p, version + 1) <= version:
                del arriving[p]
            self._served(p)

    def routed_here(self, partition: int) -> None:
        """A request its sender routed under the map that moved the partition here (or a
        later one) was admitted: that map was published, so the move is done (`confirm`)."""
        self._ownership.arriving.pop(partition, None)
        self._served(partition)

    def _served(self, partition: int) -> None:
        if partition not in self._ownership.arriving and partition not in self._ownership.leaving:
            self._residency.timers.unpark(partition)  # its sleepers wake again
