"""The shard-wide table of string codes: profile slots hold a string as its code.

The catalog's strings come first and keep their codes for good (rules, `when` filters and
indicators compare against them, compiled into read-only arrays). The strings events bring are
interned after them as they are applied, so that a `last` feature or a `from` attribute over a
free-text field can show its value. Free text is unbounded, so the engine's owner frees, from
time to time (`due`, `compact`), the codes of the strings no resident profile holds any more,
and `intern` gives them to new strings: a flood of one customer's distinct strings costs room
only while a profile holds them, not the shard's room for everyone's text. A code in use never
moves, so a compaction writes no profile row and remaps no holder.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import numpy as np

log = logging.getLogger("kairos.strings")

# A pass is not due again before SPACING times its own length has gone by since it ended: the
# passes of a table short of room take at most about a tenth of the shard's time
SPACING = 10.0
# Rounds whose new strings make a round's headroom: a burst after quiet rounds is reckoned
HEADROOM_ROUNDS = 4


class StringTable:
    """Codes for every string the catalog and the resident profiles use; catalog strings
    come first.

    Codes are exact in a float64 slot. Rules only ever compare strings for equality, against
    catalog strings (interned at compile time) or another slot's code, so which code a string
    gets changes no rule's result. A freed code (`compact`) reads None until `intern` gives it
    to a new string: whoever holds a code must be among the holders a compaction is given.
    With no code free and `limit` codes taken, a new string gets the shared OVERFLOW code (it
    reads back as "<other>"): the last resort, when the strings the residents hold fill the
    table. That code is taken past the limit, once, and never freed (rows that hold it may
    come and go): it costs no room.
    """

    OVERFLOW_TEXT = "<other>"

    def __init__(self, limit: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.codes: dict[str, int] = {}
        self.strings: list[str | None] = []  # by code; None: a free code
        self.free: list[int] = []  # codes `compact` freed, which `intern` gives out again
        self.limit = limit
        self.clock = clock  # times the passes, for their spacing (tests give their own)
        self.overflow = -1
        # the catalog's strings, whose codes are never freed: None until `seal` (an engine
        # seals the table it is given; a copy keeps what its original's catalog was)
        self.fixed: int | None = None
        self.added = 0  # new strings ever asked for, overflowed ones too
        self._counted = 0  # `added` when `due` last looked: the strings of a round since
        self._rounds: deque[int] = deque(maxlen=HEADROOM_ROUNDS)  # the last rounds' strings
        self._headroom = 0  # the room the next round may want, as `due` last reckoned it
        self._compacted = 0  # `added` at the last compaction
        self._wait = 0  # new strings the next compaction waits for: its back-off
        self._not_before = -float("inf")  # `clock` time before which no pass is due
        self._spilled = False  # whether a string overflowed since the last compaction
        self._unreported = 0  # overflowed strings `overflowed` has not told of yet

    def intern(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            self.added += 1
            if self.free:
                code = self.free.pop()
                self.strings[code] = text
            elif len(self.strings) < self.limit:
                code = len(self.strings)
                self.strings.append(text)
            else:
                return self._overflow()
            self.codes[text] = code
        return code

    def _overflow(self) -> int:
        self._unreported += 1
        self._spilled = True
        if self.overflow < 0:
            self.overflow = len(self.strings)
            self.strings.append(self.OVERFLOW_TEXT)
        return self.overflow

    def text(self, code: float) -> str | None:
        return self.strings[int(code)]

    def copy(self) -> "StringTable":
        twin = StringTable(self.limit, self.clock)
        twin.codes, twin.strings, twin.free = dict(self.codes), list(self.strings), \
            list(self.free)
        twin.overflow, twin.fixed = self.overflow, self.fixed
        return twin

    def seal(self) -> None:
        """The strings in the table now are the catalog's (unless a seal said so before):
        `compact` never frees them."""
        if self.fixed is None:
            self.fixed = len(self.strings)
            self._counted = self._compacted = self.added  # the catalog's are no round's

    def overflowed(self) -> int:
        """Strings given the OVERFLOW code since the last call: for a shard's tallies."""
        count, self._unreported = self._unreported, 0
        return count

    def vacant(self) -> int:
        """Codes a new string may take: free ones, and those never taken below the limit."""
        return len(self.free) + max(self.limit - len(self.strings), 0)

    def due(self, spaced: bool = True) -> bool:
        """Whether to compact now. Asked once between rounds, and only there: it takes the new
        strings since its last call as a round's (so it changes the table's reckoning, not its
        codes). Due when fewer codes are vacant than a round may want (the most new strings of
        the last HEADROOM_ROUNDS rounds, at least room/64, at most room/4: a round's strings
        overflow if the table is full, as only a compaction between rounds frees codes), once
        SPACING times the last pass's length has gone by since it ended, and, after a pass
        that freed fewer codes than half the new strings since the one before it, once
        `_wait` more new strings came: room/16, then twice the last wait, up to room/4. A
        table its live strings fill would otherwise be scanned every few rounds for the few
        that died since; one whose passes free as many strings as come is compacted whenever
        it runs short, as often as the spacing lets. Not `spaced` (a replay, which serves no
        one and brings rounds faster than any spacing allows), the spacing is not waited for."""
        room = self._room()
        fresh, self._counted = self.added - self._counted, self.added
        self._rounds.append(fresh)
        self._headroom = min(max(max(self._rounds), room // 64, 1), max(room // 4, 1))
        return self.vacant() < self._headroom and self.added - self._compacted >= self._wait \
            and (not spaced or self.clock() >= self._not_before)

    def compact(self, held: np.ndarray | Callable[[], np.ndarray]) -> int:
        """Free the codes past the catalog's that no holder has, for `intern` to give out
        again; how many. `held`: every code in use (the resident profiles' string slots),
        those below the catalog's end or NaN ignored, or what gathers them (called after the
        back-off is set, so that a gather that fails backs off too). Codes in use keep their
        strings; the OVERFLOW code is never freed. All that may fail (memory) is built
        before the table changes, and the change allocates nothing: a pass that raises
        leaves the table as it was (and backs off as one that freed nothing)."""
        if self.fixed is None:
            raise ValueError("a string table is sealed before it is compacted")
        start = self.clock()
        room = self._room()
        interval = max(room // 16, 1)
        came, self._compacted = self.added - self._compacted, self.added
        spilled, self._spilled = self._spilled, False
        # as after a pass that freed nothing, should this one fail before it frees any
        self._wait = min(max(2 * self._wait, interval), max(room // 4, 1))
        try:
            freed = self._free_dead(held() if callable(held) else held)
        finally:
            end = self.clock()
            self._not_before = end + SPACING * (end - start)
        vacant, low = self.vacant(), max(room // 64, 1)
        if freed and 2 * freed >= came or vacant - self._headroom >= interval:
            # it frees codes about as fast as new strings come, or left room for many
            # rounds: the next pass is due when the table runs short, spaced in time only
            self._wait = 0
        elif not spilled:  # little freed, but no string overflowed since the last pass: not
            # a table its live strings fill (a bulk of new live strings came, say), so the
            # next pass comes before the room it left is used up, not after
            self._wait = min(self._wait, max(vacant - low, 0))
        return freed

    def _free_dead(self, held: np.ndarray) -> int:
        used = np.zeros(len(self.strings), bool)
        held = held[held >= self.fixed]  # NaN compares false
        used[held.astype(np.intp)] = True  # a scatter, not a sort of the residents' codes
        free = np.array(self.free, np.intp)
        if used[free].any():  # a bug: a holder the last pass was not given, or a stray code
            self._keep_held(free[used[free]])
        used[:self.fixed] = True
        used[free] = True
        if self.overflow >= 0:
            used[self.overflow] = True
        dead = np.flatnonzero(~used).tolist()
        free = self.free + dead
        codes, strings = self.codes, self.strings
        for code in dead:  # deleting a key and storing None allocate nothing
            codes.pop(strings[code], None)  # None: a code `_keep_held` took off the list
            strings[code] = None
        self.free = free
        return len(dead)

    def _keep_held(self, held_free: np.ndarray) -> None:
        """Take codes a profile holds off the free list, loudly: `intern` would give them to
        new strings, and their holders would read another text. They read None (their string
        was dropped when the code was freed) until a pass finds them dead."""
        log.error("string codes on the free list are held by resident profiles (%d: %s); "
                  "they are taken off it. A holder of codes was not given to a compaction",
                  len(held_free), held_free[:5].tolist())
        taken = set(held_free.tolist())
        self.free = [code for code in self.free if code not in taken]

    def _room(self) -> int:
        return self.limit - (self.fixed or 0)
