"""The decision log as a shard writes it: what each decision and outcome leaves (sealed ids,
selection probabilities, eligible actions, model inputs, the profile as a block), retention,
ForgetCustomer (in the memory, directory and Redis stores), and the writer's thread."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kairos.cluster.evidence.records import DecisionRecord, OutcomeRecord, unpack
from kairos.cluster.settings import DECISION_LOG_RETENTION_S, DECISION_LOG_TRIM_S
from kairos.cluster.shard import decisionlog
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore
from kairos.core.compiler import Reason
from kairos.core.engine import DecisionEngine

from tests.unit.shard.test_shard import (T0, Clock, decide, event, forget, p_of, shard,
                                         watch)
from kairos.cluster.protocol import Ok, Outcome


def respond(customer, decision, outcome="accept", when=T0 + 5, action=None) -> Outcome:
    return Outcome(partition=p_of(customer), customer_id=customer,
                   action_id=action or decision.actions[0].action_id, channel=decision.channel,
                   outcome=outcome, when=when, decision_id=decision.decision_id)


def logged(store, since=T0 - 1e6, until=T0 + 1e6):
    """Every record of every log in the store, decisions and outcomes apart."""
    decisions, outcomes, cut = decisionlog.read(store, store.decision_logs(), since, until,
                                                until, None, 10_000)
    assert not cut
    return decisions, outcomes


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "directory", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "directory":
        return DirectoryStore(tmp_path / "store")
    return RedisStore(f"{request.getfixturevalue('redis_server').url}"
                      f"?prefix=t{abs(hash(request.node.name))}")


def test_a_decide_and_its_outcome_leave_what_replay_needs(compiled):
    clock = Clock(T0)
    s = shard(compiled, store=MemoryStore(), clock=clock)
    s.process([event("ana", "page_view", T0 - 60, category="home")])
    [reply], _ = s.process([decide("ana", context={"device": "mobile"}, now=T0)])
    sent = reply.value
    assert s.process([respond("ana", sent)])[0] == [Ok(value="decision")]
    [d], [o] = logged(s.store)
    assert isinstance(d, DecisionRecord) and isinstance(o, OutcomeRecord)
    # the id its caller saw, which the outcome names
    assert d.decision_id == sent.decision_id == o.decision_id
    assert (d.customer_id, d.channel, d.placement, d.time) == ("ana", "web", sent.placement, T0)
    assert (d.catalog_version, d.model_version) == (sent.catalog_version, sent.model_version)
    assert d.context == {"device": "mobile"}
    assert [(a.action_id, a.slot, a.selection, a.propensity, a.priority) for a in d.shown] == \
        [(a.action_id, k, a.selection, a.propensity, a.priority)
         for k, a in enumerate(sent.actions)]
    assert all(0 < a.selection <= 1 for a in d.shown)
    # eligible: exactly the actions the explanation does not drop for a rule or a policy
    explained = s.engine.decide("ana", "web", sent.placement, {"device": "mobile"}, T0,
                                explain=True).explanation
    before_scoring = {x.action_id for x in explained.dropped
                      if Reason[x.reason] < Reason.INVALID_VALUE}
    assert set(d.eligible) == set(compiled.action_ids) - before_scoring
    assert {a.action_id for a in d.shown} <= set(d.eligible)
    assert list(d.inputs) == compiled.predictor_names and d.inputs["bias"] == 1.0
    # the profile as the decision saw it loads into an engine of the catalog
    engine = DecisionEngine(compiled)
    assert blocks.import_block(engine, blocks.unpack(d.profile)) == ["ana"]
    np.testing.assert_array_equal(engine.table.values[engine.table.index["ana"]],
                                  s.engine.table.values[s.engine.table.index["ana"]])
    assert (o.customer_id, o.action_id, o.outcome, o.time) == \
        ("ana", sent.actions[0].action_id, "accept", T0 + 5)


def test_impressions_event_decisions_and_pushes_are_logged_once_each(compiled):
    s = shard(compiled, store=MemoryStore())
    [shown], _ = s.process([decide("bob", now=T0, record_impression=True)])
    s.process([watch("ana", "sink-1", "push"), watch("ana", "sink-2", "push")])
    replies, pushes = s.process([event("ana", "page_view", T0, category="home")._replace(
        decide=("web", None))])
    decisions, outcomes = logged(s.store)
    assert {o.outcome for o in outcomes} == {"impression"}
    assert {o.decision_id for o in outcomes} == {shown.value.decision_id}
    ids = {d.decision_id for d in decisions}
    assert shown.value.decision_id in ids and replies[0].decision.decision_id in ids
    # a decision pushed to two sinks is one decision, sealed and logged once
    assert len(pushes) == 2 and pushes[0].decision is pushes[1].decision
    assert pushes[0].decision.decision_id in ids and len(decisions) == 3
    # a watched view decided again with the same best action is not pushed, nor logged, and
    # what the engine noted of it for the log goes with the round
    assert s.process([event("ana", "page_view", T0 + 1, category="home")])[1] == []
    assert len(logged(s.store)[0]) == 3 and s.engine.eligible == {}


GONE, KEPT = "forgotten-7f3c9a", "kept-2b1d84"


def test_forget_erases_the_customer_from_every_log(store, compiled):
    s = shard(compiled, store=store)
    other = shard(compiled, name="s1", store=store)  # the partition's owner before a move
    for owner in (other, s):
        owner.process([event(GONE, "page_view", T0, category="home"),
                       event(KEPT, "page_view", T0, category="home")])
        replies, _ = owner.process([decide(GONE), decide(KEPT)])
        owner.process([respond(GONE, replies[0].value)])
    assert {d.customer_id for d in logged(store)[0]} == {GONE, KEPT}
    s.process([forget(GONE)])
    decisions, outcomes = logged(store)
    assert {r.customer_id for r in decisions + outcomes} == {KEPT} and len(decisions) == 2
    for name in store.decision_logs():  # the id is nowhere in what is stored, profiles included
        for _, customer_id, data in store.decision_log(name).read(-np.inf, np.inf):
            assert customer_id == KEPT and GONE.encode() not in data


def test_retention_drops_what_is_older_than_its_age_bound(compiled, monkeypatch):
    clock = Clock(T0)
    store = MemoryStore()
    s = shard(compiled, store=store, clock=clock)
    s.process([decide("ana", now=T0)])
    clock.now = T0 + DECISION_LOG_RETENTION_S - 1
    s.process([decide("bob", now=clock.now)])
    clock.now = T0 + DECISION_LOG_RETENTION_S + DECISION_LOG_TRIM_S + 1
    s.tick()
    assert [d.customer_id for d in logged(store, until=clock.now)[0]] == ["bob"]


def test_the_log_off_logs_nothing_and_forget_still_erases(compiled):
    store = MemoryStore()
    on = shard(compiled, store=store)
    on.process([decide("ana")])
    off = shard(compiled, name="s1", store=store)
    off.decision_log.enabled = False
    off.process([decide("bob")])
    off.process([forget("ana")])
    assert logged(store) == ([], [])


def test_the_background_writer_writes_in_order(compiled, tmp_path):
    store = DirectoryStore(tmp_path)
    s = shard(compiled, store=store)
    s.decision_log.writer.in_background()
    s.process([decide("ana")])
    s.process([forget("ana")])
    s.process([decide("bob")])
    s.close()  # waits for the writer
    assert [d.customer_id for d in logged(store)[0]] == ["bob"]
    assert s.counts["decision_log_records"] == 2 and s.counts["decision_log_erased"] == 1


def test_a_writer_behind_by_its_bound_drops_new_records_and_counts_them(monkeypatch):
    monkeypatch.setattr(decisionlog, "DECISION_LOG_PENDING", 2)
    store, counts = MemoryStore(), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.submit([(T0, "ana", b"1"), (T0, "ana", b"2"), (T0, "ana", b"3")], set())
    assert [e[2] for e in store.decision_log("s0").read(T0, T0)] == [b"1", b"2"]
    assert counts["decision_log_dropped"] == 1 and counts["decision_log_records"] == 2


def test_stored_records_that_are_not_records_are_refused():
    with pytest.raises(ValueError, match="not a stored log record"):
        unpack(["x", 1])


def test_a_decision_held_back_as_control_is_logged_so():
    """With the web's control share at 1/2, the log marks each held decision: the ones the
    caller saw marked `control`, and only those."""
    import yaml

    from kairos.core.catalog import default_catalog_text
    from kairos.core.compiler import compiled_from_text
    doc = yaml.safe_load(default_catalog_text())
    doc["channels"]["web"]["control"] = 0.5
    s = shard(compiled_from_text(yaml.safe_dump(doc)), store=MemoryStore(), clock=Clock(T0))
    sent = {}
    for i in range(40):
        [reply], _ = s.process([decide(f"c{i}", context={"device": "mobile"}, now=T0 + i)])
        sent[reply.value.decision_id] = reply.value.control
    decisions, _ = logged(s.store)
    assert {d.decision_id: d.control for d in decisions} == sent
    assert 0 < sum(sent.values()) < 40
