"""The engine asks its TaughtLabels only about decisions the memo let go: the memo's bits
answer for a kept one (a lookup per outcome cost a fifth more per outcome), and what it teaches
is still told to the labels, which outlive the memo."""
from __future__ import annotations

from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine

from .test_taught_labels import T0, Labels


class Counted(Labels):
    def __init__(self):
        super().__init__()
        self.asked = 0

    def taught(self, *label) -> bool:
        self.asked += 1
        return super().taught(*label)


def test_a_kept_decisions_labels_are_not_looked_up_but_are_taught(compiled):
    engine = DecisionEngine(compiled)
    d = engine.decide("ana", "web", "hero", {}, now=T0)
    action = d.actions[0].action_id
    labels = Counted()
    outcomes = [("ana", action, "web", kind, T0, d.decision_id)
                for kind in ("accept", "convert", "ignore")]
    assert engine.record_outcomes(outcomes, labels) == \
        [Learned.DECISION, Learned.REPEATED, Learned.DECISION]
    assert labels.asked == 0
    assert labels.kept == [("ana", d.decision_id, action, True),
                           ("ana", d.decision_id, action, False)]
    engine._remembered.clear()  # let go: now the labels answer
    assert engine.record_outcomes(outcomes[1:], labels) == [Learned.REPEATED] * 2
    assert labels.asked == 2
