"""Idempotency keys, per customer: a retried event is applied once across crashes,
passivation and handoffs.

A customer's keys are part of its state (a `CustomerState` of residency.py): they ride in its
block, so they go to its home when it is passivated, into its partition's snapshot, and along
when the partition moves. Memory holds the keys of resident customers only, and the same key
from two customers is two keys. Retention is a window per customer: a retry is recognised for
at least KEY_RETENTION_S after the first application, among the customer's KEYS_PER_CUSTOMER
most recent keys; past either, it applies again. A caller can push out only the keys of the
customer it names. Outcomes' keys (Respond) are kept the same way, among the same keys.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from kairos.cluster.settings import KEY_RETENTION_S, KEYS_PER_CUSTOMER

# An outcome's key is kept under this prefix, so an event's and an outcome's of the same text
# are two keys (an event's would have to start with it, NUL and all, to meet an outcome's)
OUTCOME_KEY = "outcome\x00"


class IdempotencyKeys:
    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        # customer -> key -> (the customer's sequence number for it, when it was remembered),
        # oldest first
        self._keys: dict[str, OrderedDict[str, tuple[int, float]]] = {}

    def get(self, customer_id: str, key: str) -> int | None:
        """The customer's sequence number of the event first applied under `key`."""
        entry = self._keys.get(customer_id, {}).get(key)
        if entry is None or entry[1] <= self._clock() - KEY_RETENTION_S:
            return None
        return entry[0]

    def remember(self, customer_id: str, key: str, sequence: int) -> None:
        keys = self._keys.setdefault(customer_id, OrderedDict())
        keys[key] = (sequence, self._clock())
        keys.move_to_end(key)
        self._trim(keys)

    def _trim(self, keys: OrderedDict[str, tuple[int, float]]) -> None:
        while len(keys) > KEYS_PER_CUSTOMER:
            keys.popitem(last=False)
        horizon = self._clock() - KEY_RETENTION_S
        while keys and next(iter(keys.values()))[1] <= horizon:
            keys.popitem(last=False)

    # -- a customer's keys ride along in its block (residency.py) ------------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        keys = self._keys.get(customer_id)
        if keys is None:
            return {"keys": []}
        self._trim(keys)
        return {"keys": [[key, sequence, when] for key, (sequence, when) in keys.items()]}

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add a block's keys to the customer's (a block written before keys were kept per
        customer has none)."""
        entries = [(key, (int(sequence), float(when)))
                   for key, sequence, when in extra.get("keys", ())]
        if not entries:
            return
        mine = self._keys.get(customer_id, OrderedDict())
        merged = sorted({**dict(entries), **mine}.items(), key=lambda item: item[1][1])
        keys = self._keys[customer_id] = OrderedDict(merged)
        self._trim(keys)

    def drop(self, customer_id: str, evicted: bool) -> None:
        self._keys.pop(customer_id, None)
