"""A Redis journal append whose reply is lost (the socket timed out, before or after the server
ran its EXEC): the writer finds out whether its batch is in the journal before it answers, so
that an append answered UNAVAILABLE is never replayed, and one in the journal is acknowledged.
A home or snapshot write whose connection fails is no fence of its journal."""
from __future__ import annotations

from typing import Callable

import pytest
import redis

from kairos.cluster.storage import redis_journal
from kairos.cluster.storage.frames import pack_batch
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import JournalFenced, StoreUnavailable

from tests.unit.shard.test_shard import T0, Clock, event, profile, shard


def lose_next_reply(monkeypatch, ran: bool, then: Callable[[], object] = lambda: None) -> None:
    """The next transaction's reply is lost (a journal append's or a pipeline's), the server
    having run it first if `ran`; `then` runs before the error (the server goes away, say)."""
    real_exchange = redis_journal._exchange
    real_transaction = redis.client.Pipeline._execute_transaction

    def lose(run: Callable[[], object]) -> None:
        monkeypatch.setattr(redis_journal, "_exchange", real_exchange)
        monkeypatch.setattr(redis.client.Pipeline, "_execute_transaction", real_transaction)
        if ran:
            run()
        then()
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    def exchange(connection, *commands):
        if commands[-1] != ("EXEC",):
            return real_exchange(connection, *commands)
        lose(lambda: real_exchange(connection, *commands))

    def transaction(self, *args):
        lose(lambda: real_transaction(self, *args))
    monkeypatch.setattr(redis_journal, "_exchange", exchange)
    monkeypatch.setattr(redis.client.Pipeline, "_execute_transaction", transaction)


def records(journal) -> list[int]:
    return [record[3] for _, record in journal.replay()]


def in_doubt(redis_server, monkeypatch, prefix: str, ran: bool):
    """A journal (its url, and its writer) whose second append lost its reply with the server,
    which had run it if `ran`: the append was answered UNAVAILABLE, its batch not known yet.
    The server is back."""
    url = f"{redis_server.url}?prefix={prefix}"
    j = open_store(url).journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    lose_next_reply(monkeypatch, ran=ran, then=redis_server.stop)
    try:
        with pytest.raises(StoreUnavailable, match="not known yet"):
            j.append([("event", 1, "ana", 2)])
    finally:
        redis_server.start()
    return url, j


def test_a_batch_the_server_ran_is_acknowledged_when_its_reply_is_lost(redis_server,
                                                                        monkeypatch):
    j = open_store(f"{redis_server.url}?prefix=lost-ran").journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    lose_next_reply(monkeypatch, ran=True)
    assert j.append([("event", 1, "ana", 2)]) == 2
    assert j.append([("event", 1, "ana", 3)]) == 3
    assert records(j) == [1, 2, 3]


def test_a_batch_the_server_did_not_run_never_lands(redis_server, monkeypatch):
    """Its EXEC may still be on its way (sent on a connection that watched the last-LSN key
    before the writer looked): it fails its WATCH."""
    j = open_store(f"{redis_server.url}?prefix=lost-not-ran").journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    late = j.r.pipeline(transaction=True)
    late.watch(j.last)
    lose_next_reply(monkeypatch, ran=False)
    with pytest.raises(StoreUnavailable):
        j.append([("event", 1, "ana", 2)])
    late.multi()
    late.zadd(j.key, {pack_batch(2, [("event", 1, "ana", 2)]): 2})
    late.set(j.last, 2)
    with pytest.raises(redis.exceptions.WatchError):
        late.execute()
    assert records(j) == [1]
    again = open_store(f"{redis_server.url}?prefix=lost-not-ran").journal("s0", "os")
    assert again.append([("event", 1, "ana", 3)]) == 2 and records(again) == [1, 3]


def test_a_batch_the_server_cannot_tell_of_is_taken_back_by_the_next_writer(redis_server,
                                                                             monkeypatch):
    """The server ran the batch and went away before the writer could ask: the append is
    answered UNAVAILABLE, so the journal's next writer (the shard's rebuild) takes it back
    before it reads; the client's retry is then applied once."""
    url, j = in_doubt(redis_server, monkeypatch, "lost-unknown", ran=True)
    assert j.r.zcard(j.key) == 2  # it did land
    again = open_store(url).journal("s0", "os")
    assert again.last_lsn == 1 and records(again) == [1]
    assert again.append([("event", 1, "ana", 2)]) == 2 and records(again) == [1, 2]


def test_a_writer_with_a_batch_in_doubt_appends_nothing_more(redis_server, monkeypatch):
    """The batch in doubt never landed: the same batch retried through the same writer and
    acknowledged would be taken back by the next writer, as the one in doubt."""
    url, j = in_doubt(redis_server, monkeypatch, "lost-doubt-retry", ran=False)
    with pytest.raises(StoreUnavailable, match="in doubt .* appends nothing more"):
        j.append([("event", 1, "ana", 2)])
    assert records(j) == [1]
    again = open_store(url).journal("s0", "os")
    assert again.append([("event", 1, "ana", 2)]) == 2
    assert records(open_store(url).journal("s0", "os")) == [1, 2]


def test_a_batch_in_doubt_in_a_journal_fenced_since_is_left_to_the_heir(redis_server,
                                                                        monkeypatch):
    """The heir that fenced the journal replayed the batch (it landed): the next writer here
    is refused, and the batch is no longer kept in doubt."""
    url, j = in_doubt(redis_server, monkeypatch, "lost-doubt-fenced", ran=True)
    open_store(url).fence_journal("s0")
    assert records(open_store(url).read_journal("s0")) == [1, 2]
    with pytest.raises(JournalFenced):
        open_store(url).journal("s0", "os")
    assert j._where not in redis_journal._in_doubt


def test_a_shard_whose_append_lost_its_reply_applies_the_clients_retry_once(
        redis_server, monkeypatch, compiled):
    """The reviewer's case: the round is answered UNAVAILABLE, the shard is rebuilt from the
    store, and the client sends the event again (no idempotency key)."""
    url, clock = f"{redis_server.url}?prefix=lost-shard", Clock()
    s = shard(compiled, store=open_store(url), clock=clock)
    lose_next_reply(monkeypatch, ran=True, then=redis_server.stop)
    try:
        with pytest.raises(StoreUnavailable):
            s.process([event("ana", "app_open", T0)])
    finally:
        redis_server.start()
    rebuilt = shard(compiled, store=open_store(url), clock=clock)
    rebuilt.recover()
    assert rebuilt.process([event("ana", "app_open", T0)])[0][0].status == "ok"
    assert rebuilt.process([profile("ana")])[0][0].value["events_applied"] == 1


@pytest.mark.parametrize("write", ["put", "delete", "put_snapshots"])
def test_a_home_or_snapshot_write_whose_connection_fails_is_no_fence(redis_server, monkeypatch,
                                                                     write):
    """A connection that fails while the write watches the fence: with no fence there, the
    write is StoreUnavailable (tried again), not JournalFenced, which would say an heir took
    the shard's partitions over."""
    store = open_store(f"{redis_server.url}?prefix=lost-home-{write}")
    calls = {"put": lambda: store.put(1, "ana", b"new", unless_fenced="s0"),
             "delete": lambda: store.delete(1, "ana", unless_fenced="s0"),
             "put_snapshots": lambda: store.put_snapshots({1: b"new"}, unless_fenced="s0")}
    store.put(1, "ana", b"old")
    lose_next_reply(monkeypatch, ran=False)
    with pytest.raises(StoreUnavailable) as failed:
        calls[write]()
    assert not isinstance(failed.value, JournalFenced)
    assert "Timeout reading" in str(failed.value)
    assert (store.get(1, "ana"), store.get_snapshot(1)) == (b"old", None)
    calls[write]()  # the journal is not fenced: the write goes on
    assert (store.get(1, "ana"), store.get_snapshot(1)) == \
        {"put": (b"new", None), "delete": (None, None), "put_snapshots": (b"old", b"new")}[write]
