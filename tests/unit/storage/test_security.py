"""The store's security defaults (DESIGN.md "Security defaults"): its files are its owner's
only, a Redis password never shows, and a Redis user without CONFIG can run the journal."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import redis

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.providers import open_store, redact

SECRET = "s3cr3t-Pw0rd"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _loose(root) -> list[str]:
    """Every path under root (root included) that its group or others may use."""
    paths = [root, *(os.path.join(d, n) for d, dirs, files in os.walk(root)
                     for n in dirs + files)]
    return [f"{p} {stat.S_IMODE(os.lstat(p).st_mode):o}" for p in paths
            if os.lstat(p).st_mode & 0o077]


def test_every_path_of_a_directory_store_is_its_owners_only(tmp_path, umask_022):
    root = tmp_path / "store"
    store = DirectoryStore(root)
    store.put(3, "alice", b"home")
    store.put_snapshots({0: b"snap", 1: b"snap"})
    store.put_meta("controller", b"state")
    journal = store.journal("shard-0", "fsync")
    journal.append([["alice", 1]])
    journal.append([["bob", 2]])
    journal.compact(lambda r: r[0] == "alice")  # a compaction's file replaces a segment
    journal.close()
    store.journal("shard-0", "fsync").close()
    assert _loose(root) == []
    for sub in ("", "customers", "customers/p3", "journals", "journals/shard-0", "meta"):
        assert stat.S_IMODE(os.stat(root / sub).st_mode) == 0o700, sub
    assert stat.S_IMODE(os.stat(root / "meta" / "controller").st_mode) == 0o600


def test_opening_a_store_an_older_kairos_left_open_closes_it(tmp_path, umask_022, caplog):
    root = tmp_path / "store"
    (root / "journals" / "shard-0").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    segment = root / "journals" / "shard-0" / f"{1:020d}.log"
    segment.write_bytes(b"")
    os.chmod(segment, 0o644)
    (root / "meta").mkdir(mode=0o755)
    (root / "meta" / "controller").write_bytes(b"x")
    os.chmod(root / "meta" / "controller", 0o644)
    with caplog.at_level(logging.WARNING, "kairos.store"):
        store = DirectoryStore(root)
        store.journal("shard-0").close()
    assert _loose(root) == []
    assert "0755" in caplog.text and str(root) in caplog.text


def test_a_journal_alone_writes_owner_only_segments(tmp_path, umask_022):
    journal = Journal(tmp_path / "j" / "k", "os", segment_bytes=1)
    for i in range(3):
        journal.append([i])
    journal.close()
    assert _loose(tmp_path / "j") == []


@pytest.mark.parametrize("url, shown", [
    (f"redis://:{SECRET}@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
    (f"redis://kairos:{SECRET}@redis.svc:6380/2?prefix=p",
     "redis://***@redis.svc:6380/2?prefix=p"),
    (f"rediss://kairos:{SECRET}@[::1]:6379/0", "rediss://***@[::1]:6379/0"),
    (f"redis://redis.svc:6379/0?password={SECRET}&prefix=p",
     "redis://redis.svc:6379/0?password=***&prefix=p"),
    (f"unix://:{SECRET}@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
    (f"redis://u:{SECRET}?more@host/0", "redis://***@host/0"),  # not percent-encoded
    (f"redis://:{SECRET}#more@host/0", "redis://***@host/0"),
    (f"redis://u:{SECRET}/more@host:6379/0?prefix=p", "redis://***@host:6379/0?prefix=p"),
    (f"https://h/p?auth_token={SECRET}&api_key={SECRET}&x=1",
     "https://h/p?auth_token=***&api_key=***&x=1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("/home/me/.kairos/store", "/home/me/.kairos/store"),
    ("memory", "memory"),
])
def test_redact_hides_a_store_urls_credentials(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("url", [f"redis://u:{SECRET}?more@host/0",
                                 f"redis://:{SECRET}#more@host/0",
                                 f"redis://:{SECRET}@host:port/0"])
def test_a_redis_url_that_does_not_parse_is_refused_without_its_password(url):
    with pytest.raises(ValueError) as refused:
        open_store(url)
    assert "not a valid Redis URL" in str(refused.value) and SECRET not in str(refused.value)


def test_a_redis_stores_repr_hides_its_password():
    store = open_store(f"redis://kairos:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in repr(store) and "***@127.0.0.1:1" in repr(store)


def test_a_redis_user_without_config_runs_the_journal_and_is_warned_once(redis_server, caplog):
    with redis.Redis(port=redis_server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "kairos", "on", f">{SECRET}", "~*", "+@all",
                              "-config")
    store = open_store(f"redis://kairos:{SECRET}@127.0.0.1:{redis_server.port}/0?prefix=acl")
    with caplog.at_level(logging.WARNING, "kairos.store"):
        journal = store.journal("shard-0", "fsync")
        assert journal.append([["alice", 1]]) == 1
        assert list(journal.replay()) == [(1, ["alice", 1])]
        store.journal("shard-1", "fsync")
        store.put_meta("k", b"v")
        assert store.get_meta("k") == b"v"
    warnings = [r for r in caplog.records if "CONFIG" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "could not check" in warnings[0].getMessage()
    assert SECRET not in caplog.text


def test_the_controller_logs_its_store_without_the_password(redis_server, caplog):
    import asyncio

    from kairos.cluster.control.controller import Controller
    from kairos.cluster.control.learner import Learner
    from kairos.core.compiler import default_compiled
    from tests.support.local_backend import LocalBackend

    with redis.Redis(port=redis_server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "ctl", "on", f">{SECRET}", "~*", "+@all")
    url = f"redis://ctl:{SECRET}@127.0.0.1:{redis_server.port}/0?prefix=ctl"

    async def scenario():
        backend = LocalBackend()
        backend.local_learner = Learner(default_compiled())
        backend.local_controller = Controller(backend, n_partitions=8, store_url=url)
        await backend.local_controller.start(2)
        with caplog.at_level(logging.WARNING, "kairos"):
            await Controller(backend, n_partitions=8, store_url=url).resume()
        with pytest.raises(ValueError) as refused:
            await Controller(backend, n_partitions=16, store_url=url).resume()
        return str(refused.value)

    refused = asyncio.run(scenario())
    assert "resuming the cluster saved in redis://***@127.0.0.1" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in refused and "redis://***@127.0.0.1" in refused
