"""Redis errors as the store's: what redis-py raises when the server cannot be reached,
times out, is loading, is a read-only replica or refuses a command, as StoreUnavailable (and
WatchError, which redis-py raises for a connection that failed while it watched keys); and
ReplicasBehind, a write the replicas do not hold (redis_replicas.py)."""
from __future__ import annotations

import functools

import redis

from kairos.cluster.storage.store import StoreUnavailable

ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
          redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
          redis.exceptions.ResponseError, redis.exceptions.WatchError)


class ReplicasBehind(StoreUnavailable):
    """A write ran on the primary, but fewer replicas than KAIROS_REDIS_REPLICAS said they
    hold it in time: it is not acknowledged (a failover may lose it, or keep it)."""

    what = ""  # the write it failed, once named (`unavailable`); kept when pickled


def unavailable(what: str):
    """Decorator: Redis errors surface as StoreUnavailable naming what was being done, and
    ReplicasBehind as itself, named the same way (the innermost name kept)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ERRORS as exc:
                raise StoreUnavailable(f"redis: {what}: {exc}") from exc
            except ReplicasBehind as exc:
                if exc.what:
                    raise
                named = ReplicasBehind(f"redis: {what}: {exc}")
                named.what = what
                raise named from exc
        return call
    return wrap
