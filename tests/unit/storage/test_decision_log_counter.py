"""A Redis decision log's byte counter where removals leave the log empty (review rev41
d-store2, findings 3 and 4): an erasure whose DECRBY lands after the controller's orphan trim
removed the log leaves no counter behind, a counter left too high comes back to 0 once a trim
empties the log, and a trim's pages are exact and let their caller in between."""
from __future__ import annotations

import pytest

from kairos.cluster.storage import redis_replicas
from kairos.cluster.storage.decision_logs import entry_size
from kairos.cluster.storage.redis_journal import REPLAY_PAGE
from kairos.cluster.storage.redis_store import RedisStore

T0 = 1_795_629_600.0


@pytest.fixture
def url(redis_server, request):
    return f"{redis_server.url}?prefix=ct{abs(hash(request.node.name))}"


def test_an_erasure_landing_after_an_orphan_trim_leaves_no_counter(url, monkeypatch):
    eraser, controller = RedisStore(url).decision_log("gone"), RedisStore(url).decision_log("gone")
    eraser.append([(T0, "ana", b"r" * 50)])
    write = redis_replicas.write

    def late(client, *command):  # the orphan trim runs between the erasure's ZREM and DECRBY
        assert command[0] == "DECRBY"  # the erasure's only write through it
        controller.trim(before=0.0, max_bytes=1 << 30, orphan=True)
        return write(client, *command)
    monkeypatch.setattr(redis_replicas, "write", late)
    assert eraser.erase({"ana"}) == 1
    assert eraser.r.keys(f"{eraser.key}*") == []
    assert eraser.r.smembers(eraser.names) == set()


def test_a_counter_left_too_high_comes_back_to_zero_when_a_trim_empties_the_log(url):
    log = RedisStore(url).decision_log("s0")
    log.append([(T0 + k, "ana", b"r" * 50) for k in range(3)])
    log.r.incrby(f"{log.key}:bytes", 500)  # a crash between a page's ZREMs and its DECRBY
    assert log.trim(before=T0 + 10, max_bytes=1 << 30) == 3
    assert log.size() == 0
    log.append([(T0 + 20, "bob", b"r" * 50)])
    assert log.size() == entry_size((T0 + 20, "bob", b"r" * 50))
    assert log.r.smembers(log.names) == {b"s0"}


def test_a_trim_that_leaves_entries_keeps_their_count(url):
    log = RedisStore(url).decision_log("s0")
    log.append([(T0 + k, "ana", b"r" * 50) for k in range(3)])
    assert log.trim(before=T0 + 1, max_bytes=1 << 30) == 1
    assert log.size() == 2 * entry_size((T0, "ana", b"r" * 50))


def test_a_trims_pages_let_its_caller_in_between_and_count_exactly(url):
    log, other = RedisStore(url).decision_log("s0"), RedisStore(url).decision_log("s0")
    entries = [(T0 + k, f"c{k % 7}", b"r" * 40) for k in range(3 * REPLAY_PAGE + 10)]
    log.append(entries)
    calls = []

    def between() -> None:  # another remover and an appender come in between the pages
        calls.append(log.size())
        if len(calls) == 1:
            other.erase({"c3"})
            log.append([(T0 + 10_000, "new", b"n" * 40)])
    dropped = log.trim(before=T0 + 5_000, max_bytes=1 << 30, between_pages=between)
    assert len(calls) == 3  # a page, then two of what the erasure left
    erased = [e for e in entries[REPLAY_PAGE:] if e[1] == "c3"]
    assert dropped == len(entries) - len(erased)
    assert log.size() == entry_size((T0 + 10_000, "new", b"n" * 40))
    assert [e[1] for e in log.read(0, 1e12)] == ["new"]
