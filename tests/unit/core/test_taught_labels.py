"""The engine's TaughtLabels: what a decision's outcomes taught beyond the memo. Without one
the memo alone keeps a label from being taught twice; with one, a label it holds is not taught
again, and those taught (in one call too) are told to it once each."""
from __future__ import annotations

from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0


class Labels:
    def __init__(self):
        self.kept: list[tuple] = []

    def taught(self, *label) -> bool:
        return label in self.kept

    def teach(self, *label) -> None:
        self.kept.append(label)


def forgotten(compiled):
    engine = DecisionEngine(compiled)
    d = engine.decide("ana", "web", "hero", {}, now=T0)
    engine._remembered.clear()
    return engine, d.decision_id, d.actions[0].action_id


def test_without_taught_labels_the_memo_alone_keeps_a_label_from_repeating(compiled):
    engine, decision, action = forgotten(compiled)
    assert engine.record_outcomes([("ana", action, "web", "accept", T0, decision)] * 2) == \
        [Learned.PROFILE_DECISION_FORGOTTEN] * 2
    assert engine.models.positives.sum() == 2


def test_a_label_is_taught_once_per_decision_and_action_with_taught_labels(compiled):
    engine, decision, action = forgotten(compiled)
    labels = Labels()
    outcomes = [("ana", action, "web", kind, T0, decision)
                for kind in ("accept", "convert", "ignore", "impression")]
    assert engine.record_outcomes(outcomes, labels) == \
        [Learned.PROFILE_DECISION_FORGOTTEN, Learned.REPEATED,
         Learned.PROFILE_DECISION_FORGOTTEN, Learned.NOTHING]
    assert labels.kept == [("ana", decision, action, True), ("ana", decision, action, False)]
    assert engine.record_outcomes(outcomes[:3], labels) == [Learned.REPEATED] * 3
    assert (engine.models.positives.sum(), engine.models.negatives.sum()) == (1, 1)
    # offline feedback names no decision: each teaches
    assert engine.record_outcomes([("ana", action, "web", "accept", T0, None)] * 2, labels) \
        == [Learned.PROFILE_NO_DECISION] * 2
