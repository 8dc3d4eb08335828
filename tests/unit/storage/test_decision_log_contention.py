"""Decision-log removals beside other removers that go on (review rev41 d-store, finding 1):
when each removal bumped a count every other remover WATCHed, a trim or erasure read its page
again after each of theirs, without bound, and barely moved while ForgetCustomer erasures went
on. Each must finish, whatever the others do, and subtract only what it removed."""
from __future__ import annotations

import itertools

import pytest
from redis.commands.core import ScanCommands, SortedSetCommands

from kairos.cluster.storage.decision_logs import entry_size

from tests.unit.storage.test_decision_log_removals import logged

T0 = 1_795_629_600.0
ENOUGH = 10  # reads beside which another shard erased: past these, a remover is starved


def erasing_after_each(monkeypatch, cls: type, name: str, theirs) -> None:
    """After each `name` read of a sorted set returns, `theirs` logs a new customer and erases
    it (one more ForgetCustomer of another shard); not within that erasure's own reads."""
    real, busy, count = getattr(cls, name), [], itertools.count()

    def read(self, *args, **kwargs):
        reply = real(self, *args, **kwargs)
        if not busy:
            k = next(count)
            assert k < ENOUGH, f"still reading its page after {ENOUGH} erasures beside it"
            busy.append(k)
            try:
                theirs.append(logged("x", T0 + 1000 + k))
                theirs.erase({"x"})
            finally:
                busy.pop()
        return reply
    monkeypatch.setattr(cls, name, read)


@pytest.mark.parametrize("by", ["age", "size"])
def test_a_trim_finishes_while_another_shard_erases_beside_each_read(logs, monkeypatch, by):
    ours, theirs = logs
    kept = logged("cd", T0 + 50)
    ours.append(logged("ab", T0) + kept)
    read = "zrangebyscore" if by == "age" else "zrange"
    erasing_after_each(monkeypatch, SortedSetCommands, read, theirs)
    if by == "age":
        assert ours.trim(before=T0 + 10, max_bytes=1 << 30) == 2
    else:
        assert ours.trim(before=0.0, max_bytes=sum(map(entry_size, kept))) == 2
    assert [c for _, c, _ in ours.read(0.0, T0 + 2000)] == ["c", "d"]
    assert ours.size() == sum(map(entry_size, kept))


def test_an_erasure_finishes_while_another_shard_erases_beside_each_step(logs, monkeypatch):
    ours, theirs = logs
    ours.append(logged("abab", T0))
    erasing_after_each(monkeypatch, ScanCommands, "zscan", theirs)
    assert ours.erase({"a"}) == 2
    assert ours.size() == sum(map(entry_size, logged("abab", T0)[1::2]))
