"""The client's link to one shard (client.py): the session its batches go in and their numbers,
what waits to be sent and the calls in flight; and what a batch that never left, or a refused
one, does to the session's numbering and to the calls behind it."""
from __future__ import annotations

import asyncio
import uuid
from collections import deque

from kairos.cluster.transport.lanes import EarlierFailed, Item


class ShardLink:
    """Batches to one shard: one session, sequence numbers in send order."""

    def __init__(self, name: str, calls: int):
        self.name = name
        self.session = uuid.uuid4().hex
        self.seq = 0
        self.queue: deque[Item] = deque()
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(calls)  # the calls it may have in flight
        self.calls = 0  # calls in flight
        self.sent: list[list] = []  # the calls in flight: [session, number, items]
        self.task: asyncio.Task | None = None

    def refused_behind(self, session: str, seq: int) -> None:
        """Give up the calls of the requests in flight behind a refused batch in its session:
        the shard refuses those of the refused customers (refusals.py), but answers them
        later, and meanwhile their calls' next requests would go in the fresh session and be
        applied ahead of them. All of them: which customers the shard holds back is its own
        reckoning (past its bounds, the whole session)."""
        for sent_in, number, items in self.sent:
            if sent_in == session and number > seq:
                for item in items:
                    if item.call is not None:
                        item.call.give_up("not sent: its shard refused an earlier request "
                                          "sent before it", EarlierFailed)

    def resend_as(self, session: str, seq: int, gapped: bool) -> tuple[str, int]:
        """The session and number a batch that never left goes again as: a fresh session's
        first when it is the link's only call and newest batch (a restarted shard takes an
        unknown session's batch 0 at once, a later one only after SESSION_START_S), or when
        batches before it went unanswered (`gapped`: the shard would wait for them in vain),
        else its own, where the shard's sequencer keeps it in order with the session's others."""
        if gapped or (self.calls == 1 and self.seq == seq + 1):
            self.session, self.seq = uuid.uuid4().hex, 1
            return self.session, 0
        return session, seq

    def split_behind(self, flight: list, batch: list[Item]) -> tuple[list[Item], list[Item]]:
        """`batch`, about to go again as `flight` in a fresh session, which the shard orders
        after none of the link's other calls: the requests that may go, and those whose lane
        has an earlier request in another call in flight (sent, or going again in its own
        session), to wait behind it in their lane."""
        earliest: dict[int, int] = {}
        for other in self.sent:
            if other is not flight:
                for item in other[2]:
                    p = item.request.partition
                    earliest[p] = min(item.order, earliest.get(p, item.order))
        go: list[Item] = []
        behind: list[Item] = []
        for item in batch:
            late = earliest.get(item.request.partition, item.order) < item.order
            (behind if late else go).append(item)
        return go, behind
