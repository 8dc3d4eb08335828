"""The shard-wide table of string codes: profile slots hold a string as its code.

The catalog's strings come first and keep their codes for good (rules, `when` filters and
indicators compare against them, compiled into read-only arrays). The strings events bring are
interned after them as they are applied, so that a `last` feature or a `from` attribute over a
free-text field can show its value; free text is unbounded, so the engine's owner compacts the
table from time to time (`due`, `compact`): it keeps only the strings some resident profile
still holds, renumbered after the catalog's, so that a flood of one customer's distinct strings
costs memory only while a profile holds them, not the shard's room for everyone's text.
"""
from __future__ import annotations

import numpy as np


class StringTable:
    """Codes for every string the catalog and the resident profiles use; catalog strings
    come first.

    Codes are exact in a float64 slot. Rules only ever compare strings for equality, and only
    against catalog strings (interned at compile time) or another slot's code, so renumbering
    the strings after the catalog's (`compact`) changes no rule's result. Past `limit` codes a
    new string gets the shared OVERFLOW code (it reads back as "<other>"): a last resort, when
    the strings the residents hold do not fit.
    """

    OVERFLOW_TEXT = "<other>"

    def __init__(self, limit: int = 1_000_000) -> None:
        self.codes: dict[str, int] = {}
        self.strings: list[str] = []
        self.limit = limit
        self.overflow = -1
        # the catalog's strings, whose codes never move: None until `seal` (an engine seals
        # the table it is given; a copy keeps what its original's catalog was)
        self.fixed: int | None = None
        self.added = 0  # new strings since the last compaction, overflowed ones too
        self.refused = 0  # of them, those given the OVERFLOW code
        self.kept = 0  # strings past the catalog's that the last compaction kept
        self._unreported = 0  # overflowed strings `overflowed` has not told of yet

    def intern(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            self.added += 1
            if len(self.strings) >= self.limit:
                return self._overflow()
            code = len(self.strings)
            self.codes[text] = code
            self.strings.append(text)
        return code

    def _overflow(self) -> int:
        self.refused += 1
        self._unreported += 1
        if self.overflow < 0:
            self.overflow = len(self.strings)
            self.strings.append(self.OVERFLOW_TEXT)
        return self.overflow

    def text(self, code: float) -> str:
        return self.strings[int(code)]

    def copy(self) -> "StringTable":
        twin = StringTable(self.limit)
        twin.codes, twin.strings, twin.overflow = dict(self.codes), list(self.strings), \
            self.overflow
        twin.fixed = self.fixed
        return twin

    def seal(self) -> None:
        """The strings in the table now are the catalog's (unless a seal said so before):
        `compact` keeps them where they are."""
        if self.fixed is None:
            self.fixed = len(self.strings)

    def overflowed(self) -> int:
        """Strings given the OVERFLOW code since the last call: for a shard's tallies."""
        count, self._unreported = self._unreported, 0
        return count

    def due(self) -> bool:
        """Whether a compaction is worth its cost (a pass over the residents' string slots):
        once as many new strings came as the last one kept, and at least a quarter of the
        room past the catalog's, so each costs at most a few row steps per new string; sooner
        when new strings are overflowing, as one may free room for them."""
        room = self.limit - (self.fixed or 0)
        return self.added >= max(room // 4, self.kept, 1) or \
            self.refused >= max(room // 64, 1)

    def compact(self, codes: np.ndarray) -> np.ndarray:
        """Keep the catalog's strings and those `codes` hold (every code in use: the resident
        profiles' string slots, NaN for none; overwritten), renumbered in their order after
        the catalog's, which keep theirs; `codes` in the new numbering (NaN stays NaN). The
        OVERFLOW code is kept only if some slot holds it."""
        if self.fixed is None:
            raise ValueError("a string table is sealed before it is compacted")
        nan = len(self.strings)  # where a NaN points: kept by nobody, NaN again
        np.copyto(codes, nan, where=np.isnan(codes))  # in place: a fifth of np.where's time
        index = codes.astype(np.intp)
        used = np.zeros(nan + 1, bool)
        used[index] = True  # a scatter, not a sort of the residents' codes
        used[:self.fixed] = True
        used[nan] = False
        kept = np.flatnonzero(used)
        renumbered = np.full(nan + 1, np.nan)
        renumbered[kept] = np.arange(len(kept), dtype=np.float64)
        old, overflow = self.strings, self.overflow
        self.strings = [old[k] for k in kept.tolist()]
        self.overflow = int(renumbered[overflow]) if overflow >= 0 and used[overflow] else -1
        self.codes = {text: code for code, text in enumerate(self.strings)
                      if code != self.overflow}
        self.kept = len(self.strings) - self.fixed
        self.added = self.refused = 0
        return renumbered[index]
