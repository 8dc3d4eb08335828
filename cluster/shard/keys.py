"""Recent idempotency keys, per partition: they are part of a partition's snapshot and move
with it, so a retried event is applied once across crashes and handoffs."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from kairos.cluster.settings import KEYS_PER_PARTITION



class IdempotencyKeys:
    def __init__(self) -> None:
        self._keys: dict[int, OrderedDict[str, int]] = {}  # partition -> key -> sequence

    def get(self, partition: int, key: str) -> int | None:
        """The customer's sequence number of the event first applied under `key`."""
        return self._keys.get(partition, {}).get(key)

    def remember(self, partition: int, key: str, sequence: int) -> None:
        keys = self._keys.setdefault(partition, OrderedDict())
        keys[key] = sequence
        if len(keys) > KEYS_PER_PARTITION:
            keys.popitem(last=False)

    def export(self, partition: int) -> list[tuple[str, int]]:
        return list(self._keys.get(partition, {}).items())

    def load(self, partition: int, keys: Iterable[tuple[str, int]]) -> None:
        self._keys[partition] = OrderedDict((k, int(v)) for k, v in keys)

    def drop(self, partition: int) -> None:
        self._keys.pop(partition, None)
