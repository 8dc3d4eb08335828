"""H1: a Redis server that evicts keys (any maxmemory-policy but noeviction) is refused when a
journal opens, before a fence or owner it may evict can let a stale writer append; one that
refuses CONFIG GET is warned about, naming the setting to check (redis_config.py)."""
from __future__ import annotations

import logging

import pytest

from kairos.cluster.storage import redis_config
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import JournalFenced, StoreUnavailable


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_a_server_that_evicts_keys_is_refused_naming_the_setting(server):
    with server.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
    store = RedisStore(server.url)
    store.own_journal("s0", "inc1", claim=True)
    for policy in ("fsync", "os", "off"):
        with pytest.raises(StoreUnavailable) as refused:
            store.journal("s0", policy)
        assert "maxmemory-policy allkeys-lru" in str(refused.value)
        assert "noeviction" in str(refused.value)


def test_the_probes_fenced_journal_under_memory_pressure_takes_no_append(server):
    """The review's probe: a fenced journal, then memory pressure past maxmemory, then the
    old writer's process opens its journal again: refused, nothing appended."""
    store = RedisStore(server.url)
    store.own_journal("s0", "inc1", claim=True)
    assert store.journal("s0", "fsync").append([["x", 1]]) == 1
    store.fence_journal("s0")
    with server.client() as admin:
        admin.config_set("maxmemory", "3mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        for i in range(3000):
            admin.set(f"kairos:m:filler{i}", b"x" * 2000)
        with pytest.raises(StoreUnavailable) as refused:
            RedisStore(server.url).journal("s0", "fsync").append([["y", 2]])
        # its fence kept: refused as fenced (checked first); evicted: for the server's policy
        assert isinstance(refused.value, JournalFenced) or "noeviction" in str(refused.value)
        assert [lsn for _, lsn in admin.zrange("kairos:j:s0", 0, -1, withscores=True)] \
            in ([], [1.0])  # evicted or kept: never a batch appended after the fence


def test_a_server_with_noeviction_opens_and_its_fence_holds(server):
    with server.client() as admin:
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    store = RedisStore(server.url)
    store.own_journal("s0", "inc1", claim=True)
    assert store.journal("s0", "fsync").append([["x", 1]]) == 1
    store.fence_journal("s0")
    with pytest.raises(JournalFenced):
        store.journal("s0", "fsync")


def test_a_server_that_refuses_config_is_warned_about_naming_noeviction(server, caplog,
                                                                         monkeypatch):
    monkeypatch.setattr(redis_config, "_unchecked", set())
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "kairos", "on", ">pw", "~*", "+@all",
                              "-config")
        admin.config_set("maxmemory-policy", "allkeys-lru")  # unseen by the user: warned
    store = RedisStore(f"redis://kairos:pw@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.WARNING, "kairos.store"):
        store.journal("s0", "os")
        store.journal("s1", "fsync")
    warnings = [r.getMessage() for r in caplog.records if "CONFIG" in r.getMessage()]
    assert len(warnings) == 1 and "maxmemory-policy noeviction" in warnings[0], caplog.text


def test_a_fenced_journal_on_a_server_that_evicts_is_refused_as_fenced(server):
    """The fence first: JournalFenced stops the old writer's shard, where StoreUnavailable
    (the server's setting) would have it retry."""
    store = RedisStore(server.url)
    store.own_journal("s0", "inc1", claim=True)
    store.journal("s0", "fsync")
    store.fence_journal("s0")
    with server.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(JournalFenced):
        store.journal("s0", "fsync")


def test_a_server_that_gives_no_maxmemory_policy_is_warned_about_not_refused(server, caplog,
                                                                              monkeypatch):
    """A Redis-compatible server whose CONFIG GET answers no value (as Redis does for a name
    it does not know: an empty reply, which the client's parser sees here) is unchecked, as
    one that refuses CONFIG GET: warned once, the journal opened."""
    monkeypatch.setattr(redis_config, "_unchecked", set())
    store = RedisStore(server.url)
    store.r.set_response_callback("CONFIG GET", lambda response, **options: {})
    store.own_journal("s0", "inc1", claim=True)
    with caplog.at_level(logging.WARNING, "kairos.store"):
        assert store.journal("s0", "fsync").append([["x", 1]]) == 1
        store.journal("s1", "os")
    warnings = [r.getMessage() for r in caplog.records if "CONFIG" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "gave CONFIG GET no value for maxmemory-policy, appendonly, appendfsync" \
        in warnings[0]
    assert "maxmemory-policy noeviction" in warnings[0]
