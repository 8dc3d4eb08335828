"""Which of a sender's later requests a shard refuses, as applied they would overtake one it
refused.

A session (a sender: sequencer.py) whose whole batch the shard refused (its queue full, while
it rebuilds, a round that failed) has all its later batches refused. One that had requests
refused one by one (Busy: CROWDED at the resident ceiling, an outcome past its rate) has only
its later requests with the same route key (the customer) refused: one customer's refusal must
not cost the other customers of the sender's next batch (a client's batch holds up to 512
requests, from many callers), unless more than SESSION_KEYS_KEPT were refused (then the whole
session is). The client goes on in a fresh session on any Busy or
Unavailable reply (transport/batching.py), so only what it sent before it heard carries the old
session: a refusal is kept for `keep_s` after the session's last one (by default PLANE_CALL_S,
the client's deadline for a call), apart from the sequencer's sessions, which it forgets past
SESSIONS_KEPT (refused senders start fresh sessions, so they come fast at the ceiling).
"""
from __future__ import annotations

import time
from typing import Callable, Container, Iterable

from kairos.cluster.protocol import Busy
from kairos.cluster.settings import PLANE_CALL_S

# Refused sessions remembered (the least recently refused is forgotten first), and customers
# named in them, all sessions' together: past that, a session's refusal covers all of it.
REFUSALS_KEPT = 65_536
# Customers one session's refusal may name; past that it covers all of the session, which
# costs only that session's batches sent before its sender heard (it goes on in another):
# else a few batches refused for many new customers each (a client's holds up to 512) used up
# REFUSALS_KEPT for PLANE_CALL_S, and every session's refusal covered all of it meanwhile.
SESSION_KEYS_KEPT = 64


class _Everything:
    def __contains__(self, key: object) -> bool:
        return True


EVERYTHING: Container[str] = _Everything()  # a session whose every later request is refused
NOTHING: Container[str] = frozenset()


def route_key(request: list | tuple) -> str | None:
    """A request's route key (its third field: a customer, or an alias key), typed or still
    the array it travelled as; None for what is no request, or has no string there (the shard
    answers it Invalid; a list there, unhashable, would fail the round before it is checked)."""
    key = request[2] if isinstance(request, (list, tuple)) and len(request) > 2 else None
    return key if isinstance(key, str) else None


class Refusals:
    def __init__(self, keep_s: float = PLANE_CALL_S, kept: int = REFUSALS_KEPT,
                 clock: Callable[[], float] = time.monotonic,
                 abandoned: Callable[[str], None] = lambda session: None):
        self.keep_s = keep_s
        self._abandoned = abandoned  # told each session refused: its sender goes on in another
        self.kept = kept
        self._clock = clock
        self._until: dict[str, float] = {}  # session -> when it is forgotten, soonest first
        self._keys: dict[str, set] = {}  # sessions refused for these route keys only
        # session -> the number of its first batch refused (or refused requests of): its
        # batches before that, queued already when it was, are not later ones (one refused
        # whole after some customers' refusal is refused whole from the first: the batches
        # between, queued then, lose their other customers' requests too, overtaking none)
        self._since: dict[str, int] = {}
        self._named = 0  # route keys in `_keys`, all sessions'

    def refuse(self, session: str, seq: int, keys: Iterable | None = None) -> None:
        """Refuse the session's requests from its batch `seq` on (the rest of that batch's
        parts, and later batches): those with these route keys, or (None) all."""
        self._since[session] = min(seq, self._since.get(session, seq))
        self._abandoned(session)
        named = self._keys.pop(session, None)
        whole = session in self._until and named is None
        self._until.pop(session, None)  # to the end: the last to be forgotten
        if named is not None:
            self._named -= len(named)
        if keys is not None and not whole:
            named = (named or set()).union(keys)
            if len(named) <= SESSION_KEYS_KEPT and self._named + len(named) <= self.kept:
                self._keys[session] = named
                self._named += len(named)
        self._until[session] = self._clock() + self.keep_s
        self._forget()

    def of(self, session: str) -> Container:
        """The route keys of the session's requests refused: EVERYTHING, some, or NOTHING."""
        if self._until:
            self._forget()
        if session not in self._until:
            return NOTHING
        return self._keys.get(session, EVERYTHING)

    def held(self, batches: list[tuple[str, int, list]]) -> set[int]:
        """The positions, among the requests of these (session, seq, requests) batches, of
        those refused (the host answers them OVERTAKING)."""
        held: set[int] = set()
        if not self._until:  # the usual round: nothing refused, nothing to look up per batch
            return held
        start = 0
        for session, seq, requests in batches:
            if (refused := self.of(session)) and seq >= self._since[session]:
                held.update(start + k for k, r in enumerate(requests) if route_key(r) in refused)
            start += len(requests)
        return held

    def refuse_busy(self, batches: list[tuple[str, int, list]], replies: list) -> int:
        """Refuse the sessions of these batches answered Busy (CROWDED, an outcome past its
        rate, a request held back) their later requests for those customers; how many were."""
        start = busy = 0
        for session, seq, requests in batches:
            keys = [route_key(r) for r, reply in zip(requests, replies[start:start + len(requests)])
                    if type(reply) is Busy]
            if keys:
                self.refuse(session, seq, keys)
                busy += len(keys)
            start += len(requests)
        return busy

    def _forget(self) -> None:
        now = self._clock()
        while self._until and (len(self._until) > self.kept or
                               next(iter(self._until.values())) <= now):
            session = next(iter(self._until))
            del self._until[session], self._since[session]
            self._named -= len(self._keys.pop(session, ()))
