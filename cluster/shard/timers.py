"""Per-customer timers of one shard: armed by events, disarmed by events, due at a time.

A heap orders the due times; `armed` is the truth (re-arming or cancelling leaves a stale heap
entry behind, skipped when it surfaces), so arming, cancelling and firing are O(log n).

A customer passivated with armed timers takes them to its home in the store; `asleep` keeps,
per partition, the due time of each such customer's earliest timer (one entry a customer,
gone once it is resident again or its timer fell due), and `pop_due` first brings back those
whose time has come (`wake`), so their timers fire as a resident's do. A call wakes at most
WAKE_LIMIT: a backlog falling due at once (after a restart) loads that many homes a tick.
"""
from __future__ import annotations

import heapq
from typing import Callable

WAKE_LIMIT = 512


class Timers:
    def __init__(self, wake: Callable[[int, str], bool]) -> None:
        """`wake(partition, customer_id)`: make a passivated customer resident, its timers
        armed here; whether it is done with (False: not now, it is tried again later)."""
        self.armed: dict[str, dict[int, float]] = {}  # customer -> timer -> due (epoch s)
        self._heap: list[tuple[float, str, int]] = []
        # partition -> passivated customer -> its earliest timer's due time
        self.asleep: dict[int, dict[str, float]] = {}
        self._sleepers: list[tuple[float, str, int]] = []  # (due, customer, partition)
        self._wake = wake

    def __len__(self) -> int:
        """The timers armed in memory (a passivated customer's are in its home)."""
        return sum(len(t) for t in self.armed.values())

    def arm(self, customer_id: str, timer: int, due: float) -> None:
        self.armed.setdefault(customer_id, {})[timer] = due
        heapq.heappush(self._heap, (due, customer_id, timer))

    def cancel(self, customer_id: str, timer: int) -> None:
        mine = self.armed.get(customer_id)
        if mine is not None and mine.pop(timer, None) is not None and not mine:
            del self.armed[customer_id]

    def due_before(self, customer_id: str, when: float) -> list[tuple[float, int]]:
        """The customer's timers due at or before `when`, disarmed, earliest first."""
        mine = self.armed.get(customer_id)
        if not mine:
            return []
        fired = sorted((due, k) for k, due in mine.items() if due <= when)
        for _, k in fired:
            self.cancel(customer_id, k)
        return fired

    def pop_due(self, now: float) -> list[tuple[float, str, int]]:
        """Every timer due at or before `now`, disarmed, in due order (those of passivated
        customers due by then too, once `wake` made them resident)."""
        self._wake_due(now)
        fired = []
        while self._heap and self._heap[0][0] <= now:
            due, customer_id, k = heapq.heappop(self._heap)
            if self.armed.get(customer_id, {}).get(k) == due:
                self.cancel(customer_id, k)
                fired.append((due, customer_id, k))
        return fired

    def take(self, customer_id: str) -> dict[int, float]:
        """Disarm and return a customer's timers (it is leaving this shard)."""
        return self.armed.pop(customer_id, {})

    def disarm_all(self) -> None:
        """Forget every armed timer (they are armed again under a new catalog's numbering);
        passivated customers keep waiting: their homes name their timers."""
        self.armed, self._heap = {}, []

    # -- passivated customers ------------------------------------------------------------------

    def sleep(self, partition: int, customer_id: str, due: float) -> None:
        """The customer went to the store with its timers, the earliest due at `due`."""
        self.asleep.setdefault(partition, {})[customer_id] = due
        heapq.heappush(self._sleepers, (due, customer_id, partition))

    def woke(self, partition: int, customer_id: str) -> None:
        """The customer is resident again, or gone: nothing to wake it for."""
        mine = self.asleep.get(partition)
        if mine is not None and mine.pop(customer_id, None) is not None and not mine:
            del self.asleep[partition]

    def sleep_all(self, partition: int, sleepers: dict[str, float]) -> None:
        for customer_id, due in sleepers.items():
            self.sleep(partition, customer_id, due)

    def drop_partition(self, partition: int) -> None:
        self.asleep.pop(partition, None)  # its heap entries are stale now

    def _wake_due(self, now: float) -> None:
        later = []  # not woken (yet): back on the heap, whatever happens
        try:
            for _ in range(WAKE_LIMIT):
                if not self._sleepers or self._sleepers[0][0] > now:
                    break
                entry = due, customer_id, p = heapq.heappop(self._sleepers)
                if self.asleep.get(p, {}).get(customer_id) != due:
                    continue  # woken since, or asleep again until another time
                later.append(entry)
                if self._wake(p, customer_id):
                    later.pop()
                    self.woke(p, customer_id)
        finally:
            for entry in later:
                heapq.heappush(self._sleepers, entry)

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones."""
        if len(self._heap) > 2 * len(self) + 1024:
            self._heap = [(d, c, k) for d, c, k in self._heap
                          if self.armed.get(c, {}).get(k) == d]
            heapq.heapify(self._heap)
        if len(self._sleepers) > 2 * sum(map(len, self.asleep.values())) + 1024:
            self._sleepers = [(d, c, p) for d, c, p in self._sleepers
                              if self.asleep.get(p, {}).get(c) == d]
            heapq.heapify(self._sleepers)
