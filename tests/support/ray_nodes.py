"""Ray nodes started for a test, started once more when Ray's own start of one times out.

Ray gives a node's raylet a fixed 30 s to register with the GCS (ray/_private/node.py); on two
cores shared with a running Kairos and the test run it has, now and then, needed longer. The
timed-out start does not stop the processes it spawned: they are killed before the next try.
"""
from __future__ import annotations

import contextlib
from typing import Callable, TypeVar

import psutil

T = TypeVar("T")

NODE_STARTS = 2
# a joining node's raylet late to register with the GCS; a head's GCS late to write its port
NODE_TIMED_OUT = ("timed out during startup", "Timed out waiting for file")


def started(start: Callable[[], T]) -> T:
    """`start()`, which starts Ray nodes from this process, called again (once) when a node's
    start timed out, after the processes this process spawned meanwhile were killed."""
    for attempt in range(NODE_STARTS):
        before = {p.pid for p in psutil.Process().children()}
        try:
            return start()
        except Exception as exc:
            if not any(t in str(exc) for t in NODE_TIMED_OUT) or attempt + 1 == NODE_STARTS:
                raise
            _kill_spawned_since(before)
    raise AssertionError("unreachable")


def _kill_spawned_since(before: set[int]) -> None:
    # a node's processes are this process's children (Ray's Node spawns them); the workers of
    # the nodes already up are their raylets' children, so they are left alone
    for child in psutil.Process().children():
        if child.pid in before:
            continue
        with contextlib.suppress(psutil.Error):
            for process in [*child.children(recursive=True), child]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
