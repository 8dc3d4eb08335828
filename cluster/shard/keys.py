"""Idempotency keys, per customer: a retried event is applied once across crashes,
passivation and handoffs.

A customer's keys are part of its state (a `CustomerState` of residency.py): they ride in its
block, so they go to its home when it is passivated, into its partition's snapshot, and along
when the partition moves. Memory holds the keys of resident customers only, and the same key
from two customers is two keys. Retention is a window per customer: a retry is recognised for
at least KEY_RETENTION_S after the first application, among the customer's KEYS_PER_CUSTOMER
most recent keys; past either, it applies again. A caller can push out only the keys of the
customer it names. Outcomes' keys (Respond) are kept the same way, among the same keys.

What is kept of a key is a record of RECORD.size bytes whatever the key's length (a caller's
key may be MAX_KEY_LENGTH characters): 16 bytes of BLAKE2b over the key (two of a customer's
keys meet with a chance of 2**-128), its sequence number and when it was remembered, a
customer's records packed in one bytearray, oldest first. Blocks written before hold the keys
themselves ("keys").
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Callable

from kairos.cluster.settings import KEY_RETENTION_S, KEYS_PER_CUSTOMER

# An outcome's key is kept under this prefix, so an event's and an outcome's of the same text
# are two keys (an event's would have to start with it, NUL and all, to meet an outcome's)
OUTCOME_KEY = "outcome\x00"
DIGEST_BYTES = 16
RECORD = struct.Struct(f"<{DIGEST_BYTES}sQd")  # the key's digest, its sequence, when remembered


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=DIGEST_BYTES).digest()


def _find(records: bytearray, digest: bytes) -> int | None:
    """Where the record of `digest` starts."""
    at = records.find(digest)
    while at != -1 and at % RECORD.size:  # the bytes met across two records' fields
        at = records.find(digest, at + 1)
    return None if at == -1 else at


class IdempotencyKeys:
    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._keys: dict[str, bytearray] = {}  # customer -> its records, oldest first

    def get(self, customer_id: str, key: str) -> int | None:
        """The customer's sequence number of the event first applied under `key`."""
        records = self._keys.get(customer_id)
        at = None if records is None else _find(records, _digest(key))
        if at is None:
            return None
        _, sequence, when = RECORD.unpack_from(records, at)
        return None if when <= self._clock() - KEY_RETENTION_S else sequence

    def remember(self, customer_id: str, key: str, sequence: int) -> None:
        records = self._keys.setdefault(customer_id, bytearray())
        digest = _digest(key)
        at = _find(records, digest)
        if at is not None:  # applied again (its window closed, or a replay): now the newest
            del records[at:at + RECORD.size]
        records += RECORD.pack(digest, sequence, self._clock())
        self._trim(records)

    def _trim(self, records: bytearray) -> None:
        start = max(0, len(records) - KEYS_PER_CUSTOMER * RECORD.size)
        horizon = self._clock() - KEY_RETENTION_S
        while start < len(records) and RECORD.unpack_from(records, start)[2] <= horizon:
            start += RECORD.size
        del records[:start]

    # -- a customer's keys ride along in its block (residency.py) ------------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        records = self._keys.get(customer_id)
        if records is None:
            return {}
        self._trim(records)
        return {"key_records": bytes(records)}

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add a block's keys to the customer's (a block written before keys were kept per
        customer has none)."""
        theirs = [*RECORD.iter_unpack(extra.get("key_records", b"")),
                  *((_digest(key), int(sequence), float(when))
                    for key, sequence, when in extra.get("keys", ()))]
        if not theirs:
            return
        entries = {digest: (sequence, when) for digest, sequence, when in theirs}
        entries.update((digest, (sequence, when)) for digest, sequence, when in
                       RECORD.iter_unpack(self._keys.get(customer_id, b"")))
        records = self._keys[customer_id] = bytearray().join(
            RECORD.pack(digest, *entry)
            for digest, entry in sorted(entries.items(), key=lambda item: item[1][1]))
        self._trim(records)

    def drop(self, customer_id: str, evicted: bool) -> None:
        self._keys.pop(customer_id, None)
