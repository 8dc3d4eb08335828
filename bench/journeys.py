"""What the load generators send: Zipf-popular customers on cross-channel sessions.

A session is one customer's visit across channels in the order the seeds describe: web, then
the app, then the call center, then email. In each channel the customer produces a few events
drawn from that channel's mix in the default catalog, the channel asks for a decision, and it
reports an outcome for what it showed. Customers are drawn from a bounded Zipf distribution
(a few very active customers, a long tail), so hot customers exist as in production; Kairos
hashes customer ids to partitions, so the hot ones land on different shards.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from kairos.core.catalog import Catalog

from .workload import random_context, random_value

ZIPF_EXPONENT = 0.99  # s of the bounded Zipf popularity (rank r drawn ∝ 1 / r**s; YCSB's)
ACTIVE_SESSIONS = 64  # sessions one generator interleaves
ACCEPT_SHARE = 0.1  # outcomes that are accepts; the rest are impressions
# The channels a session crosses, the placement each asks a decision for, and its event mix
# (event type, weight) from the default catalog.
PATH: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("web", "hero", (("page_view", 6), ("search", 2), ("add_to_cart", 1),
                     ("remove_from_cart", 1), ("checkout_started", 1))),
    ("app", "home", (("app_open", 3), ("page_view", 2), ("add_to_cart", 1), ("purchase", 1))),
    ("call_center", "agent_screen", (("call_started", 3), ("complaint", 1),
                                     ("return_requested", 1))),
    ("email", "weekly", (("email_open", 2), ("email_click", 1))),
)
EVENTS_PER_VISIT = (1, 3)  # events a session sends in each channel, inclusive range
DECIDE, EVENT, RESPOND = "decide", "event", "respond"
PROFILE_EVENT = "profile_updated"  # what a CRM sends for each customer it knows
PROFILE_SEED = 11  # of the bulk load's profiles: every system that loads them gets the same
PROFILE_CHUNK = 10_000  # customers whose profiles one seed draws
TIERS = ("none", "none", "silver", "gold", "platinum")
CONSENTS = ("marketing_opt_in", "email_opt_in", "push_opt_in")
CONSENT_SHARE = 0.6


def customer_id(index: int) -> str:
    return f"c{index:07d}"


def profile_attributes(rng: random.Random) -> dict[str, Any]:
    """A CRM profile: a loyalty tier and consents."""
    return {"tier": rng.choice(TIERS), **{c: rng.random() < CONSENT_SHARE for c in CONSENTS}}


def crm_profiles(last: int, first: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """The bulk load: (customer id, CRM profile attributes) for customers first..last-1, in
    order, the same in every run and for every system loaded with them, however the range is
    cut (each PROFILE_CHUNK customers draw from a seed of their own)."""
    for chunk in range(first // PROFILE_CHUNK, -(-last // PROFILE_CHUNK)):
        rng = random.Random(PROFILE_SEED + chunk)
        for i in range(chunk * PROFILE_CHUNK, min((chunk + 1) * PROFILE_CHUNK, last)):
            attributes = profile_attributes(rng)
            if i >= first:
                yield customer_id(i), attributes


def popularity(n: int, exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    """Each customer index's share of the requests (index 0 the most popular)."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


class Zipf:
    """Bounded Zipf over customer indexes 0..n-1 (index 0 the most popular), seeded."""

    def __init__(self, n: int, rng: np.random.Generator):
        self._cdf = np.cumsum(popularity(n))
        self._n = n
        self._rng = rng
        self._pending: list[int] = []

    def draw(self) -> int:
        if not self._pending:  # sample in blocks: one searchsorted per 4096 draws
            ranks = np.searchsorted(self._cdf, self._rng.random(4096), side="right")
            self._pending = np.minimum(ranks, self._n - 1).tolist()
        return self._pending.pop()


@dataclass(frozen=True)
class Request:
    """One thing to send: a decision, an event or an outcome."""

    kind: str
    customer_id: str
    channel: str
    placement: str = ""
    event_type: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    decision_id: str = ""
    action_id: str = ""
    accept: bool = False
    session: "_Session | None" = field(default=None, compare=False, repr=False)


@dataclass
class _Session:
    customer_id: str
    hop: int = 0  # index into PATH
    events_left: int = 0
    decided: bool = False
    shown: tuple[str, str, str] | None = None  # (decision_id, action_id, channel) shown


class Journeys:
    """Interleaved sessions; `next(kinds)` gives the next request of one of those kinds."""

    def __init__(self, catalog: Catalog, customers: int, seed: int):
        self.catalog = catalog
        self._events = {e.name: e for e in catalog.events}
        self._rng = random.Random(seed)
        self._zipf = Zipf(customers, np.random.default_rng(seed))
        self._sessions = [self._new_session() for _ in range(ACTIVE_SESSIONS)]

    def _new_session(self) -> _Session:
        return self._visit(_Session(customer_id(self._zipf.draw())))

    def _visit(self, session: _Session) -> _Session:
        session.events_left = self._rng.randint(*EVENTS_PER_VISIT)
        session.decided = False
        session.shown = None
        return session

    def next(self, kinds: frozenset[str]) -> Request:
        while True:
            i = self._rng.randrange(len(self._sessions))
            request = self._advance(i, kinds)
            if request is not None:
                return request

    def decided(self, request: Request, decision_id: str, action_id: str | None) -> None:
        """The channel showed this decision's best action (if any): its session reports an
        outcome for it next (unless the session moved on before the answer came)."""
        if action_id and request.session is not None and request.session.shown is None:
            request.session.shown = (decision_id, action_id, request.channel)

    def _advance(self, i: int, kinds: frozenset[str]) -> Request | None:
        """One step of session i: its channel's events, then a decision, then an outcome for
        what was shown; then the next channel, or a new session after the last one. The
        request, if it is of one of these kinds (the others are skipped, not built)."""
        session = self._sessions[i]
        channel, placement, mix = PATH[session.hop]
        if session.events_left:
            session.events_left -= 1
            return self.event(session.customer_id, channel, placement, mix) \
                if EVENT in kinds else None
        if not session.decided:
            session.decided = True
            return Request(DECIDE, session.customer_id, channel, placement,
                           context=random_context(self.catalog, self._rng, _now()),
                           session=session) if DECIDE in kinds else None
        shown, session.shown = session.shown, None
        if session.hop + 1 < len(PATH):
            session.hop += 1
            self._visit(session)
        else:
            self._sessions[i] = self._new_session()
        if shown is None or RESPOND not in kinds:
            return None
        decision_id, action_id, shown_on = shown
        return Request(RESPOND, session.customer_id, shown_on, decision_id=decision_id,
                       action_id=action_id, accept=self._rng.random() < ACCEPT_SHARE)

    def event(self, customer: str, channel: str, placement: str,
              mix: tuple[tuple[str, int], ...] = PATH[0][2]) -> Request:
        """An event of the channel's mix, every required field set and half the optional."""
        names, weights = zip(*mix)
        spec = self._events[self._rng.choices(names, weights)[0]]
        attributes = {f.name: random_value(f, self._rng, _now()) for f in spec.fields
                      if f.required or self._rng.random() < 0.5}
        return Request(EVENT, customer, channel, placement, spec.name, attributes)


def _now() -> float:
    return time.time()
