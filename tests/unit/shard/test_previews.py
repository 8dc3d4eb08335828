"""GetProfile's decisions per channel are previews (protocol.Decide's `log` False): the shard
answers them sealed, as any decision, but logs none of them and counts none in its decisions
per channel and group, so replay, `kairos uplift` and the metrics see only what a channel
showed; and their ids, sealed as previews', take no outcome (the agent answers the decision of
the channel its GetProfile names as shown, which is logged)."""
from __future__ import annotations

import pytest

from kairos.cluster.protocol import Invalid, Ok
from kairos.cluster.shard.outcomes import PREVIEWED, DecisionSeal
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.decision import Decision, RankedAction
from kairos.core.errors import InputError

from tests.unit.shard.test_decision_log import logged, respond
from tests.unit.shard.test_shard import T0, Clock, decide, event, profile, shard


def test_previews_are_neither_logged_nor_counted(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    s.process([event("kei", "complaint", T0 - 60, topic="delivery", severity="high")])
    previews = [decide("kei", channel, None)._replace(log=False)
                for channel in ("web", "call_center") for _ in range(3)]
    s.process(previews)
    [real], _ = s.process([decide("kei", "web", None)])
    decisions, _ = logged(s.store)
    assert [d.decision_id for d in decisions] == [real.value.decision_id]
    assert s.by_channel == {"web": 1}
    assert sum(s.by_group.values()) == len(real.value.actions)
    # a logged decision takes its outcome
    assert s.process([respond("kei", real.value)])[0] == [Ok(value="decision")]


def test_a_previews_id_takes_no_outcome(compiled):
    """An outcome naming a preview (GetProfile hands one out, sealed, for every channel but
    its caller's) was taken as a decision's: it taught the models, went to the customer's
    history (its contact caps) and was logged, joining no logged decision (shard review). It
    is refused on its decision_id, for every action the preview showed, and changes nothing."""
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    s.process([event("kei", "app_open", T0 - 60)])
    [preview], _ = s.process([decide("kei", "call_center", None)._replace(log=False)])
    shown = preview.value
    assert shown.actions
    positives = s.engine.models.positives.sum()
    [before], _ = s.process([profile("kei")])
    for a in shown.actions:
        assert s.process([respond("kei", shown, action=a.action_id)])[0] == \
            [Invalid(field="decision_id", reason=PREVIEWED)]
    assert s.engine.models.positives.sum() == positives
    assert s.process([profile("kei")])[0][0].value["history"] == before.value["history"]
    assert logged(s.store) == ([], [])


def test_a_decisions_id_is_sealed_as_before_previews_were_marked():
    """Ids already issued, still in customers' hands, keep opening: a decision's seal is
    the one issued before (this id was sealed by the code before previews were marked); a
    preview's differs in its MAC over the whole only, and opens as a preview."""
    shown = tuple(RankedAction(a, "sell", "banner", 1.0, 0.5, 1.0, 1.0, 1.0)
                  for a in ("offer_a", "offer_b"))
    decision = Decision("e-1", "ana", "web", "hero", shown, "v1", 1)
    seal = DecisionSeal(bytes(range(32)), lambda: 1_800_000_000.0)
    sealed = seal.seal(decision).decision_id
    assert sealed == "e-1.6b49d200.KIcIDZIoso2X5CHPRrcq7WKr"
    assert seal.opened(["ana"], sealed, "web", "offer_b") == ("e-1", "ana", 1_800_000_000)
    previewed = seal.seal(decision, preview=True).decision_id
    assert previewed[:13] == sealed[:13] and previewed[21:] == sealed[21:]
    assert previewed[13:21] != sealed[13:21]
    with pytest.raises(InputError) as refused:
        seal.opened(["ana"], previewed, "web", "offer_b")
    assert (refused.value.field, refused.value.reason) == ("decision_id", PREVIEWED)
