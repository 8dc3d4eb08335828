"""Per-customer timers of one shard: armed by events, disarmed by events, due at a time.

A customer passivated with armed timers takes them to its home in the store; `asleep` keeps,
per partition, the due time of each such customer's earliest timer (one entry a customer,
gone once it is resident again or its timer fell due), and `pop_due` first brings back those
whose time has come (`wake`), so their timers fire as a resident's do. A call wakes at most
WAKE_LIMIT: a backlog falling due at once (after a restart) loads that many homes a tick.
The sleepers of a partition being handed over or arriving (handoff.py) must not wake here
yet: they are `park`ed, off the due order, until it is served again (`unpark`), so that
however many fall due meanwhile, they hold back no other partition's. Its residents' timers
that fall due meanwhile are `hold`: still armed (a handoff or snapshot carries them), off the
due order until then too, so that no tick walks them again.

The resident limit does not bound the sleepers: each stays in memory (about 160 bytes and its
id; 10 million cost some 2 GiB) until its timer falls due, however far off (the catalog does
not bound a timer's delay). Their count is the shard's `sleepers` statistic.
"""
from __future__ import annotations

import heapq
import math
from contextlib import closing
from typing import Callable, Generic, Hashable, Iterable, Iterator, TypeVar

WAKE_LIMIT = 512

Outer = TypeVar("Outer", bound=Hashable)
Inner = TypeVar("Inner", bound=Hashable)


class DueTable(Generic[Outer, Inner]):
    """Due times by (outer, inner) key, e.g. customer -> timer -> due. A heap orders them;
    the table is the truth (setting again or discarding leaves a stale heap entry behind,
    skipped when it surfaces), so setting, discarding and taking the earliest are O(log n).
    The entries of a `park`ed outer key stay set but are not due until it is unparked."""

    def __init__(self) -> None:
        self.by: dict[Outer, dict[Inner, float]] = {}
        self._heap: list[tuple[float, Outer, Inner]] = []
        self._parked: set[Outer] = set()  # their heap entries are stale

    def __len__(self) -> int:
        return sum(map(len, self.by.values()))

    def next_due(self) -> float:
        """At or before the earliest due time (a stale entry only makes it earlier), read
        without walking the entries."""
        return self._heap[0][0] if self._heap else math.inf

    def get(self, outer: Outer, inner: Inner) -> float | None:
        return self.by.get(outer, {}).get(inner)

    def set(self, outer: Outer, inner: Inner, due: float, ordered: bool = True) -> None:
        """Set the entry; not `ordered`, it is not due until it is (`order`)."""
        self.by.setdefault(outer, {})[inner] = due
        if ordered and outer not in self._parked:
            heapq.heappush(self._heap, (due, outer, inner))

    def order(self, entries: Iterable[tuple[float, Outer, Inner]]) -> None:
        """Make the entries due when their time comes, those still set so."""
        live = [entry for entry in entries if self._live(entry)]
        if len(live) < len(self._heap):
            for entry in live:
                heapq.heappush(self._heap, entry)
        else:  # at least half the heap then: one heapify is cheaper than a push each
            self._heap.extend(live)
            heapq.heapify(self._heap)

    def discard(self, outer: Outer, inner: Inner) -> None:
        mine = self.by.get(outer)
        if mine is not None and mine.pop(inner, None) is not None and not mine:
            del self.by[outer]

    def take(self, outer: Outer) -> dict[Inner, float]:
        """Remove and return everything under `outer` (its heap entries are stale now)."""
        self._parked.discard(outer)
        return self.by.pop(outer, {})

    def park(self, outer: Outer) -> None:
        """Leave `outer`'s entries out of `due` until `unpark` (they stay set)."""
        self._parked.add(outer)

    def unpark(self, outer: Outer) -> None:
        if outer in self._parked:
            self._parked.discard(outer)
            self.order((due, outer, inner) for inner, due in self.by.get(outer, {}).items())

    def clear(self) -> None:
        self.by, self._heap, self._parked = {}, [], set()

    def due(self, now: float, limit: float = float("inf")) -> Iterator[tuple[float, Outer, Inner]]:
        """The entries due at or before `now`, earliest first, at most `limit` of them; an
        entry the caller does not discard while it holds it stays set (and due)."""
        held: dict[tuple[float, Outer, Inner], None] = {}  # in the order yielded
        try:
            while self._heap and self._heap[0][0] <= now and len(held) < limit:
                entry = due, outer, inner = heapq.heappop(self._heap)
                # a key set to the same time twice has two heap entries: one walk, one yield
                # (set to another time during the walk, it is yielded again at that time)
                if self._live(entry) and entry not in held:
                    held[entry] = None
                    yield entry
        finally:  # whatever stopped the walk: those still set go back on the heap
            for entry in held:
                if self._live(entry):
                    heapq.heappush(self._heap, entry)

    def compact(self) -> None:
        """Drop stale heap entries (and copies: a key unparked before its entry surfaced has
        two) once they outnumber the live ones."""
        if len(self._heap) > 2 * len(self) + 1024:
            self._heap = [entry for entry in set(self._heap) if self._live(entry)]
            heapq.heapify(self._heap)

    def _live(self, entry: tuple[float, Outer, Inner]) -> bool:
        due, outer, inner = entry
        return self.get(outer, inner) == due and outer not in self._parked


class Timers:
    def __init__(self, wake: Callable[[int, str], bool]) -> None:
        """`wake(partition, customer_id)`: make a passivated customer resident, its timers
        armed here; whether it is done with (False: not now, it is tried again later)."""
        self._armed: DueTable[str, int] = DueTable()  # customer -> timer -> due (epoch s)
        # partition -> passivated customer -> its earliest timer's due time
        self._asleep: DueTable[int, str] = DueTable()
        # partition -> the timers `hold` keeps off the due order while it is held
        self._held: dict[int, list[tuple[float, str, int]]] = {}
        self._wake = wake

    @property
    def armed(self) -> dict[str, dict[int, float]]:
        return self._armed.by

    @property
    def asleep(self) -> dict[int, dict[str, float]]:
        return self._asleep.by

    def __len__(self) -> int:
        """The timers armed in memory (a passivated customer's are in its home)."""
        return len(self._armed)

    def next_due(self) -> float:
        """At or before the earliest due time of an armed timer or a passivated customer's."""
        return min(self._armed.next_due(), self._asleep.next_due())

    def sleeping(self) -> int:
        """The passivated customers waited for (their memory: the module's docstring)."""
        return len(self._asleep)

    def arm(self, customer_id: str, timer: int, due: float) -> None:
        self._armed.set(customer_id, timer, due)

    def hold(self, partition: int, customer_id: str, timer: int, due: float) -> None:
        """Arm a timer of the partition's (being handed over or arriving: the module's
        docstring) that is not to be due until `unpark`."""
        self._armed.set(customer_id, timer, due, ordered=False)
        self._held.setdefault(partition, []).append((due, customer_id, timer))

    def cancel(self, customer_id: str, timer: int) -> None:
        self._armed.discard(customer_id, timer)

    def due_before(self, customer_id: str, when: float) -> list[tuple[float, int]]:
        """The customer's timers due at or before `when`, disarmed, earliest first."""
        fired = sorted((due, k) for k, due in self.armed.get(customer_id, {}).items()
                       if due <= when)
        for _, k in fired:
            self.cancel(customer_id, k)
        return fired

    def pop_due(self, now: float, fits: Callable[[float, str, int], bool] = lambda *_: True
                ) -> list[tuple[float, str, int]]:
        """The timers due at or before `now`, disarmed, in due order (those of passivated
        customers due by then too, once `wake` made them resident), as long as `fits(due,
        customer_id, timer)` takes them: the first it refuses and those after it stay armed,
        the earliest due of the next call, so a backlog drains in due order over calls."""
        for _, partition, customer_id in self._asleep.due(now, WAKE_LIMIT):
            if self._wake(partition, customer_id):
                self.woke(partition, customer_id)
        fired = []
        with closing(self._armed.due(now)) as walk:  # closed: the refused one goes back
            for entry in walk:
                if not fits(*entry):
                    break
                self.cancel(entry[1], entry[2])
                fired.append(entry)
        return fired

    def take(self, customer_id: str) -> dict[int, float]:
        """Disarm and return a customer's timers (it is leaving this shard)."""
        return self._armed.take(customer_id)

    def disarm_all(self) -> None:
        """Forget every armed timer (they are armed again under a new catalog's numbering);
        passivated customers keep waiting: their homes name their timers."""
        self._armed.clear()
        self._held.clear()

    # -- passivated customers ------------------------------------------------------------------

    def sleep(self, partition: int, customer_id: str, due: float) -> None:
        """The customer went to the store with its timers, the earliest due at `due`."""
        self._asleep.set(partition, customer_id, due)

    def woke(self, partition: int, customer_id: str) -> None:
        """The customer is resident again, or gone: nothing to wake it for."""
        self._asleep.discard(partition, customer_id)

    def sleep_all(self, partition: int, sleepers: dict[str, float]) -> None:
        for customer_id, due in sleepers.items():
            self.sleep(partition, customer_id, due)

    def drop_partition(self, partition: int) -> None:
        """Forget the partition's sleepers and held timers (its residents were evicted)."""
        self._asleep.take(partition)
        self._held.pop(partition, None)

    def park(self, partition: int) -> None:
        """The partition is being handed over or arriving: its sleepers wait (the module's
        docstring), kept and carried as before."""
        self._asleep.park(partition)

    def unpark(self, partition: int) -> None:
        """The partition is served again: its sleepers wake and its held timers fire when
        due (at once, if overdue)."""
        self._asleep.unpark(partition)
        self._armed.order(self._held.pop(partition, ()))

    def compact(self) -> None:
        self._armed.compact()
        self._asleep.compact()
