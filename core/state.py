"""Columnar profile state: one row per resident customer, owned by a shard.

A row holds the profile slots (see compiler.Layout), an interaction-history ring of
(action, channel, outcome, time), the number of events applied to the customer, which is
the customer's event sequence number (acks report it, so order can be checked end to end), and
the journal position (LSN) of the customer's last change, which the shard that owns it keeps
so that recovery knows which journal records a stored copy already holds, and whether the
customer has a home in the shard's store (a byte a row, where a set of ids took some 34), and
which of the shard's partitions it is a member of (`members_of`).
Contact policies are answered from the ring, so a customer's
whole state is one fixed-size record: easy to snapshot, passivate and move.

A row is stored as of the customer's clock; `profile_view` is how rules, predictors and a person
reading the profile see it at a given time.
"""
from __future__ import annotations

import contextlib
import mmap
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ._rowindex import Ids, RowIndex
from .compiler import CLOCK_SLOT, CompiledCatalog, View

HISTORY_EPOCH_S = 1_577_836_800.0  # 2020-01-01T00:00:00Z: ring times are int32 seconds after it
EMPTY = -1  # ring_action of an unused history entry
GROWTH = 1.5
INDEX_SLOTS = 1024  # the fewest slots of the id index (_rowindex.pyx)
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


# A column under this is np.zeros: clearing it costs little, where a mapping of its own costs
# two system calls and a page (a table of one row took 182 us, against 7)
OWN_PAGES_BYTES = 1 << 20
# From this, huge pages, as numpy asks for them for np.zeros (unless NUMPY_MADVISE_HUGEPAGE=0):
# a decision reads random rows of the columns, 1.4-1.7x slower on 4 KiB pages (a probe:
# 400,000 rows of a 600,000-row table)
HUGE_PAGES_BYTES = 4 << 20
_HUGE_PAGES = os.environ.get("NUMPY_MADVISE_HUGEPAGE", "1").strip() != "0"


def _zero_pages(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros that take no memory until written (with huge pages, a 2 MiB page at a time): a
    column from OWN_PAGES_BYTES in a private anonymous mapping of its own. np.zeros takes them
    from calloc, and once the process has freed a block of up to 32 MiB glibc serves blocks
    that size from its heap, clearing what it reuses: a 2.1 million row table was then 52 MB
    resident and 40 ms of clearing as it was made (a catalog switch, a test's every shard),
    its rows never taken."""
    count = int(np.prod(shape))
    size = count * np.dtype(dtype).itemsize
    if size < OWN_PAGES_BYTES:
        return np.zeros(shape, dtype)
    try:
        pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    except OSError as exc:  # what np.zeros raises
        raise MemoryError(f"no room for a profile column of {size:,} bytes: {exc}") from exc
    if size >= HUGE_PAGES_BYTES and _HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel without them (EINVAL), as numpy does
            pages.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(pages, dtype, count).reshape(shape)


class ProfileTable:
    """The resident customers of a shard, indexed by customer id."""

    def __init__(self, compiled: CompiledCatalog, capacity: int = 1024):
        self.defaults = compiled.layout.defaults
        self.history_size = compiled.history_size
        self.ids = Ids()  # by row, for the rows ever taken
        self.index = RowIndex(self.ids, INDEX_SLOTS)
        # rows evicted (reset to an empty profile), to reuse: C ints, not an int object and a
        # list entry each (36 bytes) after a mass eviction
        self.free = array("q")
        self.used = 0  # rows ever taken: the rows past it have never been written
        self.generation = 0  # bumped when the arrays are reallocated
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity: int) -> None:
        """Grow the arrays to `capacity` rows. The rows past `used` stay zero pages that
        nothing wrote (`_zero_pages`: untouched memory, not resident), so capacity reserved
        ahead costs address space, not memory (a shard reserves its resident limit, and never
        copies its arrays to grow); `row` writes an empty profile into one it takes."""
        old = getattr(self, "values", None)
        width, ring = len(self.defaults), self.history_size
        arrays = {
            "values": _zero_pages((capacity, width), np.float64),
            "ring_action": _zero_pages((capacity, ring), np.int16),
            "ring_channel": _zero_pages((capacity, ring), np.int8),
            "ring_outcome": _zero_pages((capacity, ring), np.int8),
            "ring_time": _zero_pages((capacity, ring), np.int32),
            "ring_head": _zero_pages((capacity,), np.int32),
            "applied": _zero_pages((capacity,), np.int64),
            "lsn": _zero_pages((capacity,), np.int64),
            "home": _zero_pages((capacity,), np.bool_),
            "partition": _zero_pages((capacity,), np.int32),
        }
        for name, column in arrays.items():
            if old is not None:
                column[:self.used] = getattr(self, name)[:self.used]
            setattr(self, name, column)
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
            if not isinstance(customer_id, str):  # before a row is taken for it
                raise TypeError(f"a customer id is a str, not {type(customer_id).__name__}")
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

    def members_of(self, partitions: Iterable[int] | None = None) -> dict[int, list[str]]:
        """Each of `partitions` (in their order; every partition with members if None) with
        the ids of the rows a shard made members of it, sorted. The `partition` column (4
        bytes a row, where a set of ids per partition took some 40 a customer) is read once
        for them all, not once a partition: a snapshot of many is one pass."""
        members = {} if partitions is None else {p: [] for p in partitions}
        if partitions is not None and not members:
            return members  # asked for none: not worth a read
        column = self.partition[:self.used]
        rows = np.flatnonzero(column != NO_PARTITION if partitions is None
                              else np.isin(column, list(members), kind="table"))
        # by partition, each in row order: ids taken in order (a bulk load) sort fastest so
        rows = rows[np.argsort(column[rows], kind="stable")]
        starts = np.flatnonzero(np.diff(column[rows], prepend=NO_PARTITION - 1))
        ids = self.ids
        listed = [ids[r] for r in rows.tolist()]
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)]):
            members[int(column[rows[start]])] = sorted(listed[start:end])
        return members

    def housed(self) -> int:
        """How many rows have a home in the store."""
        return int(np.count_nonzero(self.home[:self.used]))

    def nbytes(self) -> int:
        """Bytes of the arrays (every allocated row, used or not)."""
        return sum(getattr(self, k).nbytes for k in COLUMNS)
