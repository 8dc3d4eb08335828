"""A gateway's catalog compile held until the test lets it go, for the tests of what a request
refused by the running catalog does while the new catalog compiles (patched in for
kairos.cluster.gateway.calls.compiled_from_text)."""
from __future__ import annotations

import threading

from kairos.core.compiler import CompiledCatalog, compiled_from_text

HOLD_S = 60.0  # a test that never lets its compile go fails rather than hangs


class HeldCompile:
    """compiled_from_text that sets `entered` as a compile begins, then waits for `release`."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, text: str) -> CompiledCatalog:
        self.entered.set()
        self.release.wait(HOLD_S)
        return compiled_from_text(text)
