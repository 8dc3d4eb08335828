"""The log writer appends between a trim's pages (review rev41 d-store2, finding 2): a Redis
trim of a GiB takes some 25 s, and the records submitted meanwhile waited for all of it on
the writer's one thread, dropped past DECISION_LOG_PENDING."""
from __future__ import annotations

from collections import Counter

import pytest

from kairos.cluster.shard import decisionlog
from kairos.cluster.storage.redis_journal import REPLAY_PAGE
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisLog, RedisStore

T0 = 1_795_629_600.0
NEW = (T0 + 10_000, "bob", b"new")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def trimmed_with_records_submitted_during_its_first_page(redis_server, monkeypatch,
                                                         forget: set[str]) -> list[bool]:
    """Whether the record submitted during a trim's first page was in the log at each later
    page; the writer's counts checked once done."""
    store = RedisStore(f"{redis_server.url}?prefix=tt{len(forget)}")
    store.decision_log("s0").append([(T0 + k, "ana", b"old") for k in range(3 * REPLAY_PAGE)])
    counts = Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.in_background()
    seen, remove = [], RedisLog._remove

    def page(self, members):
        if not seen:
            writer.submit([NEW], forget)
        seen.append(any(store.decision_log("s0").read(NEW[0], NEW[0])))
        return remove(self, members)
    monkeypatch.setattr(RedisLog, "_remove", page)
    writer.submit([], set(), (T0 + 5_000, 1 << 30))
    writer.written()  # the trim's write
    writer.close()  # and the one the submission during it scheduled
    assert [e[1] for e in store.decision_log("s0").read(0, 1e12)] == ["bob"]
    assert counts["decision_log_records"] == 1 and counts["decision_log_failures"] == 0
    return seen


def test_records_submitted_during_a_trim_are_appended_at_its_next_page(redis_server,
                                                                       monkeypatch):
    assert trimmed_with_records_submitted_during_its_first_page(
        redis_server, monkeypatch, set()) == [False, True, True]


def test_records_after_a_forget_are_appended_at_the_next_page_once_it_has_erased(
        redis_server, monkeypatch):
    """A ForgetCustomer submitted during a trim runs at its next page, then the records made
    after it are appended (and kept: the log ends holding bob's new record): they waited for
    the whole trim, and were dropped past DECISION_LOG_PENDING (review rev41 d-store3)."""
    assert trimmed_with_records_submitted_during_its_first_page(
        redis_server, monkeypatch, {"bob"}) == [False, True, True]
