"""The exceptions the core raises; both kernel implementations share them (as msgpack does)."""
from __future__ import annotations


class KairosError(Exception):
    """Base of every error Kairos raises on purpose."""


def not_text(exc: UnicodeDecodeError) -> str:
    """What a file that should hold UTF-8 text (YAML, a key) and does not is said to be."""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


class CatalogError(KairosError, ValueError):
    """A catalog that cannot be compiled.

    The message names where: the file, line and column when known, the YAML path, and the
    action id when the problem is inside an action.
    """

    def __init__(self, reason: str, *, path: str = "", source: str = "", line: int = 0,
                 column: int = 0, action_id: str | None = None):
        self.reason = reason
        self.path = path
        self.source = source
        self.line = line
        self.column = column
        self.action_id = action_id
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.source or "<catalog>"
        if self.line:
            where += f":{self.line}:{self.column}"
        subject = self.path
        if self.action_id is not None:
            action = f"action '{self.action_id}'"
            subject = f"{subject} ({action})" if subject else action
        return f"{where}: {subject}: {self.reason}" if subject else f"{where}: {self.reason}"


class RuleError(KairosError, ValueError):
    """A rule expression that does not parse or type-check; `column` is 1-based in the rule."""

    def __init__(self, reason: str, column: int):
        self.reason = reason
        self.column = column
        super().__init__(f"column {column}: {reason}")


class InputError(KairosError, ValueError):
    """Bad input from a channel (event, context, outcome): names the field and the reason.

    The gateway maps it to gRPC INVALID_ARGUMENT; nothing has been applied when it is raised.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
