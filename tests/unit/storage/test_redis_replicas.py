"""KAIROS_REDIS_REPLICAS (redis_replicas.py): with a real primary and a real replica, every
write Kairos acknowledges or relies on is WAITed for, one the replica does not hold is not
acknowledged (the journal's batch taken back, its LSNs contiguous once the replica is back),
and with 0 no WAIT is sent."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from kairos.cluster.storage import redis_replicas
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.store import StoreUnavailable

from tests.unit.shard.test_shard import T0, Clock, event, profile, shard
from tests.unit.storage.test_redis_lost_replies import lose_next_reply, records

SYNC_S = 10.0  # how long a replica may take to (re)connect and catch up: a bound, not a figure
BEHIND = "0 of the 1 replicas KAIROS_REDIS_REPLICAS asks for acknowledged"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A primary and its replica, both durable."""
    primary = RedisServer(tmp_path_factory.mktemp("primary")).start()
    replica = RedisServer(tmp_path_factory.mktemp("replica")).start()
    attach(primary, replica)
    yield primary, replica
    replica.stop()
    primary.stop()


@pytest.fixture(autouse=True)
def one_replica(monkeypatch):
    """REPLICAS 1, and a short WAIT so that a replica gone fails a write quickly."""
    monkeypatch.setattr(redis_replicas, "REPLICAS", 1)
    monkeypatch.setattr(redis_replicas, "WAIT_MS", 200)


def attach(primary: RedisServer, replica: RedisServer) -> None:
    """Make `replica` the primary's replica and wait till it is in sync, and has written the
    AOF a sync starts anew (till then Redis 6.2 ignores SIGTERM: "Writing initial AOF")."""
    with replica.client() as r, primary.client() as p:
        r.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + SYNC_S
        while r.info("replication").get("master_link_status") != "up" or \
                p.info("replication")["connected_slaves"] < 1 or p.wait(1, 100) < 1 or \
                any(r.info("persistence")[k] for k in ("aof_rewrite_in_progress",
                                                       "aof_rewrite_scheduled")):
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)


def detach(primary: RedisServer, replica: RedisServer) -> None:
    """The replica stops replicating (it becomes a primary of its own), and the primary has
    seen it go."""
    with replica.client() as r, primary.client() as p:
        r.replicaof("NO", "ONE")
        deadline = time.monotonic() + SYNC_S
        while p.info("replication")["connected_slaves"]:
            assert time.monotonic() < deadline, "the primary still counts the replica"
            time.sleep(0.05)


def waits(server: RedisServer) -> int:
    """How many WAITs the server has run."""
    with server.client() as c:
        return c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)


def writes(store) -> None:
    """A shard's writes: the journal's owner, appends, homes, snapshots, meta, the fence."""
    store.own_journal("s0", "inc-1", claim=True)
    journal = store.journal("s0", "os")
    assert journal.append([("event", 1, "ana", 1)]) == 1
    assert journal.append([("event", 1, "ana", 2)]) == 2
    store.put(1, "ana", b"home", unless_fenced="s0")
    store.put(2, "bob", b"home")
    store.put_snapshots({1: b"snap"}, unless_fenced="s0", lsn=2)
    store.put_meta("model", b"meta")
    store.fence_journal("s0")


def test_acknowledged_writes_are_held_by_the_replica_when_acknowledged(pair):
    primary, replica = pair
    url = f"{primary.url}?prefix=held"
    before = waits(primary)
    writes(open_store(url))
    assert waits(primary) - before == 8  # one after each write, none after a read
    on_replica = open_store(f"{replica.url}?prefix=held")
    assert records(on_replica.read_journal("s0")) == [1, 2]
    assert on_replica.get(1, "ana") == on_replica.get(2, "bob") == b"home"
    assert on_replica.get_snapshot(1) == b"snap"
    assert on_replica.get_meta("model") == b"meta"
    assert on_replica.r.get("held:j:s0:fenced") == b"1"
    assert on_replica.r.get("held:j:s0:owner") == b"inc-1"


def test_no_wait_is_sent_without_replicas(pair, monkeypatch):
    """The same writes WAIT with REPLICAS 1 (as above) and send no WAIT with 0."""
    primary, _ = pair
    before = waits(primary)
    writes(open_store(f"{primary.url}?prefix=one"))
    assert waits(primary) - before == 8
    monkeypatch.setattr(redis_replicas, "REPLICAS", 0)
    before = waits(primary)
    writes(open_store(f"{primary.url}?prefix=none"))
    assert waits(primary) == before


@pytest.mark.parametrize("write", ["fence", "own", "snapshot", "home", "home-guarded", "meta",
                                   "claim"])
def test_a_write_the_replica_does_not_hold_is_not_acknowledged(pair, write):
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=behind-{write}")
    calls = {"fence": lambda: store.fence_journal("s0"),
             "own": lambda: store.own_journal("s0", "inc-1", claim=True),
             "snapshot": lambda: store.put_snapshots({1: b"snap"}),
             "home": lambda: store.put(1, "ana", b"home"),
             "home-guarded": lambda: store.put(1, "ana", b"home", unless_fenced="s0"),
             "meta": lambda: store.put_meta("model", b"meta"),
             "claim": lambda: store.claim("cluster", "head")}
    detach(primary, replica)
    try:
        with pytest.raises(StoreUnavailable, match=BEHIND):
            calls[write]()
    finally:
        attach(primary, replica)
    calls[write]()  # the replica back: the same write is acknowledged


def test_an_append_the_replica_does_not_hold_is_taken_back_and_appends_resume(pair):
    """The replica stopped: the append is not acknowledged, its batch taken back on the
    primary, and the journal not opened again while the replica is away; back, appends go on
    at the next LSN and replay shows each acknowledged record once, on both servers."""
    primary, replica = pair
    url = f"{primary.url}?prefix=stopped"
    journal = open_store(url).journal("s0", "os")
    assert journal.append([("event", 1, "ana", 1)]) == 1
    replica.stop()
    try:
        with pytest.raises(StoreUnavailable, match=BEHIND):
            journal.append([("event", 1, "ana", 2)])
        assert records(journal) == [1]  # taken back on the primary
        with pytest.raises(StoreUnavailable, match=BEHIND):
            journal.append([("event", 1, "ana", 3)])  # it appends nothing more
        with pytest.raises(StoreUnavailable, match=BEHIND):
            open_store(url).journal("s0", "os")  # the rebuild waits for the replica
    finally:
        replica.start()
        attach(primary, replica)
    again = open_store(url).journal("s0", "os")
    assert again.last_lsn == 1
    assert again.append([("event", 1, "ana", 2)]) == 2
    assert again.append([("event", 1, "ana", 3)]) == 3
    assert records(again) == [1, 2, 3]
    assert records(open_store(f"{replica.url}?prefix=stopped").read_journal("s0")) == [1, 2, 3]


def test_a_shard_whose_round_the_replica_missed_applies_the_clients_retry_once(pair,
                                                                               compiled):
    """The round is answered UNAVAILABLE while the replica is away; once it is back, the
    rebuilt shard replays the acknowledged round alone, and takes the retry once."""
    primary, replica = pair
    url, clock = f"{primary.url}?prefix=shard", Clock()
    s = shard(compiled, store=open_store(url), clock=clock)
    assert s.process([event("ana", "app_open", T0)])[0][0].status == "ok"
    replica.stop()
    try:
        with pytest.raises(StoreUnavailable, match=BEHIND):
            s.process([event("ana", "app_open", T0 + 1)])
    finally:
        replica.start()
        attach(primary, replica)
    rebuilt = shard(compiled, store=open_store(url), clock=clock)
    rebuilt.recover()
    assert rebuilt.process([profile("ana")])[0][0].value["events_applied"] == 1
    assert rebuilt.process([event("ana", "app_open", T0 + 1)])[0][0].status == "ok"
    assert rebuilt.process([profile("ana")])[0][0].value["events_applied"] == 2


def test_a_batch_found_after_a_lost_reply_waits_for_the_replica(pair, monkeypatch):
    """The server ran the batch and its reply was lost: found there, it is acknowledged only
    once the replica holds it (the writer's new connection has written nothing to WAIT for
    before it settles); the replica gone, it is in doubt, and the next writer takes it back."""
    primary, replica = pair
    url = f"{primary.url}?prefix=lost"
    journal = open_store(url).journal("s0", "os")
    journal.append([("event", 1, "ana", 1)])
    lose_next_reply(monkeypatch, ran=True, then=lambda: detach(primary, replica))
    try:
        with pytest.raises(StoreUnavailable, match="not known yet"):
            journal.append([("event", 1, "ana", 2)])
    finally:
        attach(primary, replica)
    again = open_store(url).journal("s0", "os")
    assert records(again) == [1]
    assert again.append([("event", 1, "ana", 2)]) == 2 and records(again) == [1, 2]


def test_a_server_without_the_replicas_asked_for_is_warned_of_once(tmp_path, caplog):
    with RedisServer(tmp_path, durable=False) as alone:
        store = open_store(f"{alone.url}?prefix=alone")
        with caplog.at_level(logging.WARNING, "kairos.store"):
            store.journal("s0", "os")
            store.journal("s0", "os")
            with pytest.raises(StoreUnavailable, match=BEHIND):
                store.journal("s0", "os").append([("event", 1, "ana", 1)])
    warned = [r for r in caplog.records if "reports 0 connected replicas" in r.message]
    assert len(warned) == 1


def test_a_wait_not_within_the_socket_timeout_is_refused_at_start():
    env = {**os.environ, "KAIROS_REDIS_TIMEOUT_S": "2", "KAIROS_REDIS_REPLICAS_WAIT_S": "1.5"}
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "KAIROS_REDIS_REPLICAS_WAIT_S must be > 0 and <= 1 (KAIROS_REDIS_TIMEOUT_S / 2)" \
        in done.stderr


def test_an_acl_user_without_wait_is_told_to_allow_it(tmp_path):
    users = {"kairos": "on >secret ~acl:* +@all -wait"}
    with RedisServer(tmp_path, durable=False, users=users) as server:
        store = open_store(f"redis://kairos:secret@127.0.0.1:{server.port}/0?prefix=acl")
        with pytest.raises(StoreUnavailable, match=r"refused WAIT .*\+wait"):
            store.put(1, "ana", b"home")
