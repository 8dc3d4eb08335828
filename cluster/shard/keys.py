"""Idempotency keys, per customer: a retried event is applied once across crashes,
passivation and handoffs.

A customer's keys are part of its state (a `CustomerState` of residency.py): they ride in its
block, so they go to its home when it is passivated, into its partition's snapshot, and along
when the partition moves. Memory holds the keys of resident customers only, and the same key
from two customers is two keys. Retention is a window per customer: a retry is recognised for
at least KEY_RETENTION_S after the first application, among the customer's KEYS_PER_CUSTOMER
most recent keys; past either, it applies again. A caller can push out only the keys of the
customer it names. Outcomes' keys (Respond) are kept the same way, among the same keys. The
labels outcomes taught (outcomes.TaughtLabels) are records of another `IdempotencyKeys`, under
a block field, a cap and a retention of their own: neither pushes the other's records out.

What is kept of a key is a record of RECORD.size bytes whatever the key's length (a caller's
key may be MAX_KEY_LENGTH characters): 16 bytes of BLAKE2b over the key (two of a customer's
keys meet with a chance of 2**-128), its sequence number and when it was remembered, a
customer's records packed in one bytearray, oldest first. The digest covers the key alone, not
the customer: a link folds the visitor's records into the customer's, and they are then the
customer's keys. Blocks written before hold the keys themselves ("keys"); a shard from before
the records reads none of a block's "key_records" (README: an upgrade is not rolled back).

Every keyed event is looked up and then remembered (on issue 17's hot path), so past
INDEXED_PAST records both find a record through an open-addressing index of record numbers
(4 bytes a slot, four slots a record: at most half used, a lookup looks at a few), not by
scanning 8 KiB of records, and the digest computed by the lookup is kept for the remember.
Below, the records are searched: most customers hold a few keys, and issue 17 wants a resident
customer under 1 KiB.
"""
from __future__ import annotations

import hashlib
import struct
from array import array
from bisect import bisect_left, insort
from typing import Any, Callable

from kairos.cluster.settings import KEY_RETENTION_S, KEYS_PER_CUSTOMER, SHARD_ROUND_LIMIT

# An outcome's key is kept under this prefix, so an event's and an outcome's of the same text
# are two keys (an event's would have to start with it, NUL and all, to meet an outcome's)
OUTCOME_KEY = "outcome\x00"
DIGEST_BYTES = 16
RECORD = struct.Struct(f"<{DIGEST_BYTES}sQd")  # the key's digest, its sequence, when remembered
WHEN = struct.Struct("<d")  # a record's last field
# keys looked up and not found, kept for the remember that follows (a round's events are all
# looked up before any is remembered, so as many as a round takes); past this many, the lost
# ones are digested and looked up again
PENDING_DIGESTS = SHARD_ROUND_LIMIT
SLOTS_PER_RECORD, MOST_USED = 4, 0.5  # an index of 256 records: 1024 slots, 4 KiB
# records a customer holds before they are indexed: finding a digest among 16 (512 bytes) costs
# little more than a probe, and an index (an object, 64 slots) would add 400 bytes to them
INDEXED_PAST = 16


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=DIGEST_BYTES).digest()


class _Index:
    """Slot -> the number of the record there: its position plus `first` and the holes below
    it, numbers whose record was made the newest (so the records after it need no new numbers
    until the index is rebuilt). 0 is an empty slot, a number below `first` a record dropped
    since, whose slot a new record may take."""
    __slots__ = ("first", "holes", "next", "slots", "used")

    def __init__(self, data: bytearray):
        count = len(data) // RECORD.size
        size = 8
        while size < SLOTS_PER_RECORD * count:
            size *= 2
        self.slots, self.first, self.next, self.used = array("I", bytes(4 * size)), 1, 1, 0
        self.holes = array("I")  # ascending, none below `first`
        for digest, _, _ in RECORD.iter_unpack(data):
            self.place(digest)

    def find(self, data: bytearray, digest: bytes) -> int | None:
        slots, mask, first, holes = self.slots, len(self.slots) - 1, self.first, self.holes
        slot = hash(digest) & mask  # the index lives in memory only: the process's hash does
        while number := slots[slot]:
            # a hole's number points at the record after it: a match is that record's digest
            if number >= first and data.startswith(
                    digest, at := (number - first - bisect_left(holes, number)) * RECORD.size):
                return at
            slot = (slot + 1) & mask
        return None

    def full(self) -> bool:
        return self.used >= len(self.slots) * MOST_USED or self.next == 1 << 32

    def vacate(self, position: int) -> None:
        """The record at `position` is gone from there: its number is a hole."""
        start, holes = self.first + position, self.holes
        low, high = 0, len(holes)  # how many holes are below it: those with holes[i] - i <= start
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if holes[middle] - middle <= start else (low, middle)
        insort(holes, start + low)

    def drop_oldest(self, count: int) -> None:
        first, holes = self.first + count, self.holes
        gone = 0
        while gone < len(holes) and holes[gone] < first:
            first, gone = first + 1, gone + 1
        del holes[:gone]
        self.first = first

    def place(self, digest: bytes) -> None:
        """Index the newest record."""
        slots, mask, first = self.slots, len(self.slots) - 1, self.first
        slot = hash(digest) & mask
        while slots[slot] >= first:
            slot = (slot + 1) & mask
        self.used += not slots[slot]
        slots[slot] = self.next
        self.next += 1


def _index(data: bytearray) -> _Index | None:
    return _Index(data) if len(data) > INDEXED_PAST * RECORD.size else None


class _Records:
    """A customer's records, oldest first, and past INDEXED_PAST of them their index."""
    __slots__ = ("data", "index")

    def __init__(self, data: bytearray):
        self.data, self.index = data, _index(data)

    def find(self, digest: bytes) -> int | None:
        """Where the record of `digest` starts."""
        if self.index is not None:
            return self.index.find(self.data, digest)
        at = self.data.find(digest)
        while at != -1 and at % RECORD.size:  # the bytes met across two records' fields
            at = self.data.find(digest, at + 1)
        return None if at == -1 else at

    def add(self, digest: bytes, record: bytes, most: int) -> None:
        """Append the record of a digest not among these, the oldest out past `most` (the
        store's cap, passed in: a slot would cost every customer 8 bytes)."""
        self.data += record
        if len(self.data) > most * RECORD.size:
            self.drop_oldest(len(self.data) // RECORD.size - most)
        if self.index is None or self.index.full():
            self.index = _index(self.data)  # after the drop: sized for those kept
        else:
            self.index.place(digest)

    def renew(self, at: int, record: bytes) -> None:
        """Make the record at `at` the newest, as `record`."""
        del self.data[at:at + RECORD.size]
        self.data += record
        if self.index is None or self.index.full():
            self.index = _index(self.data)
        else:
            self.index.vacate(at // RECORD.size)
            self.index.place(record[:DIGEST_BYTES])

    def drop_oldest(self, count: int) -> None:
        del self.data[:count * RECORD.size]  # at the front, a bytearray moves nothing
        if self.index is not None:
            self.index.drop_oldest(count)


class IdempotencyKeys:
    """Records per customer under one block field: the idempotency keys by default; the
    labels outcomes taught (outcomes.TaughtLabels) are another instance, with a field, a cap
    and a retention of their own, so neither pushes the other's records out."""

    def __init__(self, clock: Callable[[], float], field: str = "key_records",
                 most: int | None = None, retention_s: float | None = None,
                 legacy: str | None = "keys"):
        """`most` and `retention_s` default to the keys' settings, read when constructed;
        `legacy`: the field of blocks written before the records, holding the keys themselves
        (None: nothing was kept before)."""
        self._clock = clock
        self._field, self._legacy = field, legacy
        self._most = KEYS_PER_CUSTOMER if most is None else most
        self._retention_s = KEY_RETENTION_S if retention_s is None else retention_s
        self._keys: dict[str, _Records] = {}  # customer -> its records
        # restores so far: a key looked up and not found is among its customer's records only
        # once remembered, or once a restore adds it
        self._restores = 0
        # (customer, key) looked up -> its digest, and if it was not found the restores by then
        # (a number, not the records: those of a customer evicted since would stay alive)
        self._pending: dict[tuple[str, str], tuple[bytes, int | None]] = {}

    def get(self, customer_id: str, key: str) -> int | None:
        """The customer's sequence number of the event first applied under `key`."""
        records = self._keys.get(customer_id)
        if records is None:
            return None
        digest = _digest(key)
        at = records.find(digest)
        if at is not None:
            _, sequence, when = RECORD.unpack_from(records.data, at)
            if when > self._clock() - self._retention_s:
                return sequence
        if len(self._pending) >= PENDING_DIGESTS:
            self._pending.clear()
        self._pending[customer_id, key] = (digest, self._restores if at is None else None)
        return None

    def remember(self, customer_id: str, key: str, sequence: int) -> None:
        """Keep `key` as the customer's newest (those past the window go when its block is
        written: the count bounds what memory holds)."""
        digest, absent_until = self._pending.pop((customer_id, key), (None, None))
        digest = digest or _digest(key)
        record = RECORD.pack(digest, sequence, self._clock())
        records = self._keys.get(customer_id)
        if records is None:
            self._keys[customer_id] = _Records(bytearray(record))
        elif absent_until == self._restores or (at := records.find(digest)) is None:
            records.add(digest, record, self._most)
        else:  # applied again (its window closed, or a replay): now the newest
            records.renew(at, record)

    def _expire(self, records: _Records) -> None:
        data, horizon = records.data, self._clock() - self._retention_s
        count = max(0, len(data) // RECORD.size - self._most)
        while count * RECORD.size < len(data) and \
                WHEN.unpack_from(data, count * RECORD.size + DIGEST_BYTES + 8)[0] <= horizon:
            count += 1
        records.drop_oldest(count)

    # -- a customer's keys ride along in its block (residency.py) ------------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        records = self._keys.get(customer_id)
        if records is None:
            return {}
        self._expire(records)
        return {self._field: bytes(records.data)}

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add a block's keys to the customer's (a block written before keys were kept per
        customer has none)."""
        old = extra.get(self._legacy, ()) if self._legacy else ()
        theirs = [*RECORD.iter_unpack(extra.get(self._field, b"")),
                  *((_digest(key), int(sequence), float(when)) for key, sequence, when in old)]
        if not theirs:
            return
        self._restores += 1
        entries = {digest: (sequence, when) for digest, sequence, when in theirs}
        mine = self._keys.get(customer_id)
        entries.update((digest, (sequence, when)) for digest, sequence, when in
                       RECORD.iter_unpack(mine.data if mine else b""))
        records = self._keys[customer_id] = _Records(bytearray().join(
            RECORD.pack(digest, *entry)
            for digest, entry in sorted(entries.items(), key=lambda item: item[1][1])))
        self._expire(records)

    def drop(self, customer_id: str, evicted: bool) -> None:
        self._keys.pop(customer_id, None)
        if evicted:
            # lookups waiting for a remember name their customer and key (ForgetCustomer
            # erases both from memory at once): all of them go, not a search of PENDING_DIGESTS
            # per eviction. They serve the handler call that made them, which no eviction
            # interrupts (a remember that finds none digests its key again)
            self._pending.clear()
