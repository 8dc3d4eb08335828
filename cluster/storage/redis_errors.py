"""Redis errors as the store's: what redis-py raises when the server cannot be reached,
times out, is loading, is a read-only replica or refuses a command, as StoreUnavailable (and
WatchError, which redis-py raises for a connection that failed while it watched keys)."""
from __future__ import annotations

import functools

import redis

from kairos.cluster.storage.store import StoreUnavailable

ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
          redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
          redis.exceptions.ResponseError, redis.exceptions.WatchError)


def unavailable(what: str):
    """Decorator: Redis errors surface as StoreUnavailable naming what was being done."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ERRORS as exc:
                raise StoreUnavailable(f"redis: {what}: {exc}") from exc
        return call
    return wrap
