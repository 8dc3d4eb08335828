"""A Redis decision log's byte counter when two removers read the same members: any shard
may trim or erase any log, so a shard's trim and another shard's ForgetCustomer erasure (or
two erasures) overlap. Only what was removed is subtracted (review rev41 storage, finding 3:
the counter went below zero and the byte bound stopped holding)."""
from __future__ import annotations

from redis.commands.core import ScanCommands, SortedSetCommands

from kairos.cluster.storage.decision_logs import entry_size

T0 = 1_795_629_600.0


def logged(customers: str, t: float) -> list:
    return [(t + k, c, b"r" * 100) for k, c in enumerate(customers)]


def after_first(monkeypatch, cls: type, name: str, meanwhile) -> None:
    """Run `meanwhile` once, right after the first `name` read of a sorted set returns."""
    real, done = getattr(cls, name), []

    def read(self, *args, **kwargs):
        reply = real(self, *args, **kwargs)
        if not done:
            done.append(True)
            meanwhile()
        return reply
    monkeypatch.setattr(cls, name, read)


def test_a_trim_beside_another_shards_erasure_subtracts_only_what_it_removed(
        logs, monkeypatch):
    ours, theirs = logs
    ours.append(logged("abababab", T0))
    erased = []
    after_first(monkeypatch, SortedSetCommands, "zrangebyscore",
                lambda: erased.append(theirs.erase({"a"})))
    assert ours.trim(before=T0 + 100, max_bytes=1 << 30) == 4
    assert erased == [4]
    assert ours.size() == 0 and ours.r.zcard(ours.key) == 0
    fresh = logged("cccc", T0 + 200)
    ours.append(fresh)
    assert ours.size() == sum(map(entry_size, fresh))


def test_two_erasures_of_one_customer_subtract_its_entries_once(logs, monkeypatch):
    ours, theirs = logs
    ours.append(logged("abab", T0))
    erased = []
    after_first(monkeypatch, ScanCommands, "zscan",
                lambda: erased.append(theirs.erase({"a"})))
    assert ours.erase({"a"}) == 0
    assert erased == [2]
    assert ours.size() == sum(map(entry_size, logged("abab", T0)[1::2]))


def test_a_trim_by_size_beside_an_erasure_keeps_the_log_at_its_bound(logs, monkeypatch):
    ours, theirs = logs
    entries = logged("abababab", T0)
    ours.append(entries)
    one = entry_size(entries[0])
    after_first(monkeypatch, SortedSetCommands, "zrange", lambda: theirs.erase({"a"}))
    ours.trim(before=0.0, max_bytes=2 * one)
    assert ours.size() == 2 * one
    assert [c for _, c, _ in ours.read(0.0, T0 + 100)] == ["b", "b"]
