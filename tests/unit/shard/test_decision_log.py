"""The decision log as a shard writes it: what each decision and outcome leaves (sealed ids,
selection probabilities, eligible actions, model inputs, the profile as a block), retention,
ForgetCustomer (in the memory, directory and Redis stores), and the writer's thread."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter

import msgpack
import numpy as np
import pytest

from kairos.cluster.evidence.records import (OUTCOMES_PER_DECISION, DecisionPage,
                                             DecisionRecord, OutcomeRecord, PageOutcomes,
                                             decision_key, pack_decision, pack_outcome,
                                             to_json, unpack)
from kairos.cluster.identity import anonymous_id
from kairos.cluster.settings import (DECISION_LOG_RETENTION_S, DECISION_LOG_TRIM_S,
                                     SNAPSHOT_AFTER_S)
from kairos.cluster.shard import decisionlog
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.compiler import Reason, compiled_from_text
from kairos.core.engine import DecisionEngine

from tests.unit.shard.test_shard import (T0, Clock, decide, event, forget, link_steps, p_of,
                                         shard, watch)
from kairos.cluster.protocol import Ok, Outcome


def respond(customer, decision, outcome="accept", when=T0 + 5, action=None) -> Outcome:
    return Outcome(partition=p_of(customer), customer_id=customer,
                   action_id=action or decision.actions[0].action_id, channel=decision.channel,
                   outcome=outcome, when=when, decision_id=decision.decision_id)


def logged(store, since=0.0, until=1e11):
    """Every record of every log in the store, decisions and outcomes apart, in the order
    they were logged. (Shards log at their clock's time, which is the real one in some of
    these tests: a range around T0 left every record out from 11.6 days after T0 on.)"""
    records = sorted(((logged, unpack(msgpack.unpackb(data, raw=False)))
                      for name in store.decision_logs()
                      for logged, _, data in store.decision_log(name).read(since, until)),
                     key=lambda r: r[0])
    return [r for _, r in records if isinstance(r, DecisionRecord)], \
        [r for _, r in records if isinstance(r, OutcomeRecord)]


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
    # ana's record was still waiting for the writer: dropped, never written
    assert s.counts["decision_log_records"] == 1 and s.counts["decision_log_erased"] == 0


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
    sent, _ = logged_as_sent({}, 40, "control")
    assert 0 < sum(sent.values()) < 40


def logged_as_sent(arbitration: dict, n: int, field: str) -> tuple[dict, list]:
    """`n` web decisions with the web's control share at 1/2 (and these arbitration
    settings): each one's `field` as its caller saw it, by decision id, which the log must
    hold as well; and the decisions logged."""
    import yaml

    from kairos.core.catalog import default_catalog_text
    from kairos.core.compiler import compiled_from_text
    doc = yaml.safe_load(default_catalog_text())
    doc["channels"]["web"]["control"] = 0.5
    for key, value in arbitration.items():
        target = doc["arbitration"]
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    s = shard(compiled_from_text(yaml.safe_dump(doc)), store=MemoryStore(), clock=Clock(T0))
    sent = {}
    for i in range(n):
        [reply], _ = s.process([decide(f"c{i}", context={"device": "mobile"}, now=T0 + i)])
        sent[reply.value.decision_id] = getattr(reply.value, field)
    decisions, _ = logged(s.store)
    assert {d.decision_id: getattr(d, field) for d in decisions} == sent
    return sent, decisions


def test_an_anonymous_visitors_decision_answered_once_linked_keeps_its_outcome(compiled):
    """The decision is logged under the anonymous id it was shown to; its outcome, reported
    under the customer the visitor became, is logged under the same id, so an export joins
    them (decision_key: the customer and the engine's id)."""
    s = shard(compiled, store=MemoryStore())
    key, anon = "cookie:c1", anonymous_id("cookie:c1")
    s.process([event(anon, "page_view", T0 - 60, category="home")])
    [shown], _ = s.process([decide(anon, now=T0)])
    s.process([event("ana", "page_view", T0 - 30, category="home")])
    link_steps(s, s, s, key, "ana")
    assert isinstance(s.process([respond("ana", shown.value)])[0][0], Ok)
    [d], [o] = logged(s.store)
    assert d.customer_id == o.customer_id == anon
    assert decision_key(o.customer_id, o.decision_id) == decision_key(d.customer_id,
                                                                      d.decision_id)


def test_a_vector_in_the_context_is_logged_as_its_numbers(compiled):
    """The gateway passes a vector on packed; exports write the context as JSON."""
    from tests.unit.gateway.test_vectors import CATALOG
    s = shard(compiled_from_text(CATALOG), store=MemoryStore())
    vector = np.linspace(-1, 1, 8)
    [reply], _ = s.process([decide("ana", context={"embedding": vector.astype("<f8").tobytes()})])
    [d], _ = logged(s.store)
    assert d.context == {"embedding": vector.tolist()}
    assert json.loads(json.dumps(to_json(d)))["context"] == {"embedding": vector.tolist()}


def entries(*records, at: float) -> list:
    """Log entries of the records, all logged at `at`."""
    return [(at, r.customer_id, msgpack.packb(
        (pack_decision if isinstance(r, DecisionRecord) else pack_outcome)(r),
        use_bin_type=True)) for r in records]


def decision_at(k: int, customer: str = "ana") -> DecisionRecord:
    return DecisionRecord(f"0-{k:x}.6b119032.H_0oRzXZ", T0 + k, customer, "web", "hero", "v1",
                          3, {}, {}, b"", ("a1",), ())


def test_a_page_of_decisions_after_a_cursor_skips_none_that_share_its_moment(store):
    log = store.decision_log("s0")
    made = [decision_at(k) for k in range(7)]
    log.append(entries(*made[:5], at=T0))  # five share one moment
    log.append(entries(*made[5:], at=T0 + 1))
    got, after = [], None
    for _ in range(10):
        page, more = decisionlog.read_decisions(store, ["s0"], DecisionPage(
            T0 - 1, T0 + 1, after, None, 2))
        got += [d for _, d in page]
        if not more:
            break
        after = (page[-1][0], page[-1][1].decision_id)
    assert [d.decision_id for d in got] == [d.decision_id for d in made]


def test_a_decisions_outcomes_are_found_however_many_others_came_before_them(store):
    log = store.decision_log("s0")
    ana, bob = decision_at(1, "ana"), decision_at(2, "bob")
    log.append(entries(ana, bob, at=T0))
    noise = [OutcomeRecord(bob.decision_id, "bob", "a1", "impression", 0.0, T0 + k / 1000)
             for k in range(500)]
    log.append(entries(*noise, at=T0 + 1))
    late = OutcomeRecord(ana.decision_id, "ana", "a1", "convert", 9.0, T0 + 86_400)
    log.append(entries(late, at=T0 + 86_400))
    repeats = [OutcomeRecord(ana.decision_id, "ana", "a1", "accept", 0.0, T0 + 2 + k)
               for k in range(40)]  # apart: a Redis log keeps one of members alike
    log.append(entries(*repeats, at=T0 + 86_401))
    outcomes, cut = decisionlog.read_outcomes(store, ["s0"], PageOutcomes(
        frozenset({decision_key("ana", ana.decision_id)}), T0, T0 + 2 * 86_400))
    assert outcomes[0] == late and len(outcomes) == OUTCOMES_PER_DECISION
    assert cut == 40 + 1 - OUTCOMES_PER_DECISION


def test_a_push_is_logged_as_one_and_an_answer_is_not(compiled):
    s = shard(compiled, store=MemoryStore())
    s.process([watch("ana", "sink-1", "push")])
    _, pushes = s.process([event("ana", "page_view", T0, category="home")])
    [answered], _ = s.process([decide("bob", now=T0)])
    flags = {d.decision_id: d.pushed for d in logged(s.store)[0]}
    assert flags == {pushes[0].decision.decision_id: True, answered.value.decision_id: False}
    # a log written before the probability of nothing was kept reads as one without it,
    # and one written before pushes were told apart, as answers
    assert unpack(pack_decision(logged(s.store)[0][0])[:-1]).pushed is True
    assert unpack(pack_decision(logged(s.store)[0][0])[:-2]).pushed is False


def test_a_decision_that_shows_nothing_is_logged_with_the_probability_of_that():
    """Nothing reaches the restraint threshold, no trial is drawn, and half the web's
    decisions are held back: those show an eligible action, the others nothing, which the
    policy shows with probability 1/2 (the caller's `nothing_selection`, logged as is); a
    decision that shows something logs none."""
    _, decisions = logged_as_sent({"restraint_threshold": 1e9,
                                   "exploration.trial_rate": 0.0}, 20, "nothing_selection")
    assert {d.nothing_selection for d in decisions if d.shown} == {None}
    assert {d.nothing_selection for d in decisions if not d.shown} == {0.5}
    assert 0 < sum(not d.shown for d in decisions) < 20


def pages(store, limit: int) -> list[str]:
    got, after = [], None
    while True:
        page, more = decisionlog.read_decisions(store, ["s0"], DecisionPage(
            T0 - 10, T0 + 10, after, None, limit))
        got += [d.decision_id for _, d in page]
        if not more:
            return got
        after = (page[-1][0], page[-1][1].decision_id)


def test_pages_take_decisions_written_out_of_order_within_the_slack(store):
    """A log is in write order: ids of one moment need not sort so (a hex counter writes
    "9", "a", "10"), and a clock may step back."""
    log = store.decision_log("s0")
    tied = [dataclasses.replace(decision_at(0), decision_id=f"e1-{k}.6b119032.x", time=T0)
            for k in ("9", "a", "10")]
    log.append(entries(*tied, at=T0))
    stepped = [dataclasses.replace(decision_at(0), decision_id=f"s-{k}", customer_id=f"c{k}")
               for k in range(4)]
    for record, at in zip(stepped, (T0 + 1, T0 + 2, T0 + 3, T0 + 0.5)):  # the last stepped back
        log.append(entries(record, at=at))
    for limit in (1, 2):
        assert sorted(pages(store, limit)) == sorted(d.decision_id for d in tied + stepped)


def test_a_writer_that_fails_otherwise_counts_it_and_keeps_its_erasures(monkeypatch, caplog):
    """The writer's thread is nobody's caller: whatever fails there is counted and logged."""
    counts, store = Counter(), MemoryStore()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.in_background()
    monkeypatch.setattr(MemoryStore, "decision_logs", lambda self: 1 / 0)
    writer.submit(entries(decision_at(1), at=T0), {"ana"})
    writer.written()
    assert counts["decision_log_failures"] == 1 and "ZeroDivisionError" in caplog.text
    assert len(list(store.decision_log("s0").read(T0, T0))) == 1
    monkeypatch.undo()
    writer.submit([], set(), (0.0, 1 << 30))  # the erasure is tried again with the next trim
    writer.written()
    assert list(store.decision_log("s0").read(T0, T0)) == []
    writer.close()


def writer_beside_a_log_that_cannot_be_erased(monkeypatch):
    store, counts = MemoryStore(shared=True), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    gone = store.decision_log("gone-shard")
    gone.append([(T0, "ana", b"kept")])
    erasing = []

    def broken(ids):
        erasing.append(set(ids))
        raise StoreUnavailable("reading decision log gone-shard: Permission denied")
    monkeypatch.setattr(gone, "erase", broken)
    return store, counts, writer, erasing


def test_a_log_that_cannot_be_erased_stops_neither_appends_nor_the_shards_retention(
        monkeypatch, caplog):
    store, counts, writer, erasing = writer_beside_a_log_that_cannot_be_erased(monkeypatch)
    own = store.decision_log("s0")
    writer.submit([(T0, "ana", b"1"), (T0, "bob", b"2")], set())
    writer.submit([], {"ana"})
    assert [e[1] for e in own.read(0, math.inf)] == ["bob"]  # erased where it could be
    assert "records not acknowledged" not in caplog.text
    assert "erasing from gone-shard" in caplog.text
    writer.submit([(T0 + 5, "cy", b"3")], set())  # no trim: the erasure waits for one
    assert erasing == [{"ana"}] and counts["decision_log_records"] == 3
    for day in (1, 2):
        writer.submit([(T0 + day * 100, "cy", b"r")], {"dan"} if day == 2 else set(),
                      (T0 + day * 100 - 1, 1 << 30))
    assert [e[0] for e in own.read(0, math.inf)] == [T0 + 200]  # trimmed both times
    assert erasing == [{"ana"}, {"ana"}, {"ana", "dan"}]  # that log only, again at each trim
    assert counts["decision_log_failures"] == 3


def test_an_erasure_done_is_not_done_again_when_the_trim_after_it_fails(monkeypatch):
    store, counts = MemoryStore(shared=True), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    own = store.decision_log("s0")
    writer.submit([(T0, "ana", b"before the forget")], set())
    monkeypatch.setattr(own, "trim", lambda *a: 1 / 0)
    writer.submit([], {"ana"}, (0.0, 1 << 30))
    monkeypatch.undo()
    writer.submit([(T0 + 5, "ana", b"she came back")], set(), (0.0, 1 << 30))
    assert [e[2] for e in own.read(0, math.inf)] == [b"she came back"]
    assert counts["decision_log_failures"] == 1 and counts["decision_log_erased"] == 1


def test_a_record_made_after_the_forget_in_the_same_write_is_kept():
    """The writer gathers rounds for a while before it writes: a record handed over before
    the ForgetCustomer goes, one handed over after it stays (it is a new customer's)."""
    store, counts = MemoryStore(shared=True), Counter()
    writer = decisionlog.LogWriter(store, "s0", counts)
    writer.in_background()
    writer.submit([(T0, "ana", b"before the forget")], set())
    writer.submit([(T0 + 1, "ana", b"after the forget")], {"ana"})
    writer.written()
    writer.close()
    assert [e[2] for e in store.decision_log("s0").read(0, math.inf)] == [b"after the forget"]


def test_an_export_reads_past_the_records_of_the_other_kind_without_unpacking_them(
        store, monkeypatch):
    """An outcome pass reads a week of the log, mostly decisions a few kB each."""
    log = store.decision_log("s0")
    made = [decision_at(k) for k in range(50)]
    said = OutcomeRecord(made[0].decision_id, "ana", "a1", "accept", 0.0, T0 + 1)
    log.append(entries(*made, at=T0))
    log.append(entries(said, at=T0 + 1))
    unpacked = []
    monkeypatch.setattr(decisionlog, "unpack", lambda stored: unpacked.append(stored[0]) or
                        unpack(stored))
    outcomes, _ = decisionlog.read_outcomes(store, ["s0"], PageOutcomes(
        frozenset({decision_key("ana", made[0].decision_id)}), T0, T0 + 2))
    assert outcomes == [said] and unpacked == ["o"]
    page, _ = decisionlog.read_decisions(store, ["s0"], DecisionPage(T0 + 0.5, T0 + 2, None,
                                                                       None, 10))
    assert page == [] and unpacked == ["o"]


def test_a_read_its_caller_no_longer_waits_for_stops(store):
    """It would hold one of the shard's two read threads for the rest of a long log."""
    made = decision_at(1)
    store.decision_log("s0").append(entries(made, at=T0))
    page = DecisionPage(T0, T0, None, None, 10)
    for query in (page, PageOutcomes(frozenset(), T0, T0)):
        with pytest.raises(TimeoutError, match="past its caller's deadline"):
            decisionlog.read(store, ["s0"], query, time.monotonic() - 1)
    assert decisionlog.read(store, ["s0"], page, time.monotonic() + 60) == ([(T0, made)], False)


def test_an_erasure_that_failed_is_asked_for_again_after_a_restart(compiled, tmp_path,
                                                                   monkeypatch):
    """The erasure failed once and waits in memory for the next trim; meanwhile the erase
    tick snapshots the partition and compacts away the Forget record whose replay would ask
    for it again, and the shard crashes: the snapshot names the customer, so the rebuilt
    shard erases it."""
    from kairos.cluster.shard.shard import Shard
    from kairos.cluster.storage import decision_logs
    from tests.unit.shard.test_shard import N_PARTITIONS
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event(GONE, "app_open", T0), event(KEPT, "app_open", T0)])
    s.process([decide(GONE), decide(KEPT)])
    s.decision_log.flush()

    def busy(self, ids):
        raise OSError("disk busy")

    with monkeypatch.context() as patched:
        patched.setattr(decision_logs.DirectoryLog, "erase", busy)
        s.process([forget(GONE)])
        clock.now += 5
        s.tick()
    assert not [r for _, r in s.journal.replay(0) if GONE in r[2:]]  # compacted away
    s.close()  # a crash before the next trim would have tried again
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    again.tick()
    again.decision_log.writer.written()
    assert {d.customer_id for d in logged(again.store)[0]} == {KEPT}
    assert again.decision_log.unerased() == set()
    for _ in range(2):  # done: the next checkpoint writes the partition without it
        clock.now += SNAPSHOT_AFTER_S + 1
        again.tick()
    assert named_unerased(again.store, p_of(GONE)) == []
    again.close()
    third = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    third.recover()
    assert third.decision_log.unerased() == set()


def named_unerased(store, partition: int) -> list[str]:
    """The customers the partition's stored snapshot names as not erased from the logs."""
    from kairos.cluster.storage.sealed import unseal
    return blocks.unpack(unseal(store.get_snapshot(partition), "test")[0])["unerased"]


@pytest.mark.parametrize("why", ["failed", "under way"])
def test_a_snapshot_stops_naming_a_customer_once_its_erasure_is_done(compiled, tmp_path,
                                                                     monkeypatch, why):
    """The erase tick snapshots the partition while the customer's erasure from the logs is
    not done (it failed and waits for the next trim, or the writer's thread has not got to
    it): the snapshot names it. Once the erasure is done, the ticks alone (the partition
    sees no other change) write the snapshot again without its id, and a restart asks for
    nothing."""
    import threading

    from kairos.cluster.shard.shard import Shard
    from kairos.cluster.storage import decision_logs
    from tests.unit.shard.test_shard import N_PARTITIONS
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event(GONE, "app_open", T0), event(KEPT, "app_open", T0)])
    s.process([decide(GONE), decide(KEPT)])
    s.decision_log.flush()
    erase, go_on = decision_logs.DirectoryLog.erase, threading.Event()

    def busy(self, ids):
        raise OSError("disk busy")

    def slow(self, ids):
        go_on.wait(10)
        return erase(self, ids)

    with monkeypatch.context() as patched:
        if why == "failed":
            patched.setattr(decision_logs.DirectoryLog, "erase", busy)
        else:
            s.decision_log.writer.in_background()
            patched.setattr(decision_logs.DirectoryLog, "erase", slow)
        s.process([forget(GONE)])
        clock.now += 5
        s.tick()
        assert named_unerased(s.store, p_of(GONE)) == [GONE]
    go_on.set()
    for _ in range(3):  # the next trim tries the failed erasure again; then a checkpoint
        clock.now += max(DECISION_LOG_TRIM_S, SNAPSHOT_AFTER_S) + 1
        s.tick()
        s.decision_log.writer.written()
    assert {d.customer_id for d in logged(s.store)[0]} == {KEPT}
    assert named_unerased(s.store, p_of(GONE)) == []
    s.close()
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    assert again.decision_log.unerased() == set()
    again.close()
