"""Link ids (identity.py: `link_id`) name one link each, whatever '>' or '\\' the alias
value or the customer id holds; the ids links had before (`key>customer`) are still
recognised in tombstones, blocks and redirects written before (review rev43 finding 7)."""
from __future__ import annotations

import itertools

from kairos.cluster.identity import Directory, anonymous_id, link_id
from kairos.cluster.shard.identities import CustomerIdentities

SECRET = b"s" * 32
NOW = 1_000.0


def test_two_links_never_share_an_id():
    parts = ["".join(p) for n in range(1, 4) for p in itertools.product("a>\\", repeat=n)]
    pairs = [(f"t:{value}", customer) for value in parts for customer in parts]
    assert len({link_id(*pair) for pair in pairs}) == len(pairs)
    assert link_id("cookie:a>b", "c") != link_id("cookie:a", "b>c")
    assert link_id("cookie:abc", "ana") == "cookie:abc>ana"  # ids without either: as before


def test_a_forgotten_customers_tombstone_refuses_its_own_link_only():
    """Forgetting customer 'b>c' (alias cookie:a) buried the id a link of cookie:a>b to 'c'
    had too: in the same partition that link was refused."""
    d = Directory(SECRET)
    d.bury(0, link_id("cookie:a", "b>c"), NOW)
    assert d.link_buried(0, "cookie:a", "b>c", NOW)
    assert not d.link_buried(0, "cookie:a>b", "c", NOW)


def test_the_ids_links_had_before_are_still_recognised():
    """A tombstone, a customer's block and a redirect written before the ids were escaped:
    a late step of the buried link is refused, a retried link is not merged twice, and a
    Settle or a forget's step replayed from an older journal finds its redirect."""
    d = Directory(SECRET)
    d.bury(0, "cookie:a>b>c", NOW)  # the forget of 'b>c' (alias cookie:a), before
    assert d.link_buried(0, "cookie:a", "b>c", NOW)
    identities = CustomerIdentities()
    identities.restore("b>c", {"aliases": ["cookie:a"], "links": ["cookie:a>b>c"]})
    assert identities.link("b>c", "cookie:a") is False
    anonymous = anonymous_id("cookie:x>y")
    d.leave_redirect(0, anonymous, "z", "cookie:x>y>z", b"state")
    assert d.redirected_by(0, anonymous, link_id("cookie:x>y", "z"))
    d.settle(0, anonymous, "cookie:x>y>z")
    assert d.handed_over(0, anonymous) == ["z", "cookie:x>y>z", None]


def test_an_id_a_link_had_before_is_not_taken_for_another_links_new_one():
    """The old id of cookie:a\\ to '>X' is the new id of cookie:a> to 'X': forgetting X (its
    alias cookie:a>) refused the other link for ever, and X's block holding the one link
    took the other for merged (review rev43 d-identity finding 5). An old id that reads as a
    new one is not checked; one that cannot still is."""
    d = Directory(SECRET)
    d.bury(0, link_id("cookie:a>", "X"), NOW)
    assert not d.link_buried(0, "cookie:a\\", ">X", NOW)
    identities = CustomerIdentities()
    assert identities.link("x", "cookie:a>") is True
    assert identities.link("x", "cookie:a\\>") is True
    d.bury(0, "cookie:a>b>c", NOW)
    assert d.link_buried(0, "cookie:a", "b>c", NOW)
