"""Each sender's request batches, in the order it numbered them.

Ray does not promise order for an async actor's calls, and a data-plane connection may be
replaced, so a sender (a client's session) numbers its batches from 0 and the shard takes
them in that order.
"""
from __future__ import annotations

import asyncio
import contextlib

from kairos.cluster.settings import PLANE_CALL_S, SESSION_START_S

MAX_SESSION_LENGTH = 64  # characters of a session's name (a client's are 32)
SESSIONS_KEPT = 4096  # sessions remembered, the most recently used (a client has one a shard)
# Past its start, how long an unseen session at least has to reach a batch's number: its
# earlier batches, sent before this one, are here or a round trip away.
START_MARGIN_S = 0.5


class NotTaken(ValueError):
    """A batch refused for its sender's doing (a session name too long, a batch out of
    turn), not the shard's bug."""


class OutOfTurn(NotTaken):
    """A batch its session will never reach: its sender's replay or gap."""


class Sequencer:
    """Each sender's batches in the order it numbered them: a sender is a session, and its
    batches are numbered from 0. A session this incarnation has not seen yet (its earlier
    batches went to the previous one, before a restart) starts at the lowest number that
    arrives within `start_s`. Past `kept` sessions the earliest abandoned one (refused) is
    forgotten, else the least recently used (a client starts a new session after each failed
    call or refusal: one per refusal at the resident ceiling, which must not push out the live
    quiet senders, whose next batch would wait `start_s`): should it come back, it starts as an
    unseen one (the sessions the shard refused requests of are kept apart: refusals.py)."""

    def __init__(self, start_s: float = SESSION_START_S, kept: int = SESSIONS_KEPT,
                 gap_s: float | None = None):
        self.start_s = start_s
        self.kept = kept
        # By default half the client's deadline for a call (PLANE_CALL_S), which began when
        # it wrote the batch: the shard's gap error must reach it before that ends, or it
        # drops the connection and every call on it with the batch. So it runs from the
        # batch's arrival, an unseen session's start included (settings.py keeps
        # SESSION_START_S below it), but leaves a started session START_MARGIN_S.
        self.gap_s = PLANE_CALL_S / 2 if gap_s is None else gap_s
        self._turns: dict[str, int] = {}  # session -> next sequence number, oldest use first
        self._abandoned: dict[str, None] = {}  # sessions of `_turns`, the first abandoned first
        self._waiting: dict[str, set[int]] = {}
        self._turn = asyncio.Condition()

    async def turn(self, session: str, seq: int) -> None:
        """Return once the session's batches before `seq` have had their turn; the caller
        then has it until it next awaits. NotTaken (a ValueError) for a session name over
        MAX_SESSION_LENGTH; OutOfTurn (a NotTaken) for a number the session is past (a
        replay: it had its turn, or the session went on without it), and for one whose
        predecessors have not all come within `gap_s` of its arrival (its sender gave up on
        them by then: its calls have a longer deadline); an unseen session starts within
        `start_s`, and has START_MARGIN_S past that at least."""
        if len(session) > MAX_SESSION_LENGTH:
            raise NotTaken(f"a session name of {len(session)} characters, over "
                             f"{MAX_SESSION_LENGTH}")
        arrived = asyncio.get_running_loop().time()
        async with self._turn:
            waiting = self._waiting.setdefault(session, set())
            waiting.add(seq)
            try:
                gap_s = self.gap_s
                if seq and session not in self._turns:
                    await self._start(session, waiting)
                    gap_s = max(gap_s, self.start_s + START_MARGIN_S)  # whatever the settings
                async with asyncio.timeout_at(arrived + gap_s):
                    while (turn := self._turns.get(session, 0)) != seq:
                        if seq < turn:
                            raise OutOfTurn(f"batch {seq} of a session at batch {turn}")
                        await self._turn.wait()
            except TimeoutError:
                raise OutOfTurn(f"batch {seq} of a session at batch {self._turns.get(session, 0)}"
                                 ": the batches between did not come in time") from None
            finally:
                waiting.discard(seq)
                if not waiting:
                    del self._waiting[session]
            self._turns.pop(session, None)  # to the end: the most recently used
            self._turns[session] = seq + 1
            if len(self._turns) > self.kept:
                self._forget_oldest()
            self._turn.notify_all()

    async def _start(self, session: str, waiting: set[int]) -> None:
        """Wait up to `start_s` for an unseen session to start (its batch 0 came, or another
        of its batches started it); if it has not by then, start it at its lowest number
        waiting."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.start_s):
                await self._turn.wait_for(lambda: session in self._turns)
        if session not in self._turns:
            self._turns[session] = min(waiting)
            self._turn.notify_all()

    def abandon(self, session: str) -> None:
        """The session's sender has gone on in another (the shard refused it): forget it
        first."""
        if session in self._turns:
            self._abandoned.setdefault(session)

    def _forget_oldest(self) -> None:
        for sessions in (self._abandoned, self._turns):
            for session in sessions:
                if session not in self._waiting:  # a session with batches waiting is kept
                    del self._turns[session]
                    self._abandoned.pop(session, None)
                    return

