"""Per-customer timers of one shard: armed by events, disarmed by events, due at a time.

A heap orders the due times; `armed` is the truth (re-arming or cancelling leaves a stale heap
entry behind, skipped when it surfaces), so arming, cancelling and firing are O(log n).
"""
from __future__ import annotations

import heapq


class Timers:
    def __init__(self) -> None:
        self.armed: dict[str, dict[int, float]] = {}  # customer -> timer -> due (epoch s)
        self._heap: list[tuple[float, str, int]] = []

    def __len__(self) -> int:
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
        """Every timer due at or before `now`, disarmed, in due order."""
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

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones."""
        if len(self._heap) > 2 * len(self) + 1024:
            self._heap = [(d, c, k) for d, c, k in self._heap
                          if self.armed.get(c, {}).get(k) == d]
            heapq.heapify(self._heap)
