"""Columnar profile state: one row per resident customer, owned by a shard.

A row holds the profile slots (see compiler.Layout), an interaction-history ring of
(action, channel, outcome, time), the number of events applied to the customer, which is
the customer's event sequence number (acks report it, so order can be checked end to end), and
the journal position (LSN) of the customer's last change, which the shard that owns it keeps
so that recovery knows which journal records a stored copy already holds, and whether the
customer has a home in the shard's store (a byte a row, where a set of ids took some 34), and
which of the shard's partitions it is a member of (`members`).
Contact policies are answered from the ring, so a customer's
whole state is one fixed-size record: easy to snapshot, passivate and move.

A row is stored as of the customer's clock; `profile_view` is how rules, predictors and a person
reading the profile see it at a given time.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from .compiler import CLOCK_SLOT, CompiledCatalog, View

HISTORY_EPOCH_S = 1_577_836_800.0  # 2020-01-01T00:00:00Z: ring times are int32 seconds after it
EMPTY = -1  # ring_action of an unused history entry
GROWTH = 1.5
# the index's slots are at most this full: linear probing looks at 1.5 slots a hit, 2.5 a miss
INDEX_LOAD = 0.5
INDEX_SLOTS = 1024  # the fewest
COLUMNS = ("values", "ring_action", "ring_channel", "ring_outcome", "ring_time", "ring_head",
           "applied", "lsn", "home", "partition")
NO_PARTITION = -1  # the `partition` of a row no shard has made a member of one


def profile_view(c: CompiledCatalog, row: np.ndarray, now: float) -> np.ndarray:
    """The row as seen at `now`: decayed features decayed to it, time_since features turned
    into seconds before it; a `now` before the row's clock decays nothing."""
    view = row.copy()
    clock = row[CLOCK_SLOT]
    dt = now - clock if clock == clock and now > clock else 0.0
    for s, kind in enumerate(c.layout.view_kind):
        if kind == View.DECAYED:
            view[s] = row[s] * 2.0 ** (-dt * c.layout.view_inv_half_life[s])
        elif kind == View.SINCE:
            view[s] = now - row[s]
    return view


@dataclass
class Record:
    """One customer's state, detached from the table (for passivation and moves)."""

    values: np.ndarray
    ring_action: np.ndarray
    ring_channel: np.ndarray
    ring_outcome: np.ndarray
    ring_time: np.ndarray
    ring_head: int
    applied: int = 0

    def equals(self, other: "Record") -> bool:
        return all(np.array_equal(getattr(self, k), getattr(other, k), equal_nan=True)
                   for k in ("values", "ring_action", "ring_channel", "ring_outcome",
                             "ring_time")) and self.ring_head == other.ring_head \
            and self.applied == other.applied


class RowIndex(Mapping):
    """Customer id -> row, as a dict would map them, without a Python object per customer.

    A dict of ids held some 85 bytes a customer besides its id (an entry, and an int object
    for a row past 256); this is open addressing with linear probing over a numpy array of
    rows (4 bytes a slot, two slots a customer or more), which reads the ids from the table's
    `ids` (by row), so an id is held once. Slots hold row + 1 (0: empty), so a table grown
    ahead stays pages nothing wrote. Hashes are Python's, which a str caches."""

    def __init__(self, ids: list):
        self._ids = ids
        self._count = 0
        self._resize(INDEX_SLOTS)

    def _resize(self, size: int) -> None:
        self._array = np.zeros(size, np.int32)
        self._slots = memoryview(self._array)  # an item from it is an int, faster than numpy's
        self._mask = size - 1
        if self._count:
            rows = np.flatnonzero(np.fromiter((c is not None for c in self._ids), np.bool_,
                                              len(self._ids)))
            self._place(rows, np.fromiter((hash(self._ids[r]) for r in rows.tolist()),
                                          np.int64, len(rows)))
        self.get = self._getter()

    def _getter(self) -> Callable[..., int | None]:
        """`get`, as a function over these slots (every request looks its customer up, some
        several times: a closure's variables are read faster than attributes, and calling it
        makes no bound method)."""
        slots, ids, mask = self._slots, self._ids, self._mask

        def get(key: Hashable, default: int | None = None) -> int | None:
            at = hash(key) & mask
            row = slots[at]
            while row:  # mostly a hit in the first slot
                if ids[row - 1] == key:
                    return row - 1
                at = (at + 1) & mask
                row = slots[at]
            return default
        return get

    def _place(self, rows: np.ndarray, hashes: np.ndarray) -> None:
        """Put rows whose keys are absent in their slots, all at once: each goes to the first
        free slot from its hash's on (one of those reaching a slot together takes it, the
        others go on to the next)."""
        at = hashes & self._mask
        while len(rows):
            free = self._array[at] == 0
            slots, first = np.unique(at[free], return_index=True)
            placed = np.flatnonzero(free)[first]
            self._array[slots] = rows[placed] + 1
            waiting = np.ones(len(rows), np.bool_)
            waiting[placed] = False
            rows, at = rows[waiting], (at[waiting] + 1) & self._mask

    def _find(self, key: Hashable) -> int:
        """The slot of `key`'s row, or of the empty slot that ends its probe (negative: ~it)."""
        slots, ids, mask = self._slots, self._ids, self._mask
        at = hash(key) & mask
        while True:
            row = slots[at]
            if not row:
                return ~at
            if ids[row - 1] == key:
                return at
            at = (at + 1) & mask

    def __getitem__(self, key: Hashable) -> int:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator:
        return (c for c in self._ids if c is not None)

    def add(self, row: int) -> None:
        """Index the row under its id in `ids` (an id not indexed yet)."""
        self._count += 1
        if self._count > len(self._array) * INDEX_LOAD:
            self._resize(len(self._array) * 2)  # which places every row with an id: this one
        else:
            self._slots[~self._find(self._ids[row])] = row + 1

    def pop(self, key: Hashable) -> int:
        """Unindex `key`, its row; KeyError if not indexed. The rows after it in its run move
        back where their probe would stop short of them (backward shift: no tombstones)."""
        gap = self._find(key)
        if gap < 0:
            raise KeyError(key)
        slots, ids, mask = self._slots, self._ids, self._mask
        found = slots[gap] - 1
        at = gap
        while True:
            at = (at + 1) & mask
            row = slots[at]
            if not row:
                break
            home = hash(ids[row - 1]) & mask
            # stays unless the gap lies cyclically between its home slot and where it is
            if (at - home) & mask >= (at - gap) & mask:
                slots[gap] = row
                gap = at
        slots[gap] = 0
        self._count -= 1
        return found


class ProfileTable:
    """The resident customers of a shard, indexed by customer id."""

    def __init__(self, compiled: CompiledCatalog, capacity: int = 1024):
        self.defaults = compiled.layout.defaults
        self.history_size = compiled.history_size
        self.ids: list[str | None] = []  # by row, for the rows ever taken
        self.index = RowIndex(self.ids)
        self.free: list[int] = []  # rows evicted (reset to an empty profile), to reuse
        self.used = 0  # rows ever taken: the rows past it have never been written
        self.generation = 0  # bumped when the arrays are reallocated
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity: int) -> None:
        """Grow the arrays to `capacity` rows. The rows past `used` stay zero pages that
        nothing wrote (np.zeros: untouched memory, not resident), so capacity reserved ahead
        costs address space, not memory (a shard reserves its resident limit, and never
        copies its arrays to grow); `row` writes an empty profile into one it takes."""
        old = getattr(self, "values", None)
        width, ring = len(self.defaults), self.history_size
        arrays = {
            "values": np.zeros((capacity, width), np.float64),
            "ring_action": np.zeros((capacity, ring), np.int16),
            "ring_channel": np.zeros((capacity, ring), np.int8),
            "ring_outcome": np.zeros((capacity, ring), np.int8),
            "ring_time": np.zeros((capacity, ring), np.int32),
            "ring_head": np.zeros(capacity, np.int32),
            "applied": np.zeros(capacity, np.int64),
            "lsn": np.zeros(capacity, np.int64),
            "home": np.zeros(capacity, np.bool_),
            "partition": np.zeros(capacity, np.int32),
        }
        for name, array in arrays.items():
            if old is not None:
                array[:self.used] = getattr(self, name)[:self.used]
            setattr(self, name, array)
        self.generation += 1

    @property
    def capacity(self) -> int:
        return len(self.values)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self.index

    def row(self, customer_id: str) -> int:
        """The customer's row, activating a fresh profile on first use."""
        row = self.index.get(customer_id)
        if row is None:
            if self.free:
                row = self.free.pop()
            else:
                if self.used == self.capacity:
                    self._allocate(int(self.capacity * GROWTH) + 1)
                row, self.used = self.used, self.used + 1
                self.values[row] = self.defaults
                self.ring_action[row] = EMPTY
                self.partition[row] = NO_PARTITION
                self.ids.append(None)
            self.ids[row] = customer_id
            self.index.add(row)
        return row

    def rows(self, customer_ids) -> np.ndarray:
        return np.fromiter((self.row(c) for c in customer_ids), np.int64)

    def export(self, customer_id: str) -> Record:
        row = self.index[customer_id]
        return Record(self.values[row].copy(), self.ring_action[row].copy(),
                      self.ring_channel[row].copy(), self.ring_outcome[row].copy(),
                      self.ring_time[row].copy(), int(self.ring_head[row]),
                      int(self.applied[row]))

    def load(self, customer_id: str, record: Record) -> int:
        row = self.row(customer_id)
        self.values[row] = record.values
        self.ring_action[row] = record.ring_action
        self.ring_channel[row] = record.ring_channel
        self.ring_outcome[row] = record.ring_outcome
        self.ring_time[row] = record.ring_time
        self.ring_head[row] = record.ring_head
        self.applied[row] = record.applied
        return row

    def evict(self, customer_id: str) -> None:
        """Forget the customer's row (after passivation, a move or erasure) and reuse it."""
        row = self.index.pop(customer_id)
        self.ids[row] = None
        self.values[row] = self.defaults
        self.ring_action[row] = EMPTY
        self.ring_channel[row] = 0
        self.ring_outcome[row] = 0
        self.ring_time[row] = 0
        self.ring_head[row] = 0
        self.applied[row] = 0
        self.lsn[row] = 0
        self.home[row] = False
        self.partition[row] = NO_PARTITION
        self.free.append(row)

    def members(self, partition: int) -> list[str]:
        """The ids of the rows a shard made members of `partition` (its `partition` column:
        4 bytes a row, where a set of ids per partition took some 40 a customer)."""
        rows = np.flatnonzero(self.partition[:self.used] == partition)
        return [self.ids[row] for row in rows.tolist()]

    def housed(self) -> int:
        """How many rows have a home in the store."""
        return int(np.count_nonzero(self.home[:self.used]))

    def nbytes(self) -> int:
        """Bytes of the arrays (every allocated row, used or not)."""
        return sum(getattr(self, k).nbytes for k in COLUMNS)
