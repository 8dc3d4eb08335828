"""M1: ForgetCustomer's erasure reaches Redis's append-only file: once it is done the store
asks for BGREWRITEAOF (redis_aof.py), throttled and coalesced, best effort; before, the AOF
kept the customer's commands (the journal's batches, snapshots, homes) until the next rewrite.
Real redis-servers; each test polls, bounded, for the background rewrite to finish."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import redis_aof
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore

from tests.unit.shard.test_shard import N_PARTITIONS, T0, event, forget, p_of, profile

GONE = "zed-erased-7f3q"  # an id nothing else in the files holds
KEPT = "amy-kept-9k2w"
WAIT_S = 30.0


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        with server.client() as admin:  # a rewrite writes commands, not RDB's compressed values
            admin.config_set("aof-use-rdb-preamble", "no")
        yield server


def aof_bytes(server: RedisServer) -> bytes:
    """Every AOF file's bytes (6.2: appendonly.aof; 7: appendonlydir/'s parts)."""
    return b"".join(path.read_bytes() for path in sorted(Path(server.directory).rglob("*.aof*"))
                    if path.is_file())


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.1)


def rewrites(server: RedisServer) -> int:
    with server.client() as admin:
        return admin.info("commandstats").get("cmdstat_bgrewriteaof", {}).get("calls", 0)


def rewritten(server: RedisServer) -> bool:
    with server.client() as admin:
        info = admin.info("persistence")
    return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]


def test_after_a_forget_the_aof_no_longer_holds_the_customer(server, compiled, monkeypatch):
    monkeypatch.setattr(redis_aof, "REWRITE_EVERY_S", 0.2)
    shard = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS,
                  store=RedisStore(server.url))
    shard.process([event(GONE, "app_open", T0), event(KEPT, "app_open", T0)])
    shard.snapshot_dirty()
    shard.passivate(T0 + 10**6)  # a home too
    assert GONE.encode() in aof_bytes(server)
    shard.process([forget(GONE)])
    shard.erase()  # the journal rewritten, the snapshots written without the customer
    shard.decision_log.flush()  # the decision logs' erasure: snapshots then unname the id
    shard.erase()
    shard.snapshot_dirty()
    # once the rewrite asked for after the last of those writes ran
    wait_for(lambda: rewritten(server) and GONE.encode() not in aof_bytes(server),
             "the AOF rewritten without the forgotten customer")
    assert KEPT.encode() in aof_bytes(server)
    assert shard.process([profile(KEPT)])[0][0].value is not None


def test_the_snapshot_that_unnames_a_customer_erased_from_the_logs_is_rewritten_after(
        server, compiled, monkeypatch):
    """A snapshot names a forgotten customer until its decision-log erasure is done (for
    recovery to ask again); the snapshot written once it is done is the erasure's last write."""
    monkeypatch.setattr(redis_aof, "REWRITE_EVERY_S", 0.2)
    shard = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS,
                  store=RedisStore(server.url))
    shard.process([event(KEPT, "app_open", T0)])
    shard.decision_log.forget(GONE)  # its erasure from the logs asked for, not done yet
    shard.durability.snapshot([p_of(GONE)])
    assert GONE.encode() in aof_bytes(server)  # the snapshot names it
    shard.decision_log.flush()  # the erasure done (no log held it: nothing else asks)
    shard.erase()  # its partition marked to be written again without it
    shard.snapshot_dirty()
    wait_for(lambda: rewritten(server) and GONE.encode() not in aof_bytes(server),
             "the AOF rewritten after the snapshot that no longer names the customer")


def test_a_burst_of_erasures_starts_one_rewrite_and_one_after_the_last(server, monkeypatch):
    monkeypatch.setattr(redis_aof, "REWRITE_EVERY_S", 2.0)
    store = RedisStore(server.url)
    ids = [f"burst-{i}-q8v" for i in range(5)]
    for customer_id in ids:  # each written and erased in turn, far within REWRITE_EVERY_S
        store.put(0, customer_id, b"home")
        store.delete(0, customer_id)
        store.erased()
    wait_for(lambda: rewrites(server) == 2 and rewritten(server)
             and not any(i.encode() in aof_bytes(server) for i in ids),
             "a second rewrite, after the last erasure, without any of the ids")
    assert rewrites(server) == 2  # not one per erasure


def test_a_user_refused_bgrewriteaof_is_warned_once_and_the_erasure_goes_on(server, caplog,
                                                                              monkeypatch):
    monkeypatch.setattr(redis_aof, "REWRITE_EVERY_S", 0.0)
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "kairos", "on", ">pw", "~*", "+@all",
                              "-bgrewriteaof")
    store = RedisStore(f"redis://kairos:pw@127.0.0.1:{server.port}/0")
    log = store.decision_log("s0")
    log.append([(T0, GONE, b"decided")])
    with caplog.at_level(logging.WARNING, "kairos.store"):
        assert log.erase({GONE}) == 1  # a decision log's erasure asks too
        wait_for(lambda: "refused BGREWRITEAOF" in caplog.text, "the refusal logged")
        store.erased()
        store.erased()
        rewriter = redis_aof._rewriters[("127.0.0.1", server.port, None, "kairos")]
        wait_for(lambda: rewriter._pending is None, "the asks sent")
    assert caplog.text.count("refused BGREWRITEAOF") == 1
    assert rewrites(server) == 0


def test_a_store_with_a_rotated_password_has_the_next_rewrite_sent_with_it(server,
                                                                            monkeypatch):
    """The rewriter of a server and user sends with the client that asked last: one kept
    from the first store, its password rotated away, would fail every rewrite (INFO only)."""
    monkeypatch.setattr(redis_aof, "REWRITE_EVERY_S", 0.0)
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "kairos", "on", ">old", "~*", "+@all")
    RedisStore(f"redis://kairos:old@127.0.0.1:{server.port}/0").erased()
    wait_for(lambda: rewrites(server) == 1 and rewritten(server), "the first rewrite")
    with server.client() as admin:  # rotated: the old password's connections dropped
        admin.execute_command("ACL", "SETUSER", "kairos", "resetpass", ">new")
        admin.execute_command("CLIENT", "KILL", "USER", "kairos")
    RedisStore(f"redis://kairos:new@127.0.0.1:{server.port}/0").erased()
    wait_for(lambda: rewrites(server) == 2 and rewritten(server),
             "a second rewrite, sent with the new password")
