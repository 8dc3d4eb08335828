"""A stream of acknowledged events for the recovery tests, and the check that follows it.

Each customer sends one event at a time, each with its own idempotency key, and retries it
(the same key) until it is acknowledged, as a channel gateway's client would. At the end every
customer's acknowledged sequence numbers must be 1, 2, ..., n and its profile must count n
events: no acknowledged event lost, none applied twice, none reordered.
"""
from __future__ import annotations

import asyncio
import threading

from kairos.cluster.transport.client import Busy, KairosClient
from kairos.cluster.transport.sync_client import SyncClient
from kairos.cluster.transport.backend import Unavailable

T0 = 1_795_629_600.0
CALL_TIMEOUT_S = 10.0
RETRY_S = 0.05


class AckedStream:
    def __init__(self, sync: SyncClient, customers: list[str]):
        self.sync = sync
        self.customers = customers
        self.acked: dict[str, list[int]] = {c: [] for c in customers}
        self.refused = 0  # attempts answered UNAVAILABLE or BUSY (then retried)
        self._stop = threading.Event()
        self._future = None

    def start(self) -> "AckedStream":
        self._future = self.sync.submit(self._run(self.sync.client))
        return self

    def stop(self) -> None:
        self._stop.set()
        self._future.result(timeout=120)

    def total(self) -> int:
        return sum(len(a) for a in self.acked.values())

    async def _run(self, client: KairosClient) -> None:
        await asyncio.gather(*(self._customer(client, c) for c in self.customers))

    async def _customer(self, client: KairosClient, customer: str) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            while True:
                try:
                    ack = await asyncio.wait_for(client.ingest_ack(
                        customer, "app_open", T0 + n, {}, f"{customer}/{n}"), CALL_TIMEOUT_S)
                    self.acked[customer].append(ack.sequence)
                    break
                except (Unavailable, Busy, asyncio.TimeoutError):
                    self.refused += 1
                    await asyncio.sleep(RETRY_S)
            await asyncio.sleep(0)

    def check(self) -> None:
        """Every acknowledged event is there once, in order."""
        for customer, acked in self.acked.items():
            assert acked == list(range(1, len(acked) + 1)), (customer, acked)
            applied = self.sync.profile(customer)["events_applied"]
            assert applied == len(acked), (customer, applied, len(acked))
