"""A controller's claim on its store (store.py, "Ownership"): taken before its cluster writes
anything, renewed every RENEW_S for as long as the controller lives, given up when it stops.

A claim the store keeps as a lease (Redis) outlives a controller that died by up to LEASE_S.
So a claim that finds another cluster's lease watches it before refusing: a lease its holder
renews changes within RENEW_S (the holder runs: StoreInUse), one whose holder is gone runs out
within LEASE_S and is then claimed, so a cluster that crashed never blocks the next for long.
A lock its holder's process keeps (a directory's flock) goes with that process: one that is
held is refused at once.

The same holds for the holder: a renewal that finds another cluster's lease knows the claim is
lost for good: `claim` and `check` raise StoreInUse from then on, and the controller stops its
cluster (ControllerActor). A lease it could not renew for LEASE_S - RENEW_S (the store did not
answer, a renewal hung, its event loop stalled) may have run out, but that alone loses nothing:
the renewals go on, and the first that reaches the store takes the lease again when no other
cluster holds it then (it warns that it lapsed, and that one may have written meanwhile), or
finds the other's lease. Stopping the cluster on a lapse would turn a Redis outage of a few
seconds, which shards ride out as UNAVAILABLE, into an outage until an operator starts it
again. While it lapsed another
cluster could have claimed the store and both written to it: that takes an operator starting
a second cluster on this store in those seconds, and lasts until the next renewal. Meanwhile
the control loop starts no shard that lost its journal's claim (`lapsed`): its start would
claim the journal from the other cluster's shard, and that one's claim it back.

A shard checks the claim before it writes (`check_claimed`): the store its node reaches by the
cluster's URL must hold its controller's claim, else that URL reaches another store there (a
directory on the node's own disk, `redis://localhost`), where what it writes is lost to the
rest of the cluster and fences fence nothing.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from typing import Protocol

from kairos.cluster.storage.store import Store, StoreInUse, StoreNotClaimed, redact

log = logging.getLogger("kairos.store")
LEASE_S = 15.0  # how long a lease outlives its last renewal
RENEW_S = 3.0  # how often its holder renews it: a few renewals may fail before it runs out
POLLS = 6  # how many times a renewal interval a claim looks again at another cluster's lease
# the most a renewal waits for the store (it is tried again), and a release for the call of
# one that gave up (it would claim the store again after it): within the 10 s runtime.stop
# gives a release
CALL_S = 4.0
# how often a shard down on a store that does not hold its cluster's claim is logged again,
# by the shard (recovering.py) and by the controller (rounds.py), while it stays down
UNCLAIMED_LOG_S = 60.0


def new_owner() -> str:
    """The token of a new cluster (runtime.start): its controller claims the store with it,
    again after each restart."""
    return uuid.uuid4().hex


class Claimed(Protocol):
    """What `check_claimed` reads: a Store, or what a shard opens its store by (recovering.py
    `StoreAt`), which reads a directory's claim before building the store."""

    url: str
    shared: bool

    def claimed_by(self) -> tuple[str, str] | None: ...


def check_claimed(store: Claimed, owner: str) -> None:
    """StoreNotClaimed, naming the store, this node and what to do, unless `store` (as this
    process reaches it) holds the claim of the cluster `owner` names: a shard's check as it
    opens the store to start or rebuild, before it writes anything. A store not `shared` (the
    memory of this process) is not checked: nobody else sees it anyway.

    A shard that meets it is down and tries again (host.py), as after any store failure.
    No claim is what the right store shows for a moment too: a lease runs out while the
    controller's renewals fail (the store or the controller stalled past LEASE_S) and is back
    at its next renewal, and a directory's lock is gone while Ray restarts the controller,
    until it claims again. A claim that names no cluster (a directory's owner.lock read while
    its claim is written, or an older Kairos's: directory_claim.py) is refused as such, not
    as another cluster's. Another cluster's claim on the right store means this cluster lost
    it, and its controller stops it within a renewal. Trying again writes nothing (it reads
    the claim), and serves once an operator mounted the right store, with no restart."""
    if not store.shared:
        return
    claim = store.claimed_by()
    if claim is not None and claim[0] == owner:
        return
    where = f"the store {redact(store.url)}, as host {socket.gethostname()} reaches it,"
    retried = "This shard writes nothing to it, serves nothing, and tries again"
    if claim is not None and not claim[0]:
        raise StoreNotClaimed(
            f"{where} holds a claim that names no cluster yet (its controller: "
            f"{claim[1] or 'unknown'}): a claim being written, or that of an older Kairos's "
            f"controller. {retried}")
    found = ("holds no cluster's claim: this host reaches another store by that name than "
             "the controller does (or the controller's claim lapsed a moment)") \
        if claim is None else \
        (f"is held by another Kairos cluster (its controller: {claim[1] or 'unknown'}): this "
         f"host reaches that cluster's store by the name (or this cluster lost it to that one)")
    raise StoreNotClaimed(
        f"{where} {found}. A directory store must be one directory every node mounts (NFSv4); "
        f"a Redis URL must reach the same server from every node. {retried}")


class StoreClaim:
    """The claim of the cluster `owner` names on `store`. `lease_s` and `renew_s`: how long the
    store keeps it past a renewal (LEASE_S for Redis, which sets it; a shorter one only gives
    the claim up sooner), and how often it is renewed."""

    def __init__(self, store: Store, owner: str, lease_s: float = LEASE_S,
                 renew_s: float = RENEW_S):
        self.store = store
        self.owner = owner
        self.lease_s, self.renew_s = lease_s, renew_s
        # what another cluster's error says of this one
        self.holder = (f"host {socket.gethostname()}, pid {os.getpid()}, since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        self._renewing: asyncio.Task | None = None
        self._calls: set[asyncio.Future] = set()  # renewals' store calls still running
        self._renewed = -math.inf  # when the last claim that succeeded began (monotonic)
        self._lost: str | None = None  # why the claim is lost, once it is
        self._lost_event = asyncio.Event()

    async def claim(self) -> None:
        """Claim the store (once a lease another cluster left has run out) and renew it from
        then on; StoreInUse while another cluster holds it, and once the claim is lost.
        Nothing more while claimed."""
        self.check()
        if self._renewing is not None and not self._renewing.done():
            return
        loop = asyncio.get_running_loop()
        seen, deadline = None, loop.time() + self.lease_s + self.renew_s
        while True:
            began = time.monotonic()
            try:
                await asyncio.to_thread(self.store.claim, self.owner, self.holder)
                break
            except StoreInUse as exc:
                renewed = seen is not None and exc.lease != seen
                if exc.lease is None or renewed or loop.time() >= deadline:
                    raise
                if seen is None:  # `kairos up` shows it (Ray forwards the controller's log)
                    log.warning("the store %s is held by another cluster: waiting up to %.0f s "
                                "for the lease of %s to run out or be renewed",
                                redact(self.store.url), deadline - loop.time(),
                                exc.holder)
                seen = exc.lease
            await asyncio.sleep(self.renew_s / POLLS)
        if seen is not None:
            log.warning("claimed the store %s once the lease of the cluster that held it ran "
                        "out", redact(self.store.url))
        self._renewed = began
        self._renewing = loop.create_task(self._renew())

    def lost(self) -> str | None:
        """Why the claim is lost (None while it is held, or not made): a renewal found
        another cluster's lease."""
        return self._lost

    def check(self) -> None:
        """StoreInUse once the claim is lost: the store may be another cluster's."""
        if (why := self.lost()) is not None:
            raise StoreInUse(why)

    async def until_lost(self) -> str:
        """Wait until the claim is lost; why."""
        await self._lost_event.wait()
        return self._lost

    def lapsed(self) -> bool:
        """Whether the claim was not renewed for `lease_s - renew_s` (or not made): its lease
        may have run out, and another cluster may hold the store now."""
        return time.monotonic() - self._renewed > self.lease_s - self.renew_s

    def _lose(self, why: str) -> None:
        self._lost = why
        self._lost_event.set()
        log.error("%s: this cluster writes to the store no more", why)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            if (why := await self._renewal()) is not None:
                self._lose(why)
                return

    async def _renewal(self) -> str | None:
        """Renew the claim (or take it again once it lapsed); why it is lost, if it is."""
        began = time.monotonic()
        call = asyncio.get_running_loop().run_in_executor(None, self.store.claim, self.owner,
                                                          self.holder)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        try:
            async with asyncio.timeout(CALL_S):  # a hung call is tried again; it runs on
                await asyncio.shield(call)
        except StoreInUse as exc:  # its lease ran out unrenewed, and another took it
            return f"this cluster lost its store to another: {exc}"
        except Exception as exc:  # the store does not answer (or hung): tried again
            log.warning("renewing the claim on the store failed: %s", exc or type(exc).__name__)
            return None
        if self.lapsed():
            log.warning("the claim on the store %s was not renewed for %.1f s (its lease, "
                        "%g s, may have run out): taken again, no other cluster holds it now; "
                        "one may have written to it meanwhile",
                        redact(self.store.url), began - self._renewed, self.lease_s)
        self._renewed = began
        return None

    async def release(self) -> None:
        """Stop renewing the claim and give it up (the controller is stopping), after the
        store calls of renewals under way or given up on (at most CALL_S): one that landed
        later would claim the store again, a lease nobody renews."""
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=CALL_S)
        await asyncio.to_thread(self.store.release, self.owner)
