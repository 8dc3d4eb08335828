"""What the ingest path leaves per decision, pinned against the plain way of building it
(issue 17 made each cheaper): a one-customer block (blocks.pack_one), the decision log's
record (DecisionLog.decided) and the sealed id (DecisionSeal.seal), byte for byte, over events,
views, contexts and decisions that vary."""
from __future__ import annotations

import base64
import hashlib
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.cluster.evidence.records import DecisionRecord, ShownAction, pack_decision
from kairos.cluster.shard.outcomes import TAG_BYTES, DecisionSeal
from kairos.cluster.storage import blocks
from kairos.core.decision import Decision

from bench.workload import random_context, random_event
from tests.unit.shard.test_shard import T0, Clock, _catalog, event, shard

pytestmark = pytest.mark.unit

VIEWS = [("web", "hero"), ("app", "home"), ("email", None), ("web", None), ("app", None)]
FIXED = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _played(compiled, seed: int, customers: int, events: int):
    """A shard with a decision log, after `events` random events of `customers` customers;
    the customers, the rng and the clock."""
    clock = Clock()
    s = shard(compiled, clock=clock, seed=seed)
    rng = random.Random(seed)
    ids = [f"c{k}" for k in range(customers)]
    for k in range(events):
        etype, attrs = random_event(_catalog(), rng, T0 + k)
        s.process([event(rng.choice(ids), etype, T0 + k, **attrs)])
    return s, ids, rng, clock


def _pack_one_plainly(engine, customer_id: str) -> bytes:
    """pack_one as it was: each array's key and map packed for every customer."""
    c, t = engine.compiled, engine.table
    row = t.index[customer_id]
    values = t.values[row:row + 1].copy()
    strings = blocks._localize(values, blocks._layout(c).string_slots, c)
    parts = [blocks._one_head(c), msgpack.packb([customer_id]), msgpack.packb("strings"),
             msgpack.packb(strings)]
    for name in blocks.ONE_ARRAYS:
        array = values if name == "values" else getattr(t, name)[row:row + 1]
        parts += [msgpack.packb(name),
                  msgpack.packb({"__nd__": array.dtype.str, "shape": list(array.shape),
                                 "data": array.tobytes()})]
    return b"".join(parts)


@FIXED
@given(seed=st.integers(0, 2**16), customers=st.integers(1, 6), events=st.integers(0, 40))
def test_a_customers_block_packs_as_its_arrays_would_one_by_one(compiled, seed, customers,
                                                                events):
    s, ids, _, _ = _played(compiled, seed, customers, events)
    for customer in ids:
        if customer in s.engine.table:
            packed = blocks.pack_one(s.engine, customer)
            assert packed == _pack_one_plainly(s.engine, customer)
            assert blocks.unpack(packed)["ids"] == [customer]


def _sealed_plainly(secret: bytes, clock: Clock, decision: Decision) -> str:
    """The sealed id as outcomes.py's doc defines it, each MAC keyed afresh."""
    issued = f"{int(clock()):x}"
    shared = (decision.customer_id, decision.decision_id, issued, decision.channel)

    def tag(fields: tuple, text: str) -> str:
        mac = hashlib.blake2b(msgpack.packb(fields), key=secret, digest_size=TAG_BYTES)
        mac.update(text.encode())
        return base64.urlsafe_b64encode(mac.digest()).decode()

    tags = "".join(tag(shared, a.action_id) for a in decision.actions)
    return f"{decision.decision_id}.{issued}.{tag((*shared, tags), '')}{tags}"


@FIXED
@given(seed=st.integers(0, 2**16), events=st.integers(0, 30),
       secret=st.binary(min_size=1, max_size=64))
def test_a_sealed_decision_is_the_decision_under_the_id_its_macs_make(compiled, seed, events,
                                                                     secret):
    s, ids, rng, clock = _played(compiled, seed, 3, events)
    seal = DecisionSeal(secret, clock)
    for customer in ids:
        for channel, placement in VIEWS:
            clock.now = T0 + rng.uniform(0, 1e5)
            decision = s.engine.decide(customer, channel, placement, now=clock.now,
                                       explain=rng.random() < 0.3)
            sealed = seal.seal(decision)
            want = Decision(**{**vars(decision),
                               "decision_id": _sealed_plainly(secret, clock, decision)})
            assert sealed == want and vars(sealed) == vars(want)
            assert type(sealed) is Decision and hash(sealed) == hash(want)
            for a in decision.actions:
                assert seal.opened([customer], sealed.decision_id, channel, a.action_id)[:2] \
                    == (decision.decision_id, customer)


@FIXED
@given(seed=st.integers(0, 2**16), events=st.integers(0, 30), pushed=st.booleans(),
       with_context=st.booleans())
def test_a_logged_decision_is_its_record_packed(compiled, seed, events, pushed, with_context):
    """The log's bytes are pack_decision's of the DecisionRecord the module doc describes:
    inputs by predictor name, the eligible actions, the shown actions by slot, the profile
    as pack_one's block (none for a customer not resident)."""
    s, ids, rng, clock = _played(compiled, seed, 3, events)
    log, engine, c = s.decision_log, s.engine, s.engine.compiled
    assert log.enabled
    for customer in [*ids, "nobody"]:
        for channel, placement in VIEWS:
            now = T0 + rng.uniform(0, 1e5)
            context = random_context(_catalog(), rng, now) if with_context else None
            decision = engine.decide(customer, channel, placement, context, now=now)
            codes = engine.eligible[decision.decision_id]
            want = DecisionRecord(
                f"{decision.decision_id}.sealed", now, customer, decision.channel,
                decision.placement, decision.catalog_version, decision.model_version,
                dict(context or {}),
                dict(zip(c.predictor_names, engine.inputs_of(decision.decision_id).tolist())),
                blocks.pack_one(engine, customer) if customer in engine.table else b"",
                tuple(c.action_ids[a] for a in codes.tolist()),
                tuple(ShownAction(a.action_id, slot, a.selection, a.propensity, a.priority)
                      for slot, a in enumerate(decision.actions)),
                decision.control, pushed=pushed, nothing_selection=decision.nothing_selection)
            log.decided(decision, want.decision_id, now, context, pushed)
            logged_at, logged_customer, data = log._entries.pop()
            assert (logged_at, logged_customer) == (clock(), customer)
            assert data == msgpack.packb(pack_decision(want), use_bin_type=True)
