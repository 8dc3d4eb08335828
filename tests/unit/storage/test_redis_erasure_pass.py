"""A decision-log erasure pass over a store's logs with KAIROS_REDIS_REPLICAS (redis_log.py):
one WAIT covers the logs that removed nothing, where the replica is there or away, and the
no-op it WAITs for leaves no key behind."""
from __future__ import annotations

from collections import Counter

import pytest

from kairos.cluster.shard import decisionlog
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_errors import ReplicasBehind

from tests.unit.storage.test_redis_replicas import (  # noqa: F401 (fixtures)
    attach, behind, detach, one_replica, pair, waits)

LOGS = 16


def _logs(url: str) -> decisionlog.LogWriter:
    """LOGS logs of bob's, ana in the first too; the writer of the first."""
    store = open_store(url)
    for i in range(LOGS):
        store.decision_log(f"s{i:02}").append([(1.0, "bob", b"b")])
    store.decision_log("s00").append([(1.0, "ana", b"a")])
    return decisionlog.LogWriter(store, "s00", Counter())


def test_an_erasure_pass_waits_once_not_once_a_log(pair):  # noqa: F811 (the fixture)
    """ana's erasure removes her entry from s00, WAITed for; that WAIT covers the 15 logs that
    held nothing of hers. carl's, in no log, sends one no-op for them all."""
    primary, _ = pair
    writer = _logs(f"{primary.url}?prefix=pass-there")
    for customer in ("ana", "carl"):
        before = waits(primary)
        writer.submit([], {customer})
        assert waits(primary) - before == 1
        assert writer.erased() == {customer}


def test_an_erasure_pass_while_the_replica_is_away_waits_once(pair):  # noqa: F811 (the fixture)
    """The pass's one WAIT fails: every log is kept to erase again, none waited for again."""
    primary, replica = pair
    writer = _logs(f"{primary.url}?prefix=pass-away")
    detach(primary, replica)
    try:
        with behind():
            before = waits(primary)
            writer.submit([], {"carl"})
            assert waits(primary) - before == 1
            assert writer.unerased() == {"carl"} and writer.erased() == set()
    finally:
        attach(primary, replica)
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
