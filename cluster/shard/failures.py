"""A shard's failures: how the log names an unexpected one, and closing a dropped Shard."""
from __future__ import annotations

import asyncio
import traceback

from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.store import StoreUnavailable

TRACE_FRAMES = 8  # innermost frames of an unexpected failure that the log names


def where_failed(exc: BaseException) -> str:
    """An unexpected failure's type and where it was raised, without its message: a round
    holds many callers' requests, and a message may quote a customer id (a KeyError does),
    which neither the log nor the other callers may see."""
    frames = traceback.extract_tb(exc.__traceback__)[-TRACE_FRAMES:]
    return f"{type(exc).__name__} at " + " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
        for frame in reversed(frames))


def close_dropped(failed: Shard) -> None:
    """Close a dropped Shard's journal (on the worker thread), syncing first what its earlier
    rounds wrote: they are answered once a sync covers them, and a sync after closing would
    cover nothing. The records of the round that failed were never written, and never are."""
    try:
        failed.journaling.sync()
    except StoreUnavailable:
        pass  # the journal failed: closing it cuts what was never synced
    try:
        failed.close()
    except OSError:
        pass


def close_unused(built: asyncio.Future) -> None:
    if not built.cancelled() and built.exception() is None:
        close_dropped(built.result()[0])
