"""A bound on a step that cannot be interrupted: past its time, the command says why and exits.

`ray.init(address=...)` on a GCS that does not answer retries inside Ray's C++ client with
no end (Ray 2.60: "Failed to get cluster ID from GCS server", again and again), and a signal
or an exception cannot reach it there. A command that has started nothing yet may leave then.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def exit_unless_done(timeout_s: float | None, what: str, advice: str = "", status: int = 1,
                     on_timeout: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the block; if it has not finished after `timeout_s` (None: no bound), print that
    `what` did not happen within that time, and `advice`, run `on_timeout` (no other cleanup
    runs: it stops what was started) and end the process with `status`."""
    if timeout_s is None:
        yield
        return

    def give_up() -> None:
        print(f"error: {what} within {timeout_s:g} s{advice}", file=sys.stderr, flush=True)
        if on_timeout is not None:
            on_timeout()
        os._exit(status)

    timer = threading.Timer(timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
