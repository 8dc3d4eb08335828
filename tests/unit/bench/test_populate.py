"""bench.systems.populate's bulk load: a profile event per customer, and with `impression`
an offline impression after it, in order, within the in-flight bound."""
from __future__ import annotations

import asyncio
import itertools
import math

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
    events = [r for r in client.sent if isinstance(r, Event)]
    shown = [r for r in client.sent if isinstance(r, Outcome)]
    assert len(events) == 8_990 and len(shown) == (8_990 if impression else 0)
    assert client.most_unsettled <= systems.POPULATE_INFLIGHT
    assert all(e.event_type == PROFILE_EVENT for e in events)
    assert len({e.customer_id for e in events}) == 8_990
    at = {id(r): k for k, r in enumerate(client.sent)}
    for event, outcome in zip(events, shown):
        assert outcome.customer_id == event.customer_id and at[id(event)] < at[id(outcome)]
        assert (outcome.action_id, outcome.channel, outcome.outcome, outcome.decision_id) \
            == (*impression, "impression", None)


def test_served_customers_go_as_a_windows_events_then_its_impressions():
    # a shard applies a batch's consecutive requests of one kind together: alternating
    # event, impression, event ... would cost it a call each
    client, _ = load(0, 9_000, ("complete_the_look", "web"))
    runs = [len(list(run)) for _, run in itertools.groupby(client.sent, type)]
    assert len(runs) == 2 * math.ceil(9_000 / systems.POPULATE_WINDOW)
    assert runs[:2] == [systems.POPULATE_WINDOW] * 2 and systems.POPULATE_WINDOW >= 512
