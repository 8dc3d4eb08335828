"""Replay: each logged decision decided again by a candidate catalog, offline, on the core.

For every record the customer's profile as the decision saw it (the record's one-customer
block) is loaded into a DecisionEngine compiled from the candidate, and the candidate decides
at the record's time, with its context, on its channel and placement. What replay needs is the
candidate's probability of showing each action first, pi(a | x): Thompson sampling and trials
make the candidate a random policy, and the kernel estimates a probability only for the action
a decision did show. So the candidate decides `samples` times from the same state, each from
the kernel's next random draws, and pi(a | x) is the share of those decisions that show a
first: unbiased, with a standard error of at most 0.5 / sqrt(samples) per action (1/16 at the
default 64). The estimators are linear in pi, so this noise adds variance, which their
intervals include (it is part of each record's term), and no bias.

Offline, the candidate decides with its catalog's prior models (no learner is running): the
logged decisions used the models learned by then. The estimate is of the candidate as it
would decide on the day it starts, before it learns; its exploration is the prior's. The
statistics a `standardize` input is scaled by build up from the replayed decisions (every
record's `samples` alike), as a fresh candidate's would from its traffic: the first records
of a log see few of them.

A convert's value is read as the candidate's models would learn it (core/engine.py,
_bounded_value): at most the catalog's `models.value.max_ratio` times the candidate's value
for the logged action in that decision (its `value` rule on the record's profile, context and
time). One hostile convert of 1e12, which the API takes, moved the value estimates by 1e8
while the models clipped it. Where the candidate does not value the action there (not in it,
filtered out, or valued at 0 or less) its models would learn no value, and the value is read
as reported: evaluation.py counts such values and warns of them.

A profile is loaded as a shard loads a block of another catalog (storage/blocks.py): a slot of
the candidate's that the log's catalog lacks, or holds with another meaning (an attribute's
type, a feature's definition or half-life), starts from the candidate's default. The
candidate then decides as it would on the day it starts, but a rule reading such a slot reads
no customer's value: each record names the slots it read so (`Replayed.defaults`), and
evaluation.py warns of them.

First slot only: the reward of a logged decision is what its first shown action earned, and
the candidate is judged by what it would show first (a placement of several slots is
evaluated by its first; the other slots' effects on each other are not modelled).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from kairos.core.catalog import Catalog, catalog_file_text, load_catalog
from kairos.core.compiler import CompiledCatalog, Reason, compile_catalog
from kairos.core.engine import DecisionEngine, EncodedRequest
from kairos.core.errors import InputError
from kairos.cluster.evidence.records import DecisionRecord, LogFormatError
from kairos.cluster.storage.blocks import BlockCorrupt, import_block, slot_sources, unpack

DEFAULT_SAMPLES = 64  # re-decisions per logged decision
MAX_SAMPLES = 4096
NOTHING = "(nothing)"  # no action shown: a decision may show none, and earns 0 then
# What counts as accepted: the outcomes the models learn as positives (ACCEPT and CONVERT);
# the -ED forms are accepted as written by hand.
POSITIVE = frozenset({"ACCEPT", "ACCEPTED", "CONVERT", "CONVERTED"})
REPLAY_CUSTOMER = "replay"  # every record is loaded into this one row
# the kernel's reasons for an action whose catalog value it computed: it passed every filter
_VALUED = np.array([r == Reason.SELECTED or r > Reason.INVALID_VALUE for r in Reason], bool)


@dataclass(frozen=True)
class Replayed:
    """One logged decision, what it earned, and what the candidate would show instead."""

    decision_id: str
    catalog_version: str  # the catalog that decided it
    channel: str
    placement: str
    logged: str  # the action the log showed first, or NOTHING
    selection: float  # the logging policy's probability of that (NOTHING too: see rewards)
    accept: float  # 1 if the first shown action was accepted or converted
    value: float  # the conversion values reported for it
    inputs: dict[str, float]  # what the logged decision's models read (the direct method's x)
    candidate: dict[str, float]  # the candidate's probability of showing each first
    refused: str | None = None  # the candidate refused the request (then it shows NOTHING)
    pushed: bool = False  # pushed to a watch (records.py): left out of the estimates
    # whose decision it was: a customer's decisions share its propensity, and the intervals
    # are clustered by it (estimators.py); None: a record of its own
    customer: str | None = None
    # the candidate's bound on the logged action's conversion value in this decision (NaN:
    # none) and whether `value` was reported above it and is read at it
    value_bound: float = math.nan
    clipped: bool = False
    # the candidate's slots the decision's profile held no value of their meaning for (a new
    # slot, or one whose meaning changed), which it read at their defaults: "attribute
    # segment", "feature visits"
    defaults: tuple[str, ...] = ()


def load_candidate(path: str | Path) -> tuple[CompiledCatalog, str]:
    """The candidate catalog, compiled for replay, and its text (the report names its digest,
    which PutCatalog holds the catalog put to); a bad one raises CatalogError naming file,
    line and action."""
    text = catalog_file_text(path)
    return for_replay(load_catalog(text, str(path))), text


def for_replay(catalog: Catalog) -> CompiledCatalog:
    """The catalog compiled with one selection re-run: replay reads no decision's own
    selection estimate, and the catalog's selection_samples would only cost time."""
    exploration = dataclasses.replace(catalog.arbitration.exploration, selection_samples=1)
    return compile_catalog(dataclasses.replace(
        catalog, arbitration=dataclasses.replace(catalog.arbitration, exploration=exploration)))


def rewards(record: DecisionRecord) -> tuple[str, float, float, float]:
    """The first shown action (or NOTHING), the logged probability of showing it, and its
    accept and value rewards: whether an outcome for it was positive, and the largest value
    one reported (a Respond has no idempotency key: a retried conversion must not count
    twice). A decision that showed nothing earned 0, with the logged probability that the
    policy shows nothing (its draws and control share can show something); a log written
    before that was kept has none, and such a decision is taken to have shown nothing for
    sure: when the policy is random that weighs it too little, and SNIPS's estimate comes
    out too high."""
    if not record.shown:
        selection = record.nothing_selection
        return NOTHING, 1.0 if selection is None else selection, 0.0, 0.0
    first = min(record.shown, key=lambda s: s.slot)
    positive = [o for o in record.outcomes if o.action_id == first.action_id
                and o.outcome.upper() in POSITIVE]
    return first.action_id, first.selection, float(bool(positive)), \
        float(max((o.value for o in positive), default=0.0))


class Replayer:
    """A candidate engine that re-decides logged decisions."""

    def __init__(self, compiled: CompiledCatalog, samples: int = DEFAULT_SAMPLES, seed: int = 0):
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be between 1 and {MAX_SAMPLES}, got {samples}")
        self.compiled = compiled
        self.samples = samples
        self.engine = DecisionEngine(compiled, capacity=1, seed=seed)
        self._names = list(compiled.action_ids) + [NOTHING]
        self._index = {name: a for a, name in enumerate(compiled.action_ids)}
        # per layout of the log's blocks (a log has one per catalog it spans): its defaults
        self._defaults: dict[tuple, tuple[str, ...]] = {}

    def replay(self, record: DecisionRecord) -> Replayed:
        logged, selection, accept, value = rewards(record)
        # between records: the strings of the profiles replaced since the last compaction are
        # held by no row now, and a log's free text would otherwise fill the table (`<other>`)
        if self.compiled.strings.due(spaced=False):  # offline: it serves no one
            self.engine.compact_strings()
        try:
            block = unpack(record.profile)
            import_block(self.engine, {**block, "ids": [REPLAY_CUSTOMER]})
            defaults = self._read_at_default(block)
        except (BlockCorrupt, TypeError, ValueError) as exc:
            raise LogFormatError(f"decision {record.decision_id}: its profile is not a "
                                 f"customer block: {exc}") from None
        replayed = Replayed(record.decision_id, record.catalog_version, record.channel,
                            record.placement, logged, selection, accept, value,
                            dict(record.inputs), {NOTHING: 1.0}, pushed=record.pushed,
                            customer=record.customer_id, defaults=defaults)
        try:
            request = self.engine.encode_request(REPLAY_CUSTOMER, record.channel,
                                                 record.placement, record.context, record.time)
        except InputError as exc:
            return dataclasses.replace(replayed, refused=str(exc))
        shares = self._first_shown(request) / self.samples
        bound = self._value_bound(logged)
        return dataclasses.replace(
            replayed, candidate={self._names[a]: float(shares[a])
                                 for a in np.flatnonzero(shares)},
            value=min(value, bound) if bound > 0 else value, value_bound=bound,
            clipped=bool(value > bound))

    def _read_at_default(self, block: dict) -> tuple[str, ...]:
        """`_defaults_read` of the block's layout, once per layout."""
        # as import_block takes them: string_columns' items by truth (a damaged block's may be
        # maps, which no key holds)
        key = (block.get("meanings"), tuple(block["slots"]),
               tuple(map(bool, block["string_columns"])))
        if key not in self._defaults:
            self._defaults[key] = _defaults_read(self.compiled, block)
        return self._defaults[key]

    def _value_bound(self, logged: str) -> float:
        """The candidate's bound on a convert's value for the logged action in the decision
        `_first_shown` made last (module docstring); NaN where it values it at none."""
        a = self._index.get(logged)
        if a is None or not _VALUED[self.engine.workspace.reasons[0, a]]:
            return math.nan
        bound = self.compiled.value_max_ratio * float(self.engine.workspace.catalog_values[0, a])
        return bound if bound > 0 else math.nan

    def _first_shown(self, request: EncodedRequest) -> np.ndarray:
        """How many of `samples` decisions show each action first (the last count: none),
        through the kernel directly: replay reads only the first slot, and building each
        decision's explanation-ready value would cost more than the decision."""
        e, n = self.engine, len(self.compiled.action_ids)
        row = e.activate([request.customer_id])
        counts = np.zeros(n + 1, np.int64)
        for start in range(0, self.samples, e.workspace.capacity):
            m = min(self.samples - start, e.workspace.capacity)
            e.k.decide(e.catalog_view, e.state_view, e.model_view, e.workspace,
                       np.repeat(row, m), np.full(m, request.channel, np.int32),
                       np.full(m, request.placement, np.int32),
                       np.ascontiguousarray(np.tile(request.context, (m, 1))),
                       np.full(m, request.now, np.float64),
                       np.full(m, request.max_actions, np.int32))
            shown = np.asarray(e.workspace.out_count[:m]) > 0
            first = np.where(shown, np.asarray(e.workspace.out_action[:m, 0]), n)
            counts += np.bincount(first, minlength=n + 1)
        return counts


def _defaults_read(compiled: CompiledCatalog, block: dict) -> tuple[str, ...]:
    """The candidate's slots `block` holds no value of their meaning for, which import_block
    starts from their defaults (blocks.slot_sources, which it matches them by)."""
    kinds = {**{f.name: "feature" for f in compiled.catalog.features},
             **{a.name: "attribute" for a in compiled.catalog.attributes}}
    # a helper slot ('<name>@time', the time of its value) is left out: its slot says it
    return tuple(f"{kinds.get(slot, 'slot')} {slot}" for slot, src in
                 slot_sources(compiled, block) if src is None and not slot.endswith("@time"))


def replay(records: Iterable[DecisionRecord], compiled: CompiledCatalog,
           samples: int = DEFAULT_SAMPLES, seed: int = 0) -> Iterator[Replayed]:
    replayer = Replayer(compiled, samples, seed)
    for record in records:
        yield replayer.replay(record)


def candidate_error(samples: int) -> float:
    """The largest standard error of one record's pi(a | x) at this many re-decisions."""
    return 0.5 / math.sqrt(samples)
