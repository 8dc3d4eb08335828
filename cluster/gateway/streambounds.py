"""The bounds on a gateway's streams: how many of a method it serves at once, in all and by
caller (`Open`), and how long one of their waits may last (`WaitLimit`, `IdleLimit`)."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import AsyncIterator, Callable, Hashable, TypeVar

from kairos.cluster.transport.client import Busy

T = TypeVar("T")


class Open:
    """The streams of one method a gateway serves at once, counted in all and by caller (API
    key, host) against bounds read as each stream comes (`bounds()`: the gateway's, one key's,
    one host's; `setting` names them in refusals, KAIROS_<setting> and its _PER_KEY and
    _PER_HOST), so that one caller cannot take every place."""

    def __init__(self, what: str, setting: str, bounds: Callable[[], tuple[int, int, int]]):
        self.what = what
        self.setting = setting
        self.bounds = bounds
        self.open = 0
        self.callers: Counter[tuple[str, Hashable]] = Counter()

    def admit(self, key: Hashable, host: Hashable) -> list[tuple[str, Hashable]]:
        """Count a new stream of `key` (None without auth) from `host`; the groups it counts
        in, for `release`. Busy past the gateway's or a group's bound."""
        most, per_key, per_host = self.bounds()
        if self.open >= most:
            raise Busy(f"this gateway serves {self.open} {self.what} streams, its most "
                       f"(KAIROS_{self.setting})")
        callers = [(kind, who) for kind, who in (("key", key), ("host", host)) if who is not None]
        for kind, who in callers:
            if (running := self.callers[kind, who]) >= (per_key if kind == "key" else per_host):
                # its label (unique: `ApiKey.label`) where names repeat
                named = getattr(who, "label", None) or getattr(who, "name", who)
                whose = f"key '{named}'" if kind == "key" else f"host {who}"
                raise Busy(f"this gateway serves {running} {self.what} streams of {whose}, its "
                           f"most for one {kind} (KAIROS_{self.setting}_PER_{kind.upper()})")
        self.open += 1
        self.callers.update(callers)
        return callers

    def release(self, callers: list[tuple[str, Hashable]]) -> None:
        """A stream `admit` counted in `callers` ended."""
        self.open -= 1
        self.callers.subtract(callers)
        for caller in callers:
            if not self.callers[caller]:  # hosts come and go
                del self.callers[caller]


class WaitLimit:
    """Calls `on_expiry()`, once (`expired` is then True), when a wait has lasted `limit_s`: from
    `since` (the loop's time its caller sets as the wait begins; None when done); a timer a
    period, not one per wait (an asyncio.timeout around each cost 4-10 µs, this 0.3-0.7 µs)."""

    def __init__(self, limit_s: float, on_expiry: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit_s, self._on_expiry = limit_s, on_expiry
        self.since: float | None = None
        self.expired = False
        self._timer = self._loop.call_later(limit_s, self._check)

    def close(self) -> None:
        self._timer.cancel()

    def restart(self, limit_s: float) -> None:
        """Time waits against `limit_s` from now on, checked first `limit_s` from now: a
        shorter limit than the timer was set for is not waited out at the longer one's end."""
        self._timer.cancel()
        self._limit_s = limit_s
        self._timer = self._loop.call_later(limit_s, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self.since is not None and now - self.since >= self._limit_s:
            self.expired = True
            self._on_expiry()
        else:
            self._timer = self._loop.call_at(
                (now if self.since is None else self.since) + self._limit_s, self._check)


class IdleLimit(WaitLimit):
    """Ends the current task's waits for a stream's next item (`next`) that last `limit_s`,
    with TimeoutError(`why`)."""

    def __init__(self, limit_s: float, why: str) -> None:
        self._task, self._why = asyncio.current_task(), why
        super().__init__(limit_s, self._task.cancel)

    async def next(self, items: AsyncIterator[T]) -> T | None:
        """The next item; None at the end."""
        self.since = self._loop.time()
        try:
            return await anext(items)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            if not self.expired:
                raise
            self._task.uncancel()
            raise TimeoutError(self._why) from None
        finally:
            self.since = None
