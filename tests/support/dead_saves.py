"""Dead saves of Redis chunked values (redis_chunks.py), as meta's and snapshots' tests leave
them for a later save to sweep: one that failed after its first chunk, and one killed after
filling the server."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

import pytest
import redis

from kairos.cluster.storage import redis_chunks


def leave_a_dead_save(save: Callable[[], object]) -> None:
    """Run `save` of a value in chunks, failing after its first chunk (left: the save's own
    clean-up fails too, on the patched `_chunk`) with its generation's key expiring at once: a
    dead save, still listed, its first chunk for a sweep to delete."""
    chunk = redis_chunks._chunk

    def first_only(value: redis_chunks.Value, generation: str, n: int) -> str:
        assert n == 0
        return chunk(value, generation, n)
    with pytest.MonkeyPatch.context() as dying, pytest.raises(AssertionError):
        dying.setattr(redis_chunks, "STALE_S", 0.001)
        dying.setattr(redis_chunks, "_chunk", first_only)
        save()
    time.sleep(0.05)  # its key expired by the server's clock


@contextlib.contextmanager
def full_of_a_dead_save(client: redis.Redis, admin: redis.Redis, value: redis_chunks.Value,
                        chunk: int) -> Iterator[None]:
    """A save of `value` killed after its 8 chunks of `chunk`, dead by the server's clock, and
    the server's maxmemory (`admin`'s) 1 MiB below what it then uses, until the block ends:
    Redis refuses every command queued in a MULTI while over it."""
    staged = redis_chunks.stage(client, value, os.urandom(8 * chunk), chunk)  # then killed
    client.pexpire(redis_chunks._alive(value, staged.member.partition(":")[0]), 1)
    time.sleep(0.05)
    limit = admin.config_get("maxmemory")["maxmemory"]
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] - (1 << 20))
    try:
        yield
    finally:
        admin.config_set("maxmemory", limit)
