"""The redirects merged anonymous ids leave (identity.py): those still holding the state
they handed over are not evicted to make room for newer links, since that state is its only
copy until the customer's shard merges it; the settled ones are, oldest first."""
from __future__ import annotations

import pytest

from kairos.cluster import identity
from kairos.cluster.identity import Directory, alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Settle
from kairos.core.compiler import default_compiled

from tests.unit.shard.test_shard import T0, event, merge, p_of, profile, shard, take

SECRET = b"s" * 32


@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setattr(identity, "REDIRECTS_PER_PARTITION", 2)
    monkeypatch.setattr(identity, "UNSETTLED_PER_PARTITION", 3)


def same_partition(key: str, n: int) -> list[str]:
    """`n` anonymous ids other than `key`'s, in its partition."""
    ids = (anonymous_id(alias_key("cookie", f"o{i}")) for i in range(100_000))
    return [a for a in ids if p_of(a) == p_of(key) and a != key][:n]


def test_a_link_retried_after_newer_links_turned_the_redirects_over_still_merges():
    """Its client died between Take and Merge; the anonymous profile's home is gone."""
    s = shard(default_compiled())
    x = anonymous_id(alias_key("cookie", "x"))
    s.process([event(x, "page_view", T0, category="home")])
    link = link_id(x[1:], "ana")
    assert s.process([take(x, link, "ana")])[0][0].value is not None
    for i, other in enumerate(same_partition(x, 4)):
        other_link = link_id(other[1:], f"c{i}")
        s.process([event(other, "app_open", T0)])
        state = s.process([take(other, other_link, f"c{i}")])[0][0].value
        s.process([merge(f"c{i}", other_link, other[1:], state)])
        s.process([Settle(partition=p_of(other), anonymous=other, link=other_link)])
    s.tick()  # the Takes' home deletes are done
    retry = s.process([take(x, link, "ana")])[0][0].value
    assert retry is not None
    s.process([merge("ana", link, x[1:], retry)])
    assert s.process([profile("ana")])[0][0].value["events_applied"] == 1
    assert len(s.directory.redirects[p_of(x)]) == 1 + identity.REDIRECTS_PER_PARTITION


def test_settled_redirects_are_evicted_oldest_first_and_unsettled_ones_never():
    d = Directory(SECRET)
    for i in range(4):
        d.leave_redirect(0, f"~s{i}", f"c{i}", f"l{i}", None)
    assert list(d.redirects[0]) == ["~s2", "~s3"]
    assert d.redirect_of("~s0") is None and d.redirect_of("~s3") == "c3"
    for i in range(3):
        d.leave_redirect(0, f"~u{i}", f"d{i}", f"m{i}", b"state")
    d.settle(0, "~u0", "m0")  # now the newest settled: ~s2 goes
    assert list(d.redirects[0]) == ["~s3", "~u0", "~u1", "~u2"]
    d.leave_redirect(0, "~u3", "d3", "m3", b"state")  # as a snapshot or a journal holds it
    assert list(d.redirects[0]) == ["~s3", "~u0", "~u1", "~u2", "~u3"]


def test_a_take_past_the_unsettled_states_answers_busy_and_hands_nothing_over():
    """Review rev43 finding 5: past UNSETTLED_PER_PARTITION links cut between Take and Settle
    in a partition, the oldest's state (its visitor's acknowledged events) was dropped. Now a
    Take that would hand another state over answers BUSY and changes nothing; a retry of a
    Take held still gets its state, a Take with nothing to hand over goes on, and once a link
    settles the refused one goes through."""
    s = shard(default_compiled())
    x = anonymous_id(alias_key("cookie", "x"))
    others = same_partition(x, 4)
    held = []
    for i, other in enumerate(others[:3]):
        s.process([event(other, "page_view", T0, category="home")])
        held.append((other, link_id(other[1:], f"c{i}"), f"c{i}"))
        assert s.process([take(*held[-1])])[0][0].value is not None
    s.process([event(x, "page_view", T0, category="home")])
    link = link_id(x[1:], "ana")
    [refused], _ = s.process([take(x, link, "ana")])
    assert refused.status == "busy" and "links never merged" in refused.reason
    assert s.process([profile(x)])[0][0].value["events_applied"] == 1  # still its own
    assert s.process([take(*held[0])])[0][0].value is not None  # a retry of a held one
    empty = others[3]
    assert s.process([take(empty, link_id(empty[1:], "bo"), "bo")])[0][0].status == "ok"
    other, other_link, customer = held[0]
    s.process([Settle(partition=p_of(other), anonymous=other, link=other_link)])
    state = s.process([take(x, link, "ana")])[0][0].value
    assert state is not None
    s.process([merge("ana", link, x[1:], state)])
    assert s.process([profile("ana")])[0][0].value["events_applied"] == 1
