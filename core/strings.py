"""The shard-wide table of string codes: profile slots hold a string as its code."""
from __future__ import annotations


class StringTable:
    """Codes for every string the catalog and the events use; catalog strings come first.

    Codes are exact in a float64 slot. Rules only ever compare against catalog strings, which
    are interned at compile time; strings first seen in events are added on the fly so that a
    `last` feature over a free-text field can show its value. Free text is unbounded, so past
    `limit` codes a new string gets the shared OVERFLOW code (it reads back as "<other>").
    """

    OVERFLOW_TEXT = "<other>"

    def __init__(self, limit: int = 1_000_000) -> None:
        self.codes: dict[str, int] = {}
        self.strings: list[str] = []
        self.limit = limit
        self.overflow = -1

    def intern(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            if len(self.strings) >= self.limit:
                return self._overflow()
            code = len(self.strings)
            self.codes[text] = code
            self.strings.append(text)
        return code

    def _overflow(self) -> int:
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
        return twin
