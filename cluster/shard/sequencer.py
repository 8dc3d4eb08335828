"""Each sender's request batches, in the order it numbered them.

Ray does not promise order for an async actor's calls, and a data-plane connection may be
replaced, so a sender (a client's session) numbers its batches from 0 and the shard takes
them in that order.
"""
from __future__ import annotations

import asyncio

from kairos.cluster.settings import SESSION_START_S


class Sequencer:
    """Each sender's batches in the order it numbered them: a sender is a session, and its
    batches are numbered from 0. A session this incarnation has not seen yet (its earlier
    batches went to the previous one, before a restart) starts at the lowest number that
    arrives within `start_s`."""

    def __init__(self, start_s: float = SESSION_START_S):
        self.start_s = start_s
        self._turns: dict[str, int] = {}  # session -> next sequence number
        self._waiting: dict[str, set[int]] = {}
        self._turn = asyncio.Condition()

    async def turn(self, session: str, seq: int) -> None:
        """Return once the session's batches before `seq` have had their turn; the caller
        then has it until it next awaits."""
        async with self._turn:
            waiting = self._waiting.setdefault(session, set())
            waiting.add(seq)
            try:
                while self._turns.get(session, 0) != seq:
                    try:
                        async with asyncio.timeout(self.start_s):
                            await self._turn.wait()
                    except asyncio.TimeoutError:
                        if session not in self._turns:
                            self._turns[session] = min(waiting)
                            self._turn.notify_all()
            finally:
                waiting.discard(seq)
                if not waiting:
                    del self._waiting[session]
            self._turns[session] = seq + 1
            self._turn.notify_all()

