"""An agent's answer to the page's own read, a preview that takes no outcome (the shard refuses
its id), goes to the decision a read showing the agent's channel logs then, when that one shows
the action too: the live part that brings the logged decision may never come (paused at a cap,
a browser without script, a click before it). Under the preview's idempotency key, so an answer
sent again is recorded once. Through Starlette's TestClient against test_app's stand-in."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.console.gateway_client import GatewayClient, GatewayError
from kairos.cluster.shard.outcomes import PREVIEWED

from tests.support.console import client_fixture
from kairos.v1 import decision_pb2 as pb

from tests.unit.console.test_app import StandIn, sign_in

ANSWER = {"customer_id": "ana", "decision_id": "d1", "action_id": "warranty",
          "outcome": "accept"}


class Previews(StandIn):
    """The page's own read decides a preview, "d1", which Respond refuses; a read showing
    the agent's channel logs "d2", which shows `shown` (the warranty, unless a test changes
    it)."""

    def __init__(self):
        super().__init__()
        self.shown = "warranty"
        self.reads: list[str] = []

    async def profile(self, key, who, explain=False, shown_channel=""):
        profile = await super().profile(key, who, explain, shown_channel)
        self.reads.append(shown_channel)
        if shown_channel:
            decision = profile.current[shown_channel]
            decision.decision_id = "d2"
            decision.actions[0].action_id = self.shown
        return profile

    async def respond(self, key, customer_id, channel, decision_id, action_id, outcome,
                      answering=""):
        self.responses.append((decision_id, action_id, outcome, answering))
        if decision_id == "d1":
            raise GatewayError("invalid", f"INVALID_ARGUMENT: decision_id: {PREVIEWED}",
                               "INVALID_ARGUMENT")
        return self.learned_from


@pytest.fixture
def gateway() -> Previews:
    return Previews()


client = client_fixture(signed_in=False)


def test_an_answer_to_a_preview_goes_to_the_decision_logged_then(client, gateway):
    token = sign_in(client)
    done = client.post("/customer/respond", data={**ANSWER, "csrf": token})
    assert done.status_code == 200 and "recorded=accept" in str(done.url)
    assert gateway.reads[0] == "call_center"  # a read that logs the channel's decision
    # refused as a preview, then sent to the logged one under the preview's key
    assert gateway.responses == [("d1", "warranty", "accept", ""),
                                 ("d2", "warranty", "accept", "d1")]


def test_an_action_the_logged_decision_no_longer_shows_is_not_answered(client, gateway):
    gateway.shown = "track_order"
    token = sign_in(client)
    refused = client.post("/customer/respond", data={**ANSWER, "csrf": token})
    assert refused.status_code == 400
    assert "no longer among the next best actions" in refused.text
    assert [r[0] for r in gateway.responses] == ["d1"]  # nothing sent for the logged one
    again = client.post("/customer/respond", data={**ANSWER, "csrf": token})
    assert again.status_code == 400  # not taken for sent: the agent may answer anew


def test_another_refusal_is_not_retried(client, gateway):
    token = sign_in(client)
    refused = client.post("/customer/respond",
                          data={**ANSWER, "decision_id": "d9", "csrf": token})
    assert refused.status_code == 200 and "recorded=accept" in str(refused.url)
    gateway.reads.clear()  # the page's own, after the answer

    async def invalid(*args, **kwargs):
        raise GatewayError("invalid", "INVALID_ARGUMENT: decision_id: not issued",
                           "INVALID_ARGUMENT")
    gateway.respond = invalid
    assert client.post("/customer/respond",
                       data={**ANSWER, "decision_id": "d8", "csrf": token}).status_code == 400
    assert gateway.reads == []  # no read, no decision logged


def test_the_key_names_the_decision_answered():
    """The idempotency key of an answer sent through the logged decision is the preview's."""
    class Captured:
        def __init__(self):
            self.keys = []

        async def Respond(self, outcome, timeout=None, metadata=None):
            self.keys.append(outcome.idempotency_key)
            return pb.OutcomeAck(learned_from=pb.LEARNED_FROM_DECISION)

    gateway = GatewayClient.__new__(GatewayClient)
    gateway._decisions = Captured()
    gateway._metadata = lambda key: ()
    gateway._timeout_s = 1.0

    async def main():
        await gateway.respond("k", "ana", "call_center", "d1", "warranty", "accept")
        await gateway.respond("k", "ana", "call_center", "d2", "warranty", "accept",
                              answering="d1")
    asyncio.run(main())
    assert gateway._decisions.keys[0] == gateway._decisions.keys[1]
