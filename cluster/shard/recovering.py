"""What a ShardHost (host.py) builds a Shard from, and rebuilds one from: the store, which
the Shard recovers its partitions from (snapshots + journal), on the host's worker thread
while nobody sees the new Shard yet; and, for a rebuild, what the failed Shard held that is
not in the store (its catalog, partitions, channel watches and moves under way); what a
build that failed says (`Failures`); and what a shard opens its store by (`StoreAt`), which
reads the claim on it (ownership.py `check_claimed`) before building it."""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.shard.handoff import Moving
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import directory_claim
from kairos.cluster.storage.ownership import UNCLAIMED_LOG_S
from kairos.cluster.storage.providers import directory_of, open_store
from kairos.cluster.storage.store import (JournalDisowned, Store, StoreNotClaimed,
                                          StoreUnavailable)
from kairos.cluster.throttled import ThrottledWarning

log = logging.getLogger("kairos.shard")
DISOWNED = ("JournalDisowned: journal {} is not this incarnation's (the controller started "
            "another, or the store lost its claim): down until the controller starts it again")


class Held(NamedTuple):
    """What a failed Shard held, which its rebuild serves again (`held_by`)."""
    compiled: CompiledCatalog
    owned: dict[int, int]
    channel_watches: list[tuple[str, str, str | None]]
    moving: Moving


def built(name: str, n_partitions: int, seed: int, store: Store, journal_policy: str,
          compiled: CompiledCatalog, owned: dict[int, int],
          channel_watches: Sequence[tuple[str, str, str | None]],
          sources: dict[int, str] | None, moving: Moving | None) -> tuple[Shard, dict[str, Any]]:
    """A Shard on `store` (its journal owned already: store.py, "Owners") that recovered the
    `owned` partitions (`sources`: the journal of a dead shard whose partitions these were,
    dropped once recovered), and what its recovery did. `moving`: the moves its failed
    predecessor left under way, frozen again as they were."""
    shard = Shard(name, compiled, owned, n_partitions, seed=seed, store=store,
                  journal_policy=journal_policy)
    shard.sync_commits = False  # Syncs makes each round durable before it is answered
    shard.decision_log.writer.in_background()  # off the data path too (decisionlog.py)
    for sink, channel, placement in channel_watches:
        shard.watch_channel(sink, channel, placement)
    moving = moving or Moving()
    recovery = shard.recover(sources, moving.leaving)
    shard.handoff.frozen_again(moving)
    log.info("%s recovered %d partitions, %d customers in memory, %d journal records "
             "replayed in %.2f s", name, len(owned), recovery["resident"],
             recovery["replayed"], recovery["seconds"])
    for source in {n for n in (sources or {}).values() if n != name}:
        shard.store.drop_journal(source)  # its partitions are snapshotted here now
    return shard, recovery


def held_by(failed: Shard) -> Held:
    """What a failed Shard's rebuild serves again. A partition on its way out is rebuilt too,
    and stays on its way out: the controller then undoes the move (thaw) or finishes it
    (release), and either needs it held here (the outage that failed this shard may well have
    failed the new owner's adopt). The homes its freezes took out of an unshared store go
    back first (handoff.py `unfreeze_homes`)."""
    moving = failed.handoff.moving()
    failed.handoff.unfreeze_homes()
    watches = [(w.sink, w.channel, w.placement) for w in failed.watches.channel]
    return Held(failed.compiled, dict(failed.owned), watches, moving)


class StoreAt:
    """What a shard opens its store by, `url` as its node reaches it (providers.py
    `open_store`), and reads the claim on it by (`claimed_by`, ownership.py `check_claimed`)
    without building a store where building one writes: DirectoryStore makes the directory
    and its folders, tightens their modes and deletes stale temporary files, so a directory's
    claim is read by its path (a directory missing holds none), and a shard that refuses the
    directory leaves it as it found it. Building a Redis store writes nothing: each check
    builds one (connecting anew: a node that reached another server by the name may reach
    the right one now), and the next call returns it, so a build opens the store once."""

    def __init__(self, url: str):
        self.url = url
        self.shared = url != "memory"  # open_store's memory is this process's own
        self._directory = directory_of(url)
        self._read: Store | None = None  # built to read the claim, not handed out yet

    def __call__(self) -> Store:
        store, self._read = self._read, None
        return store or open_store(self.url)

    def claimed_by(self) -> tuple[str, str] | None:
        if self._directory is not None:
            return directory_claim.claimed_by(self._directory)
        self._read = open_store(self.url)
        return self._read.claimed_by()


class Failures:
    """What a host's builds that failed say: health's `recovery` (`said`), and the log, each
    one, but a store that does not hold the cluster's claim (StoreNotClaimed) once, then every
    UNCLAIMED_LOG_S while it lasts, as the controller's copy (the builds are retried every
    few seconds, and the text names the store, the host and what to do)."""

    def __init__(self, name: str):
        self.name = name
        self._unclaimed: ThrottledWarning | None = None  # while builds meet StoreNotClaimed

    def said(self, exc: Exception) -> dict[str, Any]:
        """Health's `recovery` after a build that raised `exc`, logged."""
        unexpected = not isinstance(exc, (StoreUnavailable, OSError))
        recovery: dict[str, Any] = {"failed": f"{type(exc).__name__}: {exc}"}
        if isinstance(exc, JournalDisowned):  # what health says; the controller acts on it
            recovery = {"failed": DISOWNED.format(self.name), "disowned": True}
        if not isinstance(exc, StoreNotClaimed):
            self._unclaimed = None
            log.log(logging.ERROR if unexpected else logging.WARNING,
                    "%s: recovering from the store failed (%s); retrying", self.name,
                    recovery["failed"], exc_info=unexpected)
            return recovery
        self._unclaimed = self._unclaimed or ThrottledWarning(log, UNCLAIMED_LOG_S)
        self._unclaimed.warn("%s: recovering from the store failed (%s); retrying", self.name,
                             recovery["failed"])
        return {**recovery, "unclaimed": True}  # the controller logs it too (rounds.py)

    def passed(self) -> None:
        """A build served: a store refused again later is logged at once."""
        self._unclaimed = None
