"""An ack and its decision are written into the answer in place (ingesting._ack_into,
wire.decision_into), not built apart and copied in (issue 17): the message is the one the
constructors built, byte for byte, with and without a decision, an explanation, agent texts or
the fields at their defaults."""
from __future__ import annotations

import pytest

from kairos.cluster.gateway import ingesting, requests, wire
from kairos.cluster.protocol import EventAck
from kairos.core.decision import Decision, Dropped, Explanation, RankedAction
from kairos.v1 import decision_pb2 as pb

GOLD = RankedAction("gold_card", "sell", "banner", 1.5, 0.25, 10.0, 0.6, 1.0, 0.75)
LOAN = RankedAction("loan", "sell", "card", 0.5, 0.1, 5.0, 1.0, 1.0)
TEXTS = {("gold_card", "web"): "Offer the gold card"}
DECISIONS = [
    Decision("d-1", "c-1", "web", "hero", (GOLD, LOAN), "v3", 7),
    Decision("d-2", "c-2", "web", "hero", (GOLD,), "v3", 0, True, Explanation(
        (GOLD,), (Dropped("loan", "ELIGIBILITY", "age >= 18"),)), True, None),
    Decision("d-3", "c-3", "app", "home", (), "v3", 2, explanation=Explanation((), ()),
             nothing_selection=0.5),
    Decision("", "", "", "", (), "", 0),
]


def built(d: Decision, texts=None) -> pb.Decision:
    """The decision as the constructors build it."""
    out = pb.Decision(decision_id=d.decision_id, customer_id=d.customer_id, channel=d.channel,
                      placement=d.placement, catalog_version=d.catalog_version,
                      model_version=d.model_version, fallback=d.fallback, control=d.control,
                      actions=[pb.RankedAction(
                          action_id=a.action_id, group=a.group, treatment=a.treatment,
                          priority=a.priority, propensity=a.propensity, value=a.value,
                          context_weight=a.weight, lever=a.lever,
                          selection_probability=a.selection,
                          agent_text=(texts or {}).get((a.action_id, d.channel), ""))
                          for a in d.actions])
    if d.explanation is not None:
        out.explanation.CopyFrom(pb.Explanation(
            winners=built(Decision("", "", d.channel, "", d.explanation.winners, "", 0),
                          texts).actions,
            dropped=[pb.DroppedAction(action_id=x.action_id, reason=x.reason, detail=x.detail)
                     for x in d.explanation.dropped]))
    return out


@pytest.mark.parametrize("texts", [None, TEXTS])
@pytest.mark.parametrize("decision", DECISIONS)
def test_a_decision_written_in_place_is_the_one_built(decision, texts):
    out = wire.decision_out(decision, texts)
    assert out == built(decision, texts)
    assert out.SerializeToString() == built(decision, texts).SerializeToString()
    assert out.HasField("explanation") == (decision.explanation is not None)


@pytest.mark.parametrize("decision", [None, *DECISIONS])
def test_an_ack_written_into_a_batch_answer_is_the_one_built(decision):
    event = pb.Event(event_id="e-1", customer_id="c-1", type="app_open")
    ack = EventAck(sequence=3, duplicate=decision is not None, decision=decision)
    expected = pb.IngestAck(event_id="e-1", sequence=3, duplicate=decision is not None)
    if decision is not None:
        expected.decision.CopyFrom(built(decision))
    answer, by_id = pb.EventBatchAck(), requests.Who("c-1", None)
    ingesting._ack_into(answer.acks.add(), event, ack, by_id)
    assert answer == pb.EventBatchAck(acks=[expected])
    assert answer.SerializeToString() == pb.EventBatchAck(acks=[expected]).SerializeToString()
    assert answer.acks[0].HasField("decision") == (decision is not None)
    assert ingesting._ack_out(event, ack, by_id) == expected
