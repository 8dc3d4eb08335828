"""The decision log holds a convert's value as the models learned it, clipped at the bound its
decision set (engine.learned_value), so that one hostile value (the API takes up to 1e12)
cannot swing the value estimates and uplift built from the log; as reported only where the
shard no longer remembers the decision, and the models learned no value from it."""
from __future__ import annotations

from kairos.cluster.storage.memory_store import MemoryStore

from .test_decision_log import logged, respond
from .test_shard import T0, Clock, decide, event, shard


def test_the_log_holds_a_converts_value_as_the_models_learned_it(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock())
    s.process([event("ana", "page_view", T0 - 60, category="home")])
    sent = s.process([decide("ana")])[0][0].value
    shown = next(a for a in sent.actions if a.value > 0)
    bound = compiled.value_max_ratio * shown.value
    convert = respond("ana", sent, "convert", action=shown.action_id)
    s.process([convert._replace(value=1e12), convert._replace(value=bound / 4)])
    s.engine._remembered.clear()  # no decision to bound it: the models learn no value
    s.process([convert._replace(value=7.0)])
    _, outcomes = logged(s.store)
    assert [o.value for o in outcomes] == [bound, bound / 4, 7.0]
