"""A controller's claim on its store (store.py, "Ownership"): taken before its cluster writes
anything, renewed every RENEW_S for as long as the controller lives, given up when it stops.

A claim the store keeps as a lease (Redis) outlives a controller that died by up to LEASE_S.
So a claim that finds another cluster's lease watches it before refusing: a lease its holder
renews changes within RENEW_S (the holder runs: StoreInUse), one whose holder is gone runs out
within LEASE_S and is then claimed, so a cluster that crashed never blocks the next for long.
A lock its holder's process keeps (a directory's flock) goes with that process: one that is
held is refused at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from kairos.cluster.storage.store import Store, StoreInUse, redact

log = logging.getLogger("kairos.store")
LEASE_S = 15.0  # how long a lease outlives its last renewal
RENEW_S = 3.0  # how often its holder renews it: a few renewals may fail before it runs out
POLL_S = 0.5  # how often a claim looks again at another cluster's lease


def new_owner() -> str:
    """The token of a new cluster (runtime.start): its controller claims the store with it,
    again after each restart."""
    return uuid.uuid4().hex


class StoreClaim:
    """The claim of the controller `owner` names on `store`."""

    def __init__(self, store: Store, owner: str):
        self.store = store
        self.owner = owner
        # what another cluster's error says of this one
        self.holder = (f"host {socket.gethostname()}, pid {os.getpid()}, since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        self._renewing: asyncio.Task | None = None
        self._claiming = asyncio.Lock()  # a release waits for a renewal under way

    async def claim(self) -> None:
        """Claim the store (once a lease another cluster left has run out) and renew it from
        then on; StoreInUse while another cluster holds it. Nothing more while claimed."""
        if self._renewing is not None:
            return
        loop = asyncio.get_running_loop()
        seen, deadline = None, loop.time() + LEASE_S + RENEW_S
        while True:
            try:
                await asyncio.to_thread(self.store.claim, self.owner, self.holder)
                break
            except StoreInUse as exc:
                renewed = seen is not None and exc.lease != seen
                if exc.lease is None or renewed or loop.time() >= deadline:
                    raise
                seen = exc.lease
            await asyncio.sleep(POLL_S)
        if seen is not None:
            log.warning("claimed the store %s once the lease of the cluster that held it ran "
                        "out", redact(self.store.url))
        self._renewing = loop.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            async with self._claiming:  # a release holds it, and cancels this loop waiting
                try:
                    await asyncio.to_thread(self.store.claim, self.owner, self.holder)
                except StoreInUse as exc:  # its lease ran out unrenewed, and another took it
                    log.error("this cluster lost its store to another: %s", exc)
                except Exception as exc:  # the store does not answer: tried again
                    log.warning("renewing the claim on the store failed: %s", exc)

    async def release(self) -> None:
        """Stop renewing the claim and give it up (the controller is stopping), after a
        renewal under way: it would claim the store again."""
        async with self._claiming:
            if self._renewing is not None:
                self._renewing.cancel()
                self._renewing = None
            await asyncio.to_thread(self.store.release, self.owner)
