"""What a ShardHost (host.py) builds a Shard from, and rebuilds one from: the store, which
the Shard recovers its partitions from (snapshots + journal), on the host's worker thread
while nobody sees the new Shard yet; and, for a rebuild, what the failed Shard held that is
not in the store (its catalog, partitions, channel watches and moves under way); and what a
build that failed says (`Failures`)."""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.shard.handoff import Moving
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.store import (JournalDisowned, Store, StoreNotClaimed,
                                          StoreUnavailable)

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


class Failures:
    """What a host's builds that failed say: health's `recovery` (`said`), and the log."""

    def __init__(self, name: str):
        self.name = name

    def said(self, exc: Exception) -> dict[str, Any]:
        """Health's `recovery` after a build that raised `exc`, logged."""
        unexpected = not isinstance(exc, (StoreUnavailable, OSError))
        recovery: dict[str, Any] = {"failed": f"{type(exc).__name__}: {exc}"}
        if isinstance(exc, JournalDisowned):  # what health says; the controller acts on it
            recovery = {"failed": DISOWNED.format(self.name), "disowned": True}
        elif isinstance(exc, StoreNotClaimed):  # the controller logs it (rounds.py)
            recovery["unclaimed"] = True
        log.log(logging.ERROR if unexpected else logging.WARNING,
                "%s: recovering from the store failed (%s); retrying", self.name,
                recovery["failed"], exc_info=unexpected)
        return recovery
