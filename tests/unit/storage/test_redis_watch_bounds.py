"""The Redis store's lease and meta switch: a lease that does not decode is StoreCorrupt naming
its key, never overwritten; a WATCHed key that changes before every EXEC ends the claim, or
the meta save, with StoreUnavailable after a bounded number of tries rather than looping for
ever (storage review: redis_hostile.py, and the `while True` loops of `claim` and
`_switch`)."""
from __future__ import annotations

import msgpack
import pytest

from kairos.cluster.storage import redis_chunks, redis_store
from kairos.cluster.storage.redis_journal import SETTLE_TRIES
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

RUNAWAY = 50  # a loop looking again this often has no bound


@pytest.fixture
def store(redis_server, request):  # noqa: F811 (the fixture)
    return RedisStore(f"{redis_server.url}?prefix=wb{abs(hash(request.node.name))}")


@pytest.mark.parametrize("lease", [b"\x93\x01", b"\xc1", msgpack.packb([1, 2, 3])],
                         ids=["truncated", "undecodable", "not-strings"])
def test_a_lease_that_does_not_decode_is_store_corrupt_and_left_as_it_is(store, lease):
    key = f"{store.prefix}:owner"
    store.r.set(key, lease)
    for call in (store.claimed_by, lambda: store.claim("ours", "host a"),
                 lambda: store.release("ours")):
        with pytest.raises(StoreCorrupt, match=f"lease at {key} does not decode"):
            call()
    assert store.r.get(key) == lease


def changes_each_time(monkeypatch, module, name: str, change) -> list:
    """`module.name` wrapped: after each call, `change()` writes a key the caller WATCHes.
    The calls made, stopped at RUNAWAY."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(True)
        if len(calls) > RUNAWAY:
            raise RuntimeError(f"{name} called {RUNAWAY} times: the retries have no bound")
        reply = real(*args, **kwargs)
        change()
        return reply
    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_a_claim_whose_lease_changes_before_each_exec_gives_up(store, monkeypatch):
    key = f"{store.prefix}:owner"
    store.claim("ours", "host a")
    lease = store.r.get(key)
    calls = changes_each_time(monkeypatch, redis_store, "_lease",
                              lambda: store.r.set(key, lease, keepttl=True))
    with pytest.raises(StoreUnavailable, match=f"{key} kept changing"):
        store.claim("ours", "host a")
    assert len(calls) == SETTLE_TRIES
    assert store.r.get(key) == lease


def test_a_meta_switch_whose_keys_change_before_each_exec_gives_up(store, monkeypatch):
    store.put_meta("k", b"first")
    pending = redis_chunks.Value(store.prefix, "m", "k").key("p")

    def another_save():  # lists a generation and unlists it: the pending set changed twice
        store.r.zadd(pending, {"other:1": 0})
        store.r.zrem(pending, "other:1")
    calls = changes_each_time(monkeypatch, redis_chunks, "switch", another_save)
    with pytest.raises(StoreUnavailable, match="kept changing"):
        store.put_meta("k", b"second")
    assert len(calls) == redis_chunks.SWITCH_TRIES
    assert store.get_meta("k") == b"first"
