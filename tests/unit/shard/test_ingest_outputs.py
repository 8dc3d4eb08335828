"""What the ingest path leaves per decision, pinned against the plain way of building it
(issue 17 made each cheaper): a one-customer block (blocks.pack_one, also across catalogs of
other shapes in one process), the decision log's record (DecisionLog.decided, control
decisions among them) and the sealed id (DecisionSeal.seal), byte for byte, over events,
views, contexts and decisions that vary."""
from __future__ import annotations

import base64
import hashlib
import random

import msgpack
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.cluster.shard.outcomes import TAG_BYTES, DecisionSeal
from kairos.cluster.storage import blocks
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.decision import Decision

from bench.workload import random_context, random_event
from tests.unit.shard.test_shard import T0, Clock, _catalog, event, shard

pytestmark = pytest.mark.unit

VIEWS = [("web", "hero"), ("app", "home"), ("email", None), ("web", None), ("app", None)]
FIXED = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _compiled(version: str, control: float = 0.0, history: int | None = None,
              extra_feature: bool = False):
    """The default catalog under another version, with `control` held back on every channel,
    another history size and one more feature (a wider values row) if asked."""
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = version
    for channel in doc["channels"].values():
        channel["control"] = control
    if history is not None:
        doc["history"] = {"size": history}
    if extra_feature:
        doc["features"]["views_total"] = {"kind": "count", "event": "page_view"}
    return compiled_from_text(yaml.safe_dump(doc, sort_keys=False))


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


def test_a_customers_block_follows_its_catalog_when_another_was_packed_before():
    """pack_one's headers are cached per catalog: after a catalog with another history size
    and another values row (as a switch brings) its blocks still hold what export_block's
    do, and the first catalog's again after that."""
    first = _compiled("ingest-a", history=16)
    other = _compiled("ingest-b", history=7, extra_feature=True)
    shapes = set()
    for catalog in (first, other, first):
        s, ids, _, _ = _played(catalog, 3, 4, 40)
        resident = [c for c in ids if c in s.engine.table]
        assert resident
        for customer in resident:
            packed = blocks.pack_one(s.engine, customer)
            # the same map, key for key and byte for byte of each array (pack_one orders the
            # keys its own way)
            assert msgpack.unpackb(packed) == msgpack.unpackb(
                blocks.pack(blocks.export_block(s.engine, [customer])))
            block = blocks.unpack(packed)
            assert block["ids"] == [customer] and block["catalog"] == catalog.version
            shapes.add((block["values"].shape, block["ring_action"].shape))
    assert len(shapes) == 2  # the two catalogs' rows differ, or this proves nothing


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


@pytest.fixture(scope="module")
def with_control():
    """The default catalog holding back half of each channel's decisions as control."""
    return _compiled("ingest-control", control=0.5)


@FIXED
@given(seed=st.integers(0, 2**16), events=st.integers(0, 30), pushed=st.booleans(),
       with_context=st.booleans())
def test_a_logged_decision_is_its_record_packed(with_control, seed, events, pushed,
                                                with_context):
    """The log's bytes are the record the module doc (records.py) describes, its fields
    written out here in their order rather than through pack_decision/decision_row: inputs by
    predictor name, the eligible actions, the shown actions by slot, the profile as pack_one's
    block (none for a customer not resident); control decisions among them."""
    s, ids, rng, clock = _played(with_control, seed, 3, events)
    log, engine, c = s.decision_log, s.engine, s.engine.compiled
    assert log.enabled
    controls = []
    for customer in [*ids, "nobody"]:
        for channel, placement in VIEWS:
            now = T0 + rng.uniform(0, 1e5)
            context = random_context(_catalog(), rng, now) if with_context else None
            d = engine.decide(customer, channel, placement, context, now=now)
            controls.append(d.control)
            want = [
                "d", f"{d.decision_id}.sealed", now, customer, d.channel, d.placement,
                d.catalog_version, d.model_version, dict(context or {}),
                dict(zip(c.predictor_names, engine.inputs_of(d.decision_id).tolist())),
                blocks.pack_one(engine, customer) if customer in engine.table else b"",
                [c.action_ids[a] for a in engine.eligible[d.decision_id].tolist()],
                [[a.action_id, slot, a.selection, a.propensity, a.priority]
                 for slot, a in enumerate(d.actions)],
                d.control, pushed, d.nothing_selection]
            log.decided(d, want[1], now, context, pushed)
            logged_at, logged_customer, data = log._entries.pop()
            assert (logged_at, logged_customer) == (clock(), customer)
            assert data == msgpack.packb(want, use_bin_type=True)
    # both kinds logged, so a record that swaps control with pushed fails either way
    assert True in controls and False in controls
