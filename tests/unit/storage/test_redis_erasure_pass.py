"""A decision-log erasure pass over a store's logs with KAIROS_REDIS_REPLICAS (redis_log.py):
each log's erasure ends with a WAIT sent after its scan (what another remover removed, that it
did not find, is held), the pass waits once where the replica is away, and the no-op it WAITs
for leaves no key behind."""
from __future__ import annotations

from collections import Counter

import pytest

from kairos.cluster.shard import decisionlog
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_errors import ReplicasBehind
from kairos.cluster.storage.redis_server import RedisServer

from tests.unit.storage.test_redis_replicas import (  # noqa: F401 (fixtures)
    attach, behind, detach, one_replica, pair, waits)

LOGS = 16


def _logs(url: str, anas: tuple[str, ...] = ("s00",)) -> decisionlog.LogWriter:
    """LOGS logs of bob's, ana in `anas` too; the writer of the first."""
    store = open_store(url)
    for i in range(LOGS):
        store.decision_log(f"s{i:02}").append([(1.0, "bob", b"b")])
    for name in anas:
        store.decision_log(name).append([(1.0, "ana", b"a")])
    return decisionlog.LogWriter(store, "s00", Counter())


def _erase_while_away(primary: RedisServer, replica: RedisServer,
                      writer: decisionlog.LogWriter, customer: str) -> None:
    """A pass of `writer` erasing `customer` while the replica is away: it WAITs once, which
    fails, and keeps `customer` to erase again, done in none of its logs."""
    detach(primary, replica)
    try:
        with behind():
            before = waits(primary)
            writer.submit([], {customer})
            assert waits(primary) - before == 1
            assert writer.unerased() == {customer} and writer.erased() == set()
    finally:
        attach(primary, replica)


def test_each_log_of_an_erasure_pass_ends_with_a_wait_after_its_scan(
        pair):  # noqa: F811 (the fixture)
    """ana's erasure removes her entry from s00, WAITed for after its scan ended; each of the 15
    logs that held nothing of hers sends a no-op after its scan. carl's, in no log, 16."""
    primary, _ = pair
    writer = _logs(f"{primary.url}?prefix=pass-there")
    for customer in ("ana", "carl"):
        before = waits(primary)
        writer.submit([], {customer})
        assert waits(primary) - before == LOGS
        assert writer.erased() == {customer}


def test_an_erasure_is_not_done_while_the_replica_holds_what_another_remover_removed(
        pair):  # noqa: F811 (the fixture)
    """The pass WAITed (s00) before another remover's ZREMs in s01, whose WAIT failed: the
    pass's erasure of s01 finds nothing, and is not done till the replica holds those ZREMs."""
    primary, replica = pair
    url = f"{primary.url}?prefix=pass-other"
    store, other = _logs(url, ("s00", "s01"))._store, open_store(url)
    store.decision_logs()
    assert store.decision_log("s00").erase({"ana"}) == 1  # WAITed, acknowledged
    detach(primary, replica)
    try:
        with behind():
            other.decision_logs()
            with pytest.raises(ReplicasBehind):
                other.decision_log("s01").erase({"ana"})  # ZREM ran, WAIT failed
            with pytest.raises(ReplicasBehind):
                store.decision_log("s01").erase({"ana"})
    finally:
        attach(primary, replica)
    store.decision_logs()  # the next pass, as the next trim's
    assert store.decision_log("s01").erase({"ana"}) == 0  # the replica holds them now


def test_an_erasure_pass_removing_from_many_logs_while_the_replica_is_away_waits_once(
        pair):  # noqa: F811 (the fixture)
    """ana is in 8 of the 16 logs: the first removal's WAIT fails, the other 7 are removed
    from the primary without WAIT, and fail at once."""
    anas = tuple(f"s{i:02}" for i in range(0, LOGS, 2))
    writer = _logs(f"{pair[0].url}?prefix=pass-many", anas)
    _erase_while_away(*pair, writer, "ana")
    store = writer._store
    assert not [n for n in anas if b"ana" in b"".join(store.r.zrange(f"pass-many:d:{n}", 0, -1))]


def test_an_erasure_pass_while_the_replica_is_away_waits_once(pair):  # noqa: F811 (the fixture)
    """The pass's one WAIT fails: every log is kept to erase again, none waited for again."""
    writer = _logs(f"{pair[0].url}?prefix=pass-away")
    _erase_while_away(*pair, writer, "carl")
    writer.submit([], set(), (0.0, 1 << 30))  # the next trim tries them again
    assert writer.unerased() == set() and writer.erased() == {"carl"}


def test_a_removal_finding_nothing_leaves_no_count_of_an_emptied_log(
        pair):  # noqa: F811 (the fixture)
    """An emptied log, still listed: an erasure or trim that finds nothing in it, while the
    replica is away, writes no `:bytes` key for it (a DECRBY by 0 did)."""
    primary, replica = pair
    store = open_store(f"{primary.url}?prefix=stray")
    log = store.decision_log("gone")
    log.append([(1.0, "ana", b"a")])
    log.erase({"ana"})
    detach(primary, replica)
    try:
        with behind():
            store.decision_logs()  # a pass begins, as shard/decisionlog.py's
            with pytest.raises(ReplicasBehind):
                log.erase({"bob"})
            with pytest.raises(ReplicasBehind):
                log.trim(0.0, 1 << 20)
    finally:
        attach(primary, replica)
    assert sorted(store.r.keys("stray:*")) == [b"stray:d"]
