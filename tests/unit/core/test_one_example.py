"""A decision's shown action is one example for its model, however many outcomes report on
it while the engine remembers the decision: an accept then a convert teach one positive, a
retried Respond nothing again, a conversion's value is learned once; an ignore then an
accept teach both labels (the ignore cannot be taken back)."""
from __future__ import annotations

import numpy as np

from kairos.core.decision import Learned

from tests.unit.core.test_value_learning import T0, engine_for


def decided(engine):
    engine.apply([engine.encode_event("ana", "purchase", T0 - 60,
                                      {"amount": 20.0, "category": "bags"})])
    decision = engine.decide("ana", "web", "hero", {"basket_value": 40.0}, now=T0)
    action = next(a.action_id for a in decision.actions if a.action_id == "track_order")
    return decision.decision_id, action, engine.compiled.model_index(
        engine.compiled.action_index[action], engine.compiled.channel_index["web"])


def respond(engine, decision_id, action, *outcomes):
    return engine.record_outcomes([("ana", action, "web", outcome, T0 + 1 + i, decision_id,
                                    *value) for i, (outcome, *value) in enumerate(outcomes)])


def test_an_accept_then_a_convert_is_one_positive_and_its_value_is_learned_once(impl):
    spec = "{prior_weight: 4, max_ratio: 100}"  # 80 is within 100 x the catalog's value
    once, twice = engine_for(spec), engine_for(spec)
    decision, action, m = decided(once)
    assert respond(once, decision, action, ("accept",)) == [Learned.DECISION]
    decision2, _, _ = decided(twice)
    assert respond(twice, decision2, action, ("accept",), ("convert", 80.0),
                   ("convert", 80.0)) == [Learned.DECISION, Learned.REPEATED, Learned.REPEATED]
    np.testing.assert_array_equal(twice.models.mean[m], once.models.mean[m])
    np.testing.assert_array_equal(twice.models.precision[m], once.models.precision[m])
    assert twice.models.positives[m] == 1 and twice.models.negatives[m] == 0
    assert twice.models.value_count[m] == 1 and twice.models.value_sum[m] == 80.0
    kinds = [h["outcome"] for h in twice.history("ana")]
    assert kinds.count("convert") == 2 and kinds.count("accept") == 1  # history keeps all


def test_an_ignore_then_an_accept_teach_both_labels_and_each_only_once(impl):
    engine = engine_for()
    decision, action, m = decided(engine)
    assert respond(engine, decision, action, ("ignore",), ("accept",), ("ignore",),
                   ("accept",)) == [Learned.DECISION, Learned.DECISION, Learned.REPEATED,
                                    Learned.REPEATED]
    assert engine.models.positives[m] == 1 and engine.models.negatives[m] == 1


def test_outcomes_naming_no_remembered_decision_each_teach(impl):
    engine = engine_for()
    _, action, m = decided(engine)
    assert respond(engine, None, action, ("accept",), ("accept",)) == \
        [Learned.PROFILE_NO_DECISION] * 2
    assert engine.models.positives[m] == 2


def test_an_outcome_whose_update_was_refused_leaves_the_label_to_teach(impl):
    engine = engine_for()
    decision, action, m = decided(engine)
    mean = engine.models.mean[m].copy()
    engine.models.mean[m, 0] = np.inf  # a model published broken: its updates are refused
    assert respond(engine, decision, action, ("accept",)) == [Learned.REFUSED]
    engine.models.mean[m] = mean  # mended (a later publish)
    assert respond(engine, decision, action, ("accept",)) == [Learned.DECISION]
    assert engine.models.positives[m] == 1
