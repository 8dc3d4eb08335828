"""A link's fold keeps the anonymous profile under a key no customer's id can be (rev43 identity
finding 1: it was the id "\\x00merging", so a link to that customer lost the visitor's events
and left its shard's table and residency out of step, failing every passivation after; and a
link merging beside that customer wiped it). The shard's requests here skip the gateway's
checks, as a journal's replay does."""
from __future__ import annotations

import math

import pytest

from kairos.cluster.identity import anonymous_id

from .test_shard import N_PARTITIONS, T0, event, link_steps, profile, shard

OLD_SCRATCH_ID = "\x00merging"


def applied(s, customer: str) -> int:
    return s.process([profile(customer, T0 + 3)])[0][0].value["events_applied"]


def passivates_and_checkpoints(s) -> None:
    s.passivate(T0 + 10 ** 7)
    s.checkpoint(math.inf, N_PARTITIONS)


@pytest.mark.parametrize("customer", [OLD_SCRATCH_ID, "ana"])
def test_a_link_folds_the_visitor_into_any_customer(compiled, customer):
    s = shard(compiled)
    key = "cookie:v"
    s.process([event(anonymous_id(key), "page_view", T0, category="home")])
    s.process([event(customer, "app_open", T0 + 1)])
    _, merged = link_steps(s, s, s, key, customer)
    assert merged.value is True
    assert applied(s, customer) == 2  # its own and the visitor's
    passivates_and_checkpoints(s)
    assert applied(s, customer) == 2  # from its home


def test_a_link_leaves_the_other_customers_of_its_shard_alone(compiled):
    s = shard(compiled)
    key = "cookie:v"
    s.process([event(OLD_SCRATCH_ID, "app_open", T0), event(OLD_SCRATCH_ID, "app_open", T0)])
    s.process([event(anonymous_id(key), "page_view", T0, category="home")])
    s.process([event("ana", "app_open", T0 + 1)])
    link_steps(s, s, s, key, "ana")
    assert applied(s, OLD_SCRATCH_ID) == 2
    assert applied(s, "ana") == 2
    passivates_and_checkpoints(s)
    assert applied(s, OLD_SCRATCH_ID) == 2
