"""KAIROS_REDIS_REPLICAS (redis_replicas.py): with a real primary and a real replica, every
write Kairos acknowledges or relies on is WAITed for, one the replica does not hold is not
acknowledged (the journal's batch taken back, its LSNs contiguous once the replica is back),
and with 0 no WAIT is sent."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import msgpack
import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from kairos.cluster.shard import decisionlog
from kairos.cluster.storage import redis_chunks, redis_replicas, redis_snapshots
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_errors import ReplicasBehind
from kairos.cluster.storage.redis_journal import RedisJournal
from kairos.cluster.storage.redis_server import SYNC_S, RedisServer
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import JournalFenced, StoreUnavailable

from tests.unit.shard.test_shard import T0, Clock, event, profile, shard
from tests.unit.storage.test_redis_lost_replies import lose_next_reply, records

HELD_MS = 2000  # WAIT where the replica is there: ample on a loaded machine (below the timeout)
BEHIND_MS = 200  # WAIT where the replica is away (`behind`): a write fails this quickly
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
    """REPLICAS 1, and a WAIT long enough for a replica that is there (`behind`: short)."""
    monkeypatch.setattr(redis_replicas, "REPLICAS", 1)
    monkeypatch.setattr(redis_replicas, "WAIT_MS", HELD_MS)


@contextlib.contextmanager
def behind():
    """A short WAIT, where the test expects it to fail: a replica away fails a write quickly."""
    redis_replicas.WAIT_MS = BEHIND_MS
    try:
        yield
    finally:
        redis_replicas.WAIT_MS = HELD_MS


def attach(primary: RedisServer, replica: RedisServer) -> None:
    """Make `replica` the primary's replica, in sync (RedisServer.replicate)."""
    assert replica.replicate(primary), "the replica did not sync"


def detach(primary: RedisServer, replica: RedisServer) -> None:
    """The replica stops replicating (it becomes a primary of its own), and the primary has
    seen it go."""
    with replica.client() as r, primary.client() as p:
        r.replicaof("NO", "ONE")
        deadline = time.monotonic() + SYNC_S
        while p.info("replication")["connected_slaves"]:
            assert time.monotonic() < deadline, "the primary still counts the replica"
            time.sleep(0.05)


def refused_while_away(primary: RedisServer, replica: RedisServer, what: str,
                       write: Callable[[], Any]) -> None:
    """`write`, with the replica away, fails naming `what`; the replica is back after."""
    detach(primary, replica)
    try:
        with behind(), pytest.raises(ReplicasBehind, match=f"^redis: {what}: {BEHIND}"):
            write()
    finally:
        attach(primary, replica)


def waits(server: RedisServer, command: str = "wait") -> int:
    """How many WAITs (or other `command`s) the server has run."""
    with server.client() as c:
        return c.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


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


@pytest.mark.parametrize("write, what", [
    ("fence", "fencing a journal"), ("own", "claiming a journal"),
    ("snapshot", "writing snapshots"), ("home", "writing customers"),
    ("home-guarded", "writing customers"), ("meta", "writing meta"),
    ("claim", "claiming the store")])
def test_a_write_the_replica_does_not_hold_is_not_acknowledged(pair, write, what):
    """Refused with ReplicasBehind, which names the write."""
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=behind-{write}")
    calls = {"fence": lambda: store.fence_journal("s0"),
             "own": lambda: store.own_journal("s0", "inc-1", claim=True),
             "snapshot": lambda: store.put_snapshots({1: b"snap"}),
             "home": lambda: store.put(1, "ana", b"home"),
             "home-guarded": lambda: store.put(1, "ana", b"home", unless_fenced="s0"),
             "meta": lambda: store.put_meta("model", b"meta"),
             "claim": lambda: store.claim("cluster", "head")}
    refused_while_away(primary, replica, what, calls[write])
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
        with behind(), pytest.raises(StoreUnavailable, match=BEHIND):
            journal.append([("event", 1, "ana", 2)])
        assert records(journal) == [1]  # taken back on the primary
        with pytest.raises(StoreUnavailable, match=BEHIND):
            journal.append([("event", 1, "ana", 3)])  # it appends nothing more
        with behind(), pytest.raises(StoreUnavailable, match=BEHIND):
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
        with behind(), pytest.raises(StoreUnavailable, match=BEHIND):
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
        with behind(), pytest.raises(StoreUnavailable, match="not known yet"):
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
            with behind(), pytest.raises(StoreUnavailable, match=BEHIND):
                store.journal("s0", "os").append([("event", 1, "ana", 1)])
    warned = [r for r in caplog.records if "reports 0 connected replicas" in r.message]
    assert len(warned) == 1


@pytest.mark.parametrize("env, said", [
    ({"KAIROS_REDIS_TIMEOUT_S": "2", "KAIROS_REDIS_REPLICAS_WAIT_S": "1.5"},
     "KAIROS_REDIS_REPLICAS_WAIT_S must be > 0 and <= 1 (KAIROS_REDIS_TIMEOUT_S / 2)"),
    ({"KAIROS_REDIS_REPLICAS": "100"}, "KAIROS_REDIS_REPLICAS must be >= 0 and <= 16")])
def test_settings_out_of_bounds_are_refused_at_start(env, said):
    """A WAIT not within the socket timeout; more replicas than anyone waits for (a typo)."""
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"],
                          env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode != 0
    assert said in done.stderr


def test_a_redis_py_without_the_overridden_methods_is_refused_at_import_where_wait_is_asked():
    """Were redis-py to rename what `_Waiting` overrides, most writes would go without WAIT:
    with KAIROS_REDIS_REPLICAS above 0 the module refuses to load instead; with 0 (no WAIT,
    `_Waiting` never used) every store still opens."""
    code = ("import redis.client; del redis.client.Pipeline._execute_pipeline; "
            "import kairos.cluster.storage.redis_replicas; "
            "from kairos.cluster.storage.providers import open_store; open_store('memory')")
    asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "KAIROS_REDIS_REPLICAS": "1"})
    assert asked.returncode != 0
    assert "has no _execute_pipeline, which Kairos overrides" in asked.stderr
    unasked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "KAIROS_REDIS_REPLICAS": "0"})
    assert unasked.returncode == 0, unasked.stderr


def test_the_stores_client_never_retries_a_command():
    """redis-py's retry would send a pipeline's transaction again after its WAIT's reply was
    lost, without the WATCH its EXEC consumed; the store asks for none whatever redis-py's
    default (redis_store.py)."""
    store = RedisStore("redis://127.0.0.1:1/0?prefix=retry")  # opening connects to nothing
    assert store.r.connection_pool.connection_kwargs["retry"].get_retries() == 0


def test_an_acl_user_without_wait_is_told_to_allow_it(tmp_path):
    users = {"kairos": "on >secret ~acl:* +@all -wait"}
    with RedisServer(tmp_path, durable=False, users=users) as server:
        store = open_store(f"redis://kairos:secret@127.0.0.1:{server.port}/0?prefix=acl")
        with pytest.raises(StoreUnavailable, match=r"refused WAIT .*\+wait"):
            store.put(1, "ana", b"home")


def test_writes_release_and_drop_journal_are_waited_for(pair):
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=gone")
    store.claim("cluster", "head")
    store.own_journal("s0", "inc-1", claim=True)
    before = waits(primary)
    store.release("cluster")
    store.drop_journal("s0")
    assert waits(primary) - before == 2
    on_replica = open_store(f"{replica.url}?prefix=gone")
    assert on_replica.claimed_by() is None
    assert on_replica.r.get("gone:j:s0:owner") is None


def test_a_lost_wait_reply_is_not_retried_without_its_watch(tmp_path, monkeypatch):
    """With retries on the pool (redis-py's default may come to be), A's release runs its
    DEL, B claims the store, and A's connection drops during WAIT (no replica: WAIT blocks):
    A's transaction is not sent again without its WATCH, so B's lease stays."""
    monkeypatch.setattr(redis_replicas, "WAIT_MS", 4000)  # the time to drop it mid-WAIT
    with RedisServer(tmp_path, durable=False) as server, server.client() as admin:
        a = open_store(f"{server.url}?prefix=p")
        a.r.connection_pool.set_retry(Retry(NoBackoff(), 1))
        admin.set("p:owner", msgpack.packb(["A", "head-a", 0]), px=60_000)
        execs, dropped, lease_b = waits(server, "exec"), [], msgpack.packb(["B", "head-b", 0])

        def claim_and_drop() -> None:
            deadline = time.monotonic() + SYNC_S
            while not (waiting := [c for c in admin.client_list() if c["cmd"] == "wait"]):
                assert time.monotonic() < deadline, "A's release sent no WAIT"
                time.sleep(0.01)
            dropped.append(admin.get("p:owner"))  # A's DEL ran
            admin.set("p:owner", lease_b, px=60_000)
            admin.client_kill_filter(_id=waiting[0]["id"])
        other = threading.Thread(target=claim_and_drop)
        other.start()
        try:
            with pytest.raises(ReplicasBehind) as raised:
                a.release("A")
        finally:
            other.join()
        assert dropped == [None]
        assert admin.get("p:owner") == lease_b  # not deleted by a resent DEL
        assert waits(server, "exec") == execs + 1
        assert raised.match("releasing the store: the reply of the WAIT .* was lost")


@pytest.mark.parametrize("write", ["home-guarded", "append"])
def test_a_failed_wait_keeps_its_connection(pair, write):
    """WAIT's reply read whole after the EXEC, a failed one leaves nothing watched nor
    unread: the pool keeps the connection (not a new one per write while replicas are away)."""
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=kept-{write}")
    journal = store.journal("s0", "os")
    calls = {"home-guarded": lambda: store.put(1, "ana", b"home", unless_fenced="s0"),
             "append": lambda: journal.append([("event", 1, "ana", 1)])}
    connection = store.r.client_id()  # the pool's one connection
    detach(primary, replica)
    try:
        with behind(), pytest.raises(StoreUnavailable, match=BEHIND):
            calls[write]()
    finally:
        attach(primary, replica)
    assert store.r.client_id() == connection


def test_a_batch_not_on_the_primary_whose_settling_is_not_held_says_so(pair, monkeypatch):
    """The append's reply lost before its EXEC ran, and the replica away: the batch is not on
    the primary, and the error says that, and that the replicas are not known to agree (a
    take-back they lack would leave it there)."""
    primary, replica = pair
    journal = open_store(f"{primary.url}?prefix=absent").journal("s0", "os")
    journal.append([("event", 1, "ana", 1)])
    lose_next_reply(monkeypatch, ran=False, then=lambda: detach(primary, replica))
    try:
        with behind(), pytest.raises(StoreUnavailable, match="not known yet \\(the primary "
                                     "does not hold the batch; its replicas are not known "
                                     f"to agree: {BEHIND}"):
            journal.append([("event", 1, "ana", 2)])
    finally:
        attach(primary, replica)


def settling_after(monkeypatch, then) -> None:
    """As the journal starts to settle a batch (after the append's WAIT failed), WAITs are
    long again and `then()` runs."""
    settle = RedisJournal._settle

    def settling(self, *args, **kwargs):
        redis_replicas.WAIT_MS = HELD_MS
        then()
        return settle(self, *args, **kwargs)
    monkeypatch.setattr(RedisJournal, "_settle", settling)


def test_a_batch_taken_back_in_time_lets_the_writer_go_on(pair, monkeypatch):
    """The append's WAIT fails, the replica is back for the take-back's: its round answers
    UNAVAILABLE, nothing is in doubt, and the same writer goes on at the next LSN."""
    primary, replica = pair
    url = f"{primary.url}?prefix=back"
    journal = open_store(url).journal("s0", "os")
    journal.append([("event", 1, "ana", 1)])
    settling_after(monkeypatch, lambda: attach(primary, replica))
    detach(primary, replica)
    redis_replicas.WAIT_MS = BEHIND_MS
    with pytest.raises(StoreUnavailable, match=f"appending to the journal: {BEHIND}"):
        journal.append([("event", 1, "ana", 2)])
    assert journal.failed is None and journal.last_lsn == 1
    assert journal.append([("event", 1, "ana", 22)]) == 2
    assert records(journal) == [1, 22]
    assert records(open_store(f"{replica.url}?prefix=back").read_journal("s0")) == [1, 22]


def test_a_fence_before_the_take_back_leaves_the_batch_to_the_heir(pair, monkeypatch):
    """The append's WAIT fails and another shard fences the journal before the take-back: the
    writer is refused as fenced, and the batch stays for the heir, which replays it (the
    module's text: a round answered so is applied again unless its retry is idempotent)."""
    primary, replica = pair
    url = f"{primary.url}?prefix=heir"
    journal = open_store(url).journal("s0", "os")
    journal.append([("event", 1, "ana", 1)])

    def fenced() -> None:
        attach(primary, replica)
        open_store(url).fence_journal("s0")
    settling_after(monkeypatch, fenced)
    detach(primary, replica)
    redis_replicas.WAIT_MS = BEHIND_MS
    with pytest.raises(JournalFenced):
        journal.append([("event", 1, "ana", 2)])
    assert journal.fenced and journal.failed is None
    assert records(open_store(url).read_journal("s0")) == [1, 2]
    with pytest.raises(JournalFenced):
        open_store(url).journal("s0", "os")  # nothing in doubt to settle: refused as fenced


@pytest.mark.parametrize("write, what, left", [
    ("retract", "taking back a batch", [1]),
    ("truncate", "truncating the journal", [2]),
    ("compact", "compacting the journal", [2])])
def test_a_journal_write_the_replica_does_not_hold_is_not_acknowledged(pair, write, what,
                                                                       left):
    """Refused, named; it ran on the primary, which the replica holds once back, and the
    journal's next writer goes on from it."""
    primary, replica = pair
    url = f"{primary.url}?prefix=journal-{write}"
    journal = open_store(url).journal("s0", "os")
    journal.append([("event", 1, "ana", 1)])
    journal.append([("event", 1, "ana", 2)])
    calls = {"retract": lambda: journal.retract(1), "truncate": lambda: journal.truncate(1),
             "compact": lambda: journal.compact(lambda record: record[3] == 1)}
    refused_while_away(primary, replica, what, calls[write])
    again = open_store(url).journal("s0", "os")
    assert records(again) == left
    assert again.append([("event", 1, "ana", 3)]) == max(left) + 1
    assert records(open_store(f"{replica.url}?prefix=journal-{write}").read_journal("s0")) == \
        [*left, 3]


def test_decision_log_writes_are_waited_for(pair):
    """An append, a trim's page and an erasure's (its ZREMs and the count they take off, one
    WAIT), and the emptied log's removal: each WAITed for, so the replica holds each when
    acknowledged (erased entries do not come back with a failover)."""
    primary, replica = pair
    log = open_store(f"{primary.url}?prefix=log").decision_log("s0")
    on_replica = open_store(f"{replica.url}?prefix=log").decision_log("s0")
    before = waits(primary)
    log.append([(1.0, "ana", b"a"), (2.0, "bob", b"b"), (3.0, "cy", b"c")])
    assert log.trim(before=1.5, max_bytes=1 << 20) == 1
    assert waits(primary) - before == 2
    assert [c for _, c, _ in on_replica.read(0.0, 9.0)] == ["bob", "cy"]
    assert on_replica.size() == log.size() > 0
    assert log.erase({"bob", "cy"}) == 2
    assert waits(primary) - before == 4  # the page, then the emptied log's DEL
    assert list(on_replica.read(0.0, 9.0)) == [] and on_replica.size() == 0


@pytest.mark.parametrize("write, what", [
    ("append", "appending to a decision log"), ("trim", "trimming a decision log"),
    ("erase", "erasing from a decision log")])
def test_a_decision_log_write_the_replica_does_not_hold_is_not_acknowledged(pair, write, what):
    primary, replica = pair
    log = open_store(f"{primary.url}?prefix=log-behind-{write}").decision_log("s0")
    log.append([(1.0, "ana", b"a"), (2.0, "bob", b"b")])
    calls = {"append": lambda: log.append([(3.0, "cy", b"c")]),
             "trim": lambda: log.trim(before=1.5, max_bytes=1 << 20),
             "erase": lambda: log.erase({"ana"})}
    refused_while_away(primary, replica, what, calls[write])


def test_the_log_writer_counts_a_write_the_replica_does_not_hold_and_goes_on(pair, caplog):
    """The shard's log writer (its own thread: no round waits on it) takes ReplicasBehind as
    any failed write: counted and logged, the entries not written again (they ran on the
    primary, which keeps them: a retry would log them twice); the next write goes through."""
    primary, replica = pair
    store, counts = open_store(f"{primary.url}?prefix=log-writer"), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.in_background()
    detach(primary, replica)
    try:
        with behind():
            writer.submit([(1.0, "ana", b"a")], set())
            writer.written()
    finally:
        attach(primary, replica)
    assert counts["decision_log_failures"] == 1 and BEHIND in caplog.text
    writer.submit([(2.0, "bob", b"b")], set())
    writer.written()
    writer.close()
    assert counts["decision_log_records"] == 1
    on_replica = open_store(f"{replica.url}?prefix=log-writer").decision_log("s0")
    assert [c for _, c, _ in on_replica.read(0.0, 9.0)] == ["ana", "bob"]


def test_a_snapshot_in_chunks_is_held_by_the_replica_when_acknowledged(pair, monkeypatch):
    """One WAIT, after the switch: the chunks written before it are in the replica then."""
    primary, replica = pair
    monkeypatch.setattr(redis_chunks, "ONE_VALUE_BYTES", 1000)
    monkeypatch.setattr(redis_snapshots, "SNAPSHOT_CHUNK_BYTES", 1000)
    monkeypatch.setattr(redis_chunks, "LEAST_CHUNK_BYTES", 1000)
    store, big = open_store(f"{primary.url}?prefix=chunked"), os.urandom(3500)
    store.own_journal("s0", "inc-1", claim=True)
    before = waits(primary)
    store.put_snapshots({1: big}, unless_fenced="s0", lsn=1)
    assert waits(primary) - before == 1
    assert open_store(f"{replica.url}?prefix=chunked").get_snapshot(1) == big


@pytest.mark.parametrize("write", ["erase", "trim"])
def test_a_removal_retried_while_the_replica_is_away_is_still_not_done(pair, write):
    """A removal whose ZREMs ran but whose WAIT failed, tried again while the replica is still
    away, finds nothing left to remove: it fails until the replica holds what went."""
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=log-again-{write}")
    log = store.decision_log("s0")
    log.append([(1.0, "ana", b"a"), (2.0, "bob", b"b")])

    def erase() -> int:
        store.decision_logs()  # each erasure pass lists the logs first (shard/decisionlog.py)
        return log.erase({"ana"})
    remove = {"erase": erase, "trim": lambda: log.trim(before=1.5, max_bytes=1 << 20)}[write]
    detach(primary, replica)
    try:
        with behind():
            for _ in range(2):
                with pytest.raises(ReplicasBehind, match=BEHIND):
                    remove()
    finally:
        attach(primary, replica)
    assert remove() == 0 and [c for _, c, _ in log.read(0.0, 9.0)] == ["bob"]


def test_an_erasure_retried_while_the_replica_is_away_is_kept_to_erase(pair):
    """The shard's log writer tries a failed erasure again with the next trim: while the
    replica is away, the customer stays to erase (a failover would bring the entries back)."""
    primary, replica = pair
    store, counts = open_store(f"{primary.url}?prefix=log-erase-again"), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.submit([(1.0, "ana", b"a"), (2.0, "bob", b"b")], set())
    detach(primary, replica)
    try:
        with behind():
            writer.submit([], {"ana"})
            writer.submit([], set(), (0.0, 1 << 30))  # the next trim tries it again
            assert writer.unerased() == {"ana"} and "ana" not in writer.erased()
    finally:
        attach(primary, replica)
    writer.submit([], set(), (0.0, 1 << 30))
    assert writer.unerased() == set() and "ana" in writer.erased()
