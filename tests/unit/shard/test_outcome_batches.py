"""A batch of outcomes goes to the engine in one call (issue 17: the engine's cost per call
was paid per outcome) and answers and changes what its outcomes would one at a time: the
oracle is the same handler fed batches of one, which is the per-outcome path it replaced
(each outcome checked, then recorded alone)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.cluster.identity import anonymous_id
from kairos.cluster.protocol import Ok, Outcome
from kairos.cluster.shard import outcomes as outcome_rules
from kairos.cluster.shard.outcomes import SECRET_META
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.blocks import pack_one
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine

from .test_shard import (N_PARTITIONS, T0, Clock, decide, event, forget, link_steps, outcome,
                         p_of)

SECRET = bytes(range(32))  # both shards of a pair seal alike
SHOWN = ("sleepy", "ana", "bob", "lapsed")  # shown a decision, its impressions recorded
LINK_KEY = "cookie:c9"
VISITOR = anonymous_id(LINK_KEY)  # shown a decision, then linked to ana
# ghost: shown one, no profile; nova: nobody's seen; fred: forgotten after his decision;
# broken: his home in the store is damaged (Unavailable)
CUSTOMERS = (*SHOWN, "ghost", "nova", VISITOR, "fred", "broken")
REFUSING = ("app", "home")  # bob's view: its channel's models refuse every update
RATE = 3  # outcomes per customer and window, so that a batch meets the limit


def refuse(engine: DecisionEngine, channel: str) -> None:
    """Make every model of `channel` refuse its updates: a mean that is not finite leaves
    none finite (Learned.REFUSED)."""
    c = engine.compiled
    ch = c.channel_names.index(channel)
    for a in range(len(c.action_ids)):
        engine.models.mean[c.model_index(a, ch)] = float("inf")


def paired_shard(compiled) -> tuple[Shard, dict[str, tuple[str, str, list[str], str]]]:
    """A shard with a customer of each kind an outcome may name, and per customer its
    decision's (sealed id, engine id, actions shown, channel); built alike each time."""
    clock = Clock(T0 - 120.0)
    store = MemoryStore()
    store.put_meta(SECRET_META, SECRET)
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS, store=store, clock=clock,
              steady=clock, idle_s=60.0)
    s.engine._prefix = "e-"  # the engine's ids are random per engine: a pair's must match
    decided = {}

    def show(customer: str, channel: str = "web", placement: str = "hero",
             record_impression: bool = True) -> None:
        d = s.process([decide(customer, channel, placement, now=clock.now,
                              record_impression=record_impression)])[0][0].value
        decided[customer] = (d.decision_id, d.decision_id.rsplit(".", 2)[0],
                             [a.action_id for a in d.actions], channel)

    for customer in (*SHOWN, "ghost"):
        if customer == "ana":
            s.process([event("ana", "app_open", clock.now)])
        show(customer, *(REFUSING if customer == "bob" else ()),
             record_impression=customer != "ghost")
        if customer == "sleepy":  # passivated: an outcome loads it from its home
            clock.now = T0
    assert s.passivate(clock.now) == 1 and "sleepy" not in s.engine.table
    del s.engine._remembered[decided["lapsed"][1]]  # let go: the taught labels answer
    s.process([event(VISITOR, "page_view", clock.now, category="home")])
    show(VISITOR)  # ana's once linked: she names it (issued to another than her)
    link_steps(s, s, s, LINK_KEY, "ana")
    s.process([event("fred", "app_open", clock.now)])
    show("fred")
    s.process([forget("fred")])
    s.store.put(p_of("broken"), "broken", b"not a home")
    refuse(s.engine, REFUSING[0])  # Learned.REFUSED
    s.journaling.commit()
    s.decision_log.flush()
    return s, decided


def state(s: Shard) -> dict:
    """What outcomes change, comparable between shards."""
    e = s.engine
    residents = sorted(s.residency.recent)
    return {
        "journal": list(s.journaling._records), "log": list(s.decision_log._entries),
        "counts": +s.ctx.counts, "rate": dict(s.customers._rate._times),
        "recent": list(s.residency.recent.items()), "rows": len(e.table),
        "customers": {c: (pack_one(e, c), s.residency.extra(c)) for c in residents},
        "models": [a.tobytes() for a in e.models.kernel_arrays() if a is not None],
        "refused": (e.models.refused, e.values_clipped, e.values_unbounded),
        "memo": {d: (m.customer_id, dict(m.taught or {})) for d, m in e._remembered.items()},
    }


def mostly(usual, *others) -> st.SearchStrategy:
    """`usual` four times in five, else one of `others`."""
    return st.sampled_from((usual,) * 4 * len(others) + others)


@st.composite
def outcome_specs(draw) -> tuple:
    return (draw(st.sampled_from(CUSTOMERS)),
            draw(mostly("own", "engine", "ana", "visitor", None, "bogus")),
            draw(mostly("shown", "last", "service_menu", "retention_call_offer", "teleport")),
            draw(mostly("own", "web", "app", "fax")),
            draw(st.sampled_from(("accept", "reject", "convert", "impression", "ignore",
                                  "shrug"))),
            draw(mostly(None, 25.0, 1e9, -1.0, "lots", float("nan"))),
            draw(st.sampled_from((None, None, "k1", "k2"))),
            draw(mostly(T0, T0 + 1.0, "soon")))


def outcome_of(spec: tuple, decided: dict) -> Outcome:
    customer, decision, action, channel, kind, value, key, when = spec
    named = {"own": customer, "engine": customer, "visitor": VISITOR}.get(decision, decision)
    sealed, engine_id, shown, on = decided.get(named, (None, None, ["generic_welcome"], "web"))
    decision_id = {"engine": engine_id, None: None, "bogus": "made.up.id"}.get(decision, sealed)
    action = {"shown": shown[0], "last": shown[-1]}.get(action, action)
    o = outcome(customer, action, decision_id, channel=on if channel == "own" else channel,
                kind=kind)
    return o._replace(when=when, value=value, idempotency_key=key)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(outcome_specs(), min_size=1, max_size=16), st.booleans())
def test_a_batch_answers_and_changes_what_its_outcomes_would_one_at_a_time(
        compiled, specs, replaying):
    """Valid and invalid outcomes, keys repeated in the batch and before it, one customer's
    several, several customers', past the rate, refused by the models, of a decision shown
    to a visitor since linked, of a forgotten customer, of one whose home is damaged, and in
    a replay."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outcome_rules, "OUTCOMES_PER_CUSTOMER", RATE)
        batched, decided = paired_shard(compiled)
        single, _ = paired_shard(compiled)
        batch = [outcome_of(spec, decided) for spec in specs]
        for s in (batched, single):
            s.journaling.replaying = replaying
        replies = batched.customers.outcomes(batch, {})
        one_by_one = [single.customers.outcomes([o], {})[0] for o in batch]
    assert replies == one_by_one
    assert state(batched) == state(single)


def kernel_calls(engine: DecisionEngine, monkeypatch) -> list[int]:
    """The number of outcomes of each call the engine makes to its kernel from now on."""
    calls = []
    kernel_call = engine.k.record_outcomes
    monkeypatch.setattr(engine.k, "record_outcomes",
                        lambda *args: calls.append(len(args[3])) or kernel_call(*args))
    return calls


def test_a_round_of_outcomes_is_one_kernel_call(compiled, monkeypatch):
    """64 outcomes of 64 customers: the engine's fixed cost once, not 64 times; a customer's
    second outcome waits for its first to be recorded (a second call)."""
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS, clock=Clock())
    customers = [f"c{i}" for i in range(64)]
    decisions = [r.value for r in s.process([decide(c, record_impression=True)
                                             for c in customers])[0]]
    calls = kernel_calls(s.engine, monkeypatch)
    accepts = [outcome(d.customer_id, d.actions[0].action_id, d.decision_id) for d in decisions]
    assert s.process(accepts)[0] == [Ok(value=Learned.DECISION)] * 64
    assert calls == [64]
    calls.clear()
    assert s.process([outcome("c0", decisions[0].actions[0].action_id, None, kind="convert"),
                      accepts[1], accepts[0]])[0] == \
        [Ok(value=Learned.PROFILE_NO_DECISION), Ok(value=Learned.REPEATED),
         Ok(value=Learned.REPEATED)]
    assert calls == [2, 1]


def test_an_outcome_refused_in_a_batch_leaves_the_label_to_the_next(compiled, monkeypatch):
    """A customer's two keyless accepts of one decision, its models refusing every update:
    both are refused, as one at a time, not the second a repeat of a label the first never
    taught (the engine marks a label taught before its kernel refuses the update, and takes
    the mark back after the call: the second waits for a call of its own, key or no key)."""
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS, clock=Clock())
    d = s.process([decide("bob", record_impression=True)])[0][0].value
    accept = outcome("bob", d.actions[0].action_id, d.decision_id)
    mean = s.engine.models.mean.copy()
    refuse(s.engine, "web")
    calls = kernel_calls(s.engine, monkeypatch)
    assert s.process([accept, accept])[0] == [Ok(value=Learned.REFUSED)] * 2
    assert calls == [1, 1]
    s.engine.models.mean[:] = mean  # the label is still to teach
    assert s.process([accept, accept])[0] == \
        [Ok(value=Learned.DECISION), Ok(value=Learned.REPEATED)]
