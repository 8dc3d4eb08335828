"""The decision memo: the inputs of a shard's recent decisions, kept for their outcomes to
learn from (DecisionEngine's `_remembered`), bounded, and shared among the catalog's channels
(`Memo`)."""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np


@dataclass
class Remembered:
    customer_id: str
    channel: int
    predictors: np.ndarray
    actions: tuple[int, ...]
    # the value factor of each action shown (as `actions`): what bounds a convert's value,
    # as the decision valued it, not as the client-written profile says at the outcome
    values: tuple[float, ...]
    # per action, what its outcomes taught (engine._TAUGHT_*): an accept then a convert of one
    # decision is one positive example, and a retried Respond teaches nothing again
    taught: dict[int, int] | None = None


class Memo:
    """The decisions whose inputs are kept for their outcomes, by decision id, at most
    `capacity`: the most recent, as one least-recently-made memo keeps them, except that a
    channel holding no more than `floor` (capacity // (2 x the catalog's channels)) loses no
    decision to another channel's new one. When full, the oldest decision goes whose channel
    holds more than the floor or is the new decision's own (which then holds as many as
    before). Ordinary traffic keeps the last `capacity` decisions whatever their channels; a
    flood of one channel's Decides (a decide-only key bound to it) leaves every other channel
    its floor of its most recent decisions. Within a channel it is one LRU: a flood on a
    channel pushes out that channel's other callers' decisions, and one not bound to a channel
    floods them all down to their floors.

    `_entries` holds them in the order made, an OrderedDict. One found oldest whose channel is
    at or below the floor is set aside, out of the way of those after it: moved to `_set_aside`
    and its channel's `_aside` (numbered in the order set aside). Every decision set aside is
    older than every one not, and they are numbered in the order made: so the oldest that may
    go is the oldest set aside of a channel that may lose one (the new decision's own, or one
    above the floor: `_over`), else the first of `_entries` that may. A decision is set aside
    once at most: O(1) a decision, amortised (a keep that finds a run of them oldest sets the
    run aside: at most the floors' sum, half the capacity, in all)."""

    def __init__(self, capacity: int, channels: int):
        self.capacity = capacity
        self.floor = capacity // (2 * channels)
        self._entries: OrderedDict[str, Remembered] = OrderedDict()
        self._count = [0] * channels  # decisions kept, per channel code
        self._set_aside: dict[str, Remembered] = {}
        # per channel code, the ids of its decisions set aside, oldest first, each numbered
        self._aside: list[OrderedDict[str, int]] = [OrderedDict() for _ in range(channels)]
        self._numbers = itertools.count()
        # the channels above the floor with decisions set aside (a keep while the memo was
        # not full took it there): theirs may go, and go before any not set aside
        self._over: set[int] = set()

    def get(self, decision_id: str) -> Remembered | None:
        """The decision's entry, set aside or not; None once it went."""
        entry = self._entries.get(decision_id)
        return self._set_aside.get(decision_id) if entry is None else entry

    def __len__(self) -> int:
        return len(self._entries) + len(self._set_aside)

    def values(self) -> Iterable[Remembered]:
        return itertools.chain(self._entries.values(), self._set_aside.values())

    def items(self) -> Iterable[tuple[str, Remembered]]:
        return itertools.chain(self._entries.items(), self._set_aside.items())

    def keep(self, decision_id: str, entry: Remembered) -> None:
        """Remember a new decision, letting one go if the memo was full; ValueError, the memo
        unchanged, for a channel code that is not one of the memo's."""
        channel = entry.channel
        if not 0 <= channel < len(self._count):
            raise ValueError(f"channel code {channel} is not one of the memo's "
                             f"{len(self._count)}")
        self._entries[decision_id] = entry
        self._count[channel] += 1
        if self._aside[channel] and self._count[channel] > self.floor:
            self._over.add(channel)
        if len(self._entries) + len(self._set_aside) > self.capacity:
            self._let_go(channel)

    def _let_go(self, channel: int) -> None:
        """Let the oldest decision go that a new decision of `channel` may push out."""
        aside, count, over = self._aside, self._count, self._over
        if over or aside[channel]:  # set aside: older than any other that may go
            gone = channel
            if over:  # rare: keeps that let none go (after a drop) took these past the floor
                mine = (channel,) if aside[channel] else ()
                gone = min((*mine, *over), key=lambda c: next(iter(aside[c].values())))
            del self._set_aside[aside[gone].popitem(last=False)[0]]
            count[gone] -= 1
            self._settle(gone)
            return
        entries, floor = self._entries, self.floor
        while True:  # none set aside may go: the oldest of the others that may
            decision_id, entry = entries.popitem(last=False)
            held_by = entry.channel
            if count[held_by] > floor or held_by == channel:
                count[held_by] -= 1
                return
            self._set_aside[decision_id] = entry
            aside[held_by][decision_id] = next(self._numbers)

    def _settle(self, channel: int) -> None:
        """Note whether the channel's decisions set aside may go for another's."""
        if self._aside[channel] and self._count[channel] > self.floor:
            self._over.add(channel)
        else:
            self._over.discard(channel)

    def __delitem__(self, decision_id: str) -> None:
        entry = self._entries.pop(decision_id, None)
        channel = (self._set_aside.pop(decision_id) if entry is None else entry).channel
        self._count[channel] -= 1
        self._aside[channel].pop(decision_id, None)
        self._settle(channel)

    def drop(self, customers: Callable[[str], bool]) -> int:
        """Let go of the decisions of the customers `customers` is true of; how many. A scan
        of the bounded memo, then O(1) a decision: dropping is rare (a forget, a partition
        moved away), and an index per customer would cost every decision."""
        gone = [d for d, m in self.items() if customers(m.customer_id)]
        for decision_id in gone:
            del self[decision_id]
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
        self._set_aside.clear()
        self._count[:] = [0] * len(self._count)
        for aside in self._aside:
            aside.clear()
        self._over.clear()
