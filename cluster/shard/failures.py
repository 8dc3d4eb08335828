"""How the log names an unexpected failure of a shard's round or job."""
from __future__ import annotations

import traceback

TRACE_FRAMES = 8  # innermost frames of an unexpected failure that the log names


def where_failed(exc: BaseException) -> str:
    """An unexpected failure's type and where it was raised, without its message: a round
    holds many callers' requests, and a message may quote a customer id (a KeyError does),
    which neither the log nor the other callers may see."""
    frames = traceback.extract_tb(exc.__traceback__)[-TRACE_FRAMES:]
    return f"{type(exc).__name__} at " + " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
        for frame in reversed(frames))
