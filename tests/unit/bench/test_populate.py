"""bench.systems.populate's bulk load: a profile event per customer, and with `impression`
an offline impression after it, in order, within the in-flight bound."""
from __future__ import annotations

import asyncio

import pytest

from bench import systems
from bench.journeys import PROFILE_EVENT
from kairos.cluster.protocol import Event, Ok, Outcome


class Client:
    """Answers every request at once; counts those enqueued and not yet settled."""

    def __init__(self):
        self.sent: list = []
        self.unsettled = self.most_unsettled = 0

    def enqueue(self, request):
        self.sent.append(request)
        self.unsettled += 1
        self.most_unsettled = max(self.most_unsettled, self.unsettled)
        future = asyncio.get_running_loop().create_future()
        future.set_result(Ok())
        return future

    async def settle(self, request, reply):
        self.unsettled -= 1
        return reply


def load(first: int, last: int, impression) -> tuple[Client, list[int]]:
    client, progress = Client(), []
    asyncio.run(systems._populate(client, first, last, progress.append, impression))
    return client, progress


@pytest.mark.parametrize("impression", [None, ("complete_the_look", "web")])
def test_each_customer_gets_its_profile_then_its_impression(impression):
    client, progress = load(10, 9_000, impression)
    assert sum(progress) == 8_990  # customers, whatever the requests each
    per_customer = 2 if impression else 1
    assert len(client.sent) == 8_990 * per_customer
    assert client.most_unsettled <= systems.POPULATE_INFLIGHT
    for k in range(0, len(client.sent), per_customer):
        event, *rest = client.sent[k:k + per_customer]
        assert isinstance(event, Event) and event.event_type == PROFILE_EVENT
        if impression:
            [outcome] = rest
            assert isinstance(outcome, Outcome) and outcome.customer_id == event.customer_id
            assert (outcome.action_id, outcome.channel, outcome.outcome, outcome.decision_id) \
                == (*impression, "impression", None)
