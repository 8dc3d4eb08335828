"""A gateway's runtime calls in flight, in all and by API key, and what a key may add to them.

Past GATEWAY_INFLIGHT_LIMIT no call is admitted; past GATEWAY_KEY_SHARE_FROM of it (`fair`), a
key only up to what it may hold (`Inflight.check_capacity`), so that one key's flood, or
several keys', leaves every other key some room. A call admitted counts from its check on,
no await between (`reserve`, `hold`), not from its runtime call: its handler may await before
that (the compile of the catalog its request is checked against), and a burst of one key's
calls all admitted before any was counted all got in, past the key's share and the limit.
"""
from __future__ import annotations

import asyncio
import contextvars
from typing import Callable, Coroutine

from kairos.cluster.gateway.auth import Denied, caller
from kairos.cluster.settings import GATEWAY_KEY_FLOOR, GATEWAY_KEY_SHARE_FROM, key_floor_most
from kairos.cluster.transport.client import Busy

# Whether the current call is counted in flight already (`hold`, `counted_task`): its runtime
# work then counts nothing more (`held`). Each call runs in a task (and context) of its own.
_held: contextvars.ContextVar[bool] = contextvars.ContextVar("kairos_held", default=False)


class Inflight:
    """The calls in flight of the gateway `name` (in all, and by key: `count`), against the
    limit `limit()` gives (read at each check)."""

    def __init__(self, name: str, limit: Callable[[], int]) -> None:
        self.name = name
        self._limit = limit
        self.inflight = 0
        self.inflight_of: dict[str, int] = {}  # by key label (`key_label`), none at 0

    def count(self, key: str | None, calls: int = 1) -> None:
        """`calls` more runtime calls in flight, of `key` (`key_label()`; None: of no key's
        share, not counted apart)."""
        self.inflight += calls
        if key is not None and calls:
            self.inflight_of[key] = self.inflight_of.get(key, 0) + calls

    def uncount(self, key: str | None, calls: int = 1) -> None:
        """`calls` that `count` counted are done: a key with none left is dropped."""
        self.inflight -= calls
        if key is not None:
            if held := self.inflight_of.get(key, 0) - calls:
                self.inflight_of[key] = held
            else:  # (none counted at all for an empty batch)
                self.inflight_of.pop(key, None)

    def reserve(self, adding: int = 1) -> str | None:
        """`adding` more calls of the caller's key counted in flight, if `check_capacity`
        admits them (Busy otherwise): checked and counted with no await between, so that the
        next check sees them. The key they count as, for the one `uncount` they need."""
        key = self.check_capacity(adding)
        self.count(key, adding)
        return key

    def hold(self, key: str | None) -> contextvars.Token:
        """The current call, just admitted (`check_capacity`, no await since), counts in
        flight as `key`'s, until its caller's `release` once it ends; its runtime work counts
        nothing more (`held`) until then."""
        self.count(key)
        return _held.set(True)

    def release(self, key: str | None, held: contextvars.Token) -> None:
        """The call `hold` counted (`held`, its token) has ended: uncounted, and work its task
        goes on with counts again."""
        self.uncount(key)
        _held.reset(held)

    def counted_task(self, work: Coroutine, key: str | None) -> asyncio.Task:
        """A task of `work`, a call that `reserve` counted as `key`'s: uncounted once the task
        ends (cancelled before it ran included), its runtime work counting nothing more."""
        context = contextvars.copy_context()
        context.run(_held.set, True)
        task = asyncio.get_running_loop().create_task(work, context=context)
        self.until_done(task, key)
        return task

    def until_done(self, done: asyncio.Future, key: str | None) -> None:
        """A call that `reserve` counted as `key`'s counts until `done` is: a stream event's
        reply until its shard answers (or it is given up), whether or not its caller has read
        it yet."""
        done.add_done_callback(lambda _: self.uncount(key))

    def check_capacity(self, adding: int = 1) -> str | None:
        """Busy if `adding` more calls of the caller's key would take the gateway past
        GATEWAY_INFLIGHT_LIMIT in flight, or, past GATEWAY_KEY_SHARE_FROM of it (`fair`), the
        key past what it may hold (`key_label`): in the last eighth of the room past the kept
        line (half way from `fair` to the limit), one call while it holds none; below that,
        up to the floor, always; below the kept line, its share (the kept line split among
        the keys in flight, at least the floor), or one batch while it holds none. The key
        admitted calls count as (`key_label`)."""
        key = key_label()
        if (refused := self._refusal(key, adding)) is not None:
            raise refused
        return key

    def _refusal(self, key: str | None, adding: int) -> Busy | None:
        """`check_capacity`'s refusal of `adding` more calls of `key`, None if admitted."""
        limit = self._limit()
        total = self.inflight + adding
        if total > limit:
            return Busy(f"gateway {self.name} has {self.inflight} calls in flight"
                        + _passing(adding, "limit"))
        fair = int(limit * GATEWAY_KEY_SHARE_FROM)
        if total <= fair or key is None:
            return None
        held = self.inflight_of.get(key, 0)
        kept = fair + (limit - fair) // 2
        last = -(-(limit - kept) // 8)  # at least 1 while there is room past the line
        if total > limit - last:
            if held or adding > 1:
                return self._past(fair, key, held, adding, f"the last {last} calls to the limit "
                                  f"are kept for keys holding none, one call each, so that a new "
                                  f"key gets in however many others hold their floor")
            return None
        floor = min(GATEWAY_KEY_FLOOR, key_floor_most(limit))
        if held + adding <= floor:
            return None
        if total > kept:
            return self._past(fair, key, held, adding, f"the calls from {kept} to the limit are "
                              f"kept for keys that may hold up to {floor} in flight (KAIROS_"
                              f"GATEWAY_KEY_FLOOR, at most 1/16 of that room), so that every key "
                              f"gets some in")
        keys = len(self.inflight_of)  # a key holding calls among them; one holding none gets in
        if held and held + adding > (share := max(floor, kept // keys)):
            among = "this key alone" if keys == 1 else f"the {keys} keys with calls in flight"
            return self._past(fair, key, held, adding, f"a key holding calls may hold up to its "
                              f"share, {share}, in flight: {kept} (the kept line) split among "
                              f"{among}, at least {floor}")
        return None

    def _past(self, fair: int, key: str, held: int, adding: int, why: str) -> Busy:
        """The refusal of a key's calls past `fair` in flight, saying `why`."""
        return Busy(f"gateway {self.name} has {self.inflight} calls in flight, {held} of them of "
                    f"key '{key}'" + (f", and {adding} more would exceed what it may hold" if
                                      adding > 1 else "") + f": past {fair} in flight "
                    f"(KAIROS_GATEWAY_KEY_SHARE_FROM of the limit), {why}")


def held() -> bool:
    """Whether the current call counts in flight already, from its admission until it ends
    (`Inflight.hold`, `Inflight.counted_task`): its runtime work is not counted again."""
    return _held.get()


def key_label() -> str | None:
    """What the current call counts in flight as: its API key's label (`ApiKey.label`, unique
    per configured key), None without auth, on a gateway of one key, or for work no call was
    admitted for (counting checks no right: the auth interceptor refused every call it did
    not admit): such calls are of no key's share."""
    try:
        key = caller()
    except Denied:
        return None
    return None if key is None else key.label


def _passing(adding: int, bound: str) -> str:
    """What a refusal of several calls at once (a batch's events) says more."""
    return f", and {adding} more would pass its {bound}" if adding > 1 else ""
