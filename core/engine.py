"""DecisionEngine: the Python face of the core that a shard drives.

It validates and encodes input (events, context, outcomes) against the catalog, keeps the
columnar profiles and the adaptive models, calls the kernel in batches, and turns the kernel's
codes back into decisions that explain themselves. Input is validated whole before anything is
applied, so a bad event in a batch changes no state.
"""
from __future__ import annotations

import itertools
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping, Protocol, Sequence

import numpy as np

from . import kernel as kernel_loader
from .catalog import FieldSpec, parse_timestamp
from .compiler import (CompiledCatalog, Outcome, Reason, STAGES, STAGE_APPLICABILITY,
                       STAGE_ELIGIBILITY, STAGE_SUITABILITY, Teach)
from .decision import Decision, Dropped, Explanation, Learned, RankedAction
from .errors import InputError
from .memo import Memo, Remembered
from .models import Adopting, ModelTable
from .request import (MAX_PROFILE_ID_LENGTH, MAX_STRING_LENGTH, channel_code, check_customer,
                      checked_vector, placement_codes, quoted, shown)
from .state import EMPTY, HISTORY_EPOCH_S, ProfileTable, profile_view
from .strings import StringTable

DECISION_CACHE_SIZE = 100_000  # decisions whose model inputs are kept for their outcomes...
DECISION_MEMO_BYTES = 64 * 2**20  # ...fewer when their inputs would take more than this
BATCH_SIZE = 256  # decisions per kernel call
MAX_ACTIONS = 1024  # the most actions one decision may ask for
# 2088-01-19T03:14:08Z, the first second the history ring's int32 times (seconds after
# HISTORY_EPOCH_S) cannot hold: later (or pre-1970) times are input errors
LATEST_TIME_S = HISTORY_EPOCH_S + 2.0 ** 31
TIME_RANGE = "1970..2088-01-19"

CONVERSION_VALUE = FieldSpec("value", "float", minimum=0.0)  # what a convert may report



@dataclass(frozen=True)
class EncodedEvent:
    """A validated event, ready for the kernel."""

    customer_id: str
    event_type: int
    time: float
    fields: np.ndarray


@dataclass(frozen=True)
class EncodedRequest:
    """A validated decision request, ready for the kernel."""

    customer_id: str
    channel: int
    placement: int
    context: np.ndarray
    now: float
    max_actions: int


_TAUGHT_POSITIVE, _TAUGHT_NEGATIVE, _TAUGHT_VALUE = 1, 2, 4
# as plain ints for record_outcomes' loop: an enum's attribute and operators are Python calls
# (through them the labels' checks cost about 9 us an outcome, a fifth of its time)
_IMPRESSION, _POSITIVE, _LABEL = int(Outcome.IMPRESSION), \
    (int(Outcome.ACCEPT), int(Outcome.CONVERT)), int(Teach.LABEL)


class TaughtLabels(Protocol):
    """Which labels outcomes of decisions have taught their actions, kept where the memo is
    not: the memo is lost at a restart, a move, a catalog switch or a link, and lets a
    decision go once later ones fill it (the oldest that may go: `memo.Memo`),
    and an outcome then would teach its label again (a shard keeps these with the customer's
    durable state: outcomes.TaughtLabels)."""

    def taught(self, customer_id: str, decision_id: str, action_id: str,
               positive: bool) -> bool:
        """Whether an outcome of the decision taught the action this label."""

    def teach(self, customer_id: str, decision_id: str, action_id: str,
              positive: bool) -> None:
        """An outcome of the decision has taught the action this label."""


class DecisionEngine:
    """Profiles, models and decisions for the customers of one shard."""

    def __init__(self, compiled: CompiledCatalog, *, capacity: int = 1024, seed: int = 0,
                 batch_size: int = BATCH_SIZE):
        self.compiled = compiled
        compiled.strings.seal()  # what it holds yet is the catalog's: `compact_strings`
        self.k = kernel_loader.load()
        self.table = ProfileTable(compiled, capacity)
        self.models = ModelTable(compiled)
        self.catalog_view = self.k.CatalogView(compiled)
        self.workspace = self.k.Workspace(compiled, batch_size, seed)
        self._bind_state()
        self._bind_models()
        # Ids unique to this engine, not numbered from the same start in every process: a
        # restarted shard would issue a decision id again, and an outcome sealed for the old
        # decision (the seal's secret outlives the process) would learn from the new one's
        # inputs in the memo.
        self._prefix = f"{secrets.token_hex(4)}-"
        self._decisions = itertools.count()
        self._remembered = Memo(min(DECISION_CACHE_SIZE,
                                     DECISION_MEMO_BYTES // (8 * compiled.n_predictors)),
                                 len(compiled.channel_names))
        # the inputs of decisions made not to be remembered yet (`remember_held`)
        self._held: dict[str, Remembered] = {}
        self._read_fields = _fields_read(compiled)
        layout = compiled.layout
        self._string_slots = np.array([s for s, name in enumerate(layout.names)
                                       if layout.types.get(name) == "string"], np.intp)
        self._no_context = np.full(max(compiled.context_width, 1), math.nan)
        self._groups = [compiled.group_names[g] for g in compiled.action_group.tolist()]
        self._levers = compiled.lever.tolist()
        # with `keep_eligible`, the codes of the actions each decision's rules and contact
        # policies let through, by decision id, for the decision log, which takes them and
        # clears the rest after each round (so they never pile up)
        self.keep_eligible = False
        self.eligible: dict[str, np.ndarray] = {}
        # converts' values, ever: counted at their bound, and not learned for want of one
        # (`_bounded_value`), so that an operator sees what the bound did
        self.values_clipped = 0
        self.values_unbounded = 0

    @property
    def implementation(self) -> str:
        return self.k.IMPLEMENTATION

    def _bind_state(self) -> None:
        t = self.table
        self.state_view = self.k.StateView(t.values, t.ring_action, t.ring_channel,
                                           t.ring_outcome, t.ring_time, t.ring_head)
        self._generation = t.generation

    def _bind_models(self) -> None:
        m = self.models
        self.model_view = self.k.ModelView(*m.kernel_arrays())

    def activate(self, customer_ids: Iterable[str]) -> np.ndarray:
        """The rows of these customers, activating fresh profiles for new ones."""
        rows = self.table.rows(customer_ids)
        if self.table.generation != self._generation:
            self._bind_state()
        return rows

    # -- input validation --------------------------------------------------------------------

    def encode_event(self, customer_id: str, event_type: str, event_time: Any,
                     attributes: Mapping[str, Any] | None = None) -> EncodedEvent:
        """Check an event against its declared type; raises InputError naming the field."""
        c = self.compiled
        check_customer(customer_id, limit=MAX_PROFILE_ID_LENGTH)
        if event_type not in c.event_index:
            raise InputError("type", f"unknown event type {event_type!r} (declared: "
                                     f"{', '.join(c.event_names)})")
        t = _encode_time("time", event_time)
        fields = np.full(c.n_fields, math.nan)
        self.check_attributes(c, event_type, attributes, fields, self._interned,
                              self._read_fields)
        return EncodedEvent(customer_id, c.event_index[event_type], t, fields)

    @staticmethod
    def check_attributes(c: CompiledCatalog, event_type: str,
                         attributes: Mapping[str, Any] | None,
                         fields: np.ndarray | None = None,
                         intern: Callable[[str], float] | None = None,
                         read_fields: Collection[tuple[str, str]] = ()) -> None:
        """The attributes of an event of a declared type checked against its fields (raises
        InputError naming the field), written into their slots of `fields` when given; a
        string a feature reads (an (event type, field) of `read_fields`) as `intern` codes
        it. A gateway checks with this before it routes an event, and keeps no slots."""
        attributes = attributes or {}
        declared = c.event_fields[event_type]
        for name in attributes:
            if name not in declared:
                raise InputError(f"attributes.{name}", f"unknown field of {event_type} "
                                                       f"(fields: {', '.join(declared) or 'none'})")
        for f in c.catalog.event(event_type).fields:
            if f.name not in attributes or attributes[f.name] is None:
                if f.required:
                    raise InputError(f"attributes.{f.name}", f"required field of {event_type} "
                                                             f"is missing")
                continue
            # A string no feature reads is checked but not kept: free text must not pile up.
            code = DecisionEngine._encode_value(f"attributes.{f.name}", f, attributes[f.name],
                                                intern if (event_type, f.name) in read_fields
                                                else _unread)
            if fields is not None:
                fields[declared[f.name]] = code

    def encode_context(self, context: Mapping[str, Any] | None) -> np.ndarray:
        c = self.compiled
        out = self._no_context.copy()
        codes = _RequestCodes(c.strings)
        for name, value in (context or {}).items():
            if name not in c.context_index:
                raise InputError(f"context.{name}", f"unknown context key (declared: "
                                                    f"{', '.join(c.context_names) or 'none'})")
            if value is None:
                continue
            spec = c.catalog.context[c.context_index[name]]
            slot = c.context_slot[name]
            if spec.type == "vector":
                out[slot:slot + spec.size] = checked_vector(f"context.{name}", spec, value)
            else:
                out[slot] = self._encode_value(f"context.{name}", spec, value, codes.code)
        return out

    def _interned(self, text: str) -> float:
        return float(self.compiled.strings.intern(text))

    @staticmethod
    def _encode_value(where: str, spec: FieldSpec, value: Any,
                      code: Callable[[str], float]) -> float:
        """The value checked against its spec, as a float64 slot value; `code` turns a string
        into one."""
        if spec.type == "string":
            if not isinstance(value, str):
                raise InputError(where, f"expected a string, got {shown(value)}")
            if spec.values is not None and value not in spec.values:
                raise InputError(where, f"{quoted(value)} is not one of "
                                        f"{', '.join(spec.values)}")
            if len(value) > MAX_STRING_LENGTH:
                raise InputError(where, f"at most {MAX_STRING_LENGTH} characters, got "
                                        f"{len(value)}")
            return code(value)
        if spec.type == "bool":
            if not isinstance(value, bool):
                raise InputError(where, f"expected true or false, got {shown(value)}")
            return float(value)
        if spec.type == "timestamp":
            return _encode_time(where, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"expected {'an integer' if spec.type == 'int' else 'a number'}"
                                    f", got {shown(value)}")
        number = _finite(where, value, "number")
        if spec.type == "int" and not number.is_integer():
            raise InputError(where, f"expected an integer, got {value!r}")
        # Bounded so that one customer's number cannot overflow a feature or a model update.
        if not spec.minimum <= number <= spec.maximum:
            raise InputError(where, f"must be between {spec.minimum:g} and {spec.maximum:g}, "
                                    f"got {value!r}")
        return number

    # -- events ------------------------------------------------------------------------------

    def apply(self, events: Sequence[EncodedEvent]) -> list[int]:
        """Apply encoded events in order (per customer order is the caller's order).

        Returns each event's sequence number: its customer's count of applied events.
        """
        if not events:
            return []
        rows = self.activate(e.customer_id for e in events)
        etypes = np.fromiter((e.event_type for e in events), np.int32, len(events))
        times = np.fromiter((e.time for e in events), np.float64, len(events))
        fields = np.array([e.fields for e in events])  # as np.stack's rows, in a fifth the time
        self.k.apply_events(self.catalog_view, self.state_view, rows, etypes, times, fields)
        applied = self.table.applied
        sequence = []
        for row in rows.tolist():
            applied[row] += 1
            sequence.append(int(applied[row]))
        return sequence

    # -- decisions ---------------------------------------------------------------------------

    def decide(self, customer_id: str, channel: str, placement: str | None = None,
               context: Mapping[str, Any] | None = None, now: float | None = None,
               max_actions: int = 0, explain: bool = False) -> Decision:
        """Re-evaluate the whole profile for a channel and placement; the ranked actions."""
        request = self.encode_request(customer_id, channel, placement, context, now, max_actions)
        row = self.table.row(customer_id)
        if self.table.generation != self._generation:
            self._bind_state()
        self.k.decide_one(self.catalog_view, self.state_view, self.model_view, self.workspace,
                          row, request.channel, request.placement, request.context, request.now,
                          request.max_actions)
        return self._decision(0, customer_id, request.channel, request.placement, explain,
                              self._remembered.keep)

    def encode_request(self, customer_id: str, channel: str, placement: str | None = None,
                       context: Mapping[str, Any] | None = None, now: Any = None,
                       max_actions: Any = 0) -> "EncodedRequest":
        """Check a decision request; raises InputError naming the field."""
        check_customer(customer_id, limit=MAX_PROFILE_ID_LENGTH)
        ch, pl = placement_codes(self.compiled, channel, placement)
        ctx = self.encode_context(context)
        if isinstance(max_actions, bool) or not isinstance(max_actions, int):
            raise InputError("max_actions", f"expected an integer, got {shown(max_actions)}")
        if max_actions < 0:
            raise InputError("max_actions", f"must be 0 (the placement's top_k) or more, "
                                            f"got {max_actions}")
        if max_actions > MAX_ACTIONS:
            raise InputError("max_actions", f"must be at most {MAX_ACTIONS}, got {max_actions}")
        now = time.time() if now is None else _encode_time("now", now)
        return EncodedRequest(customer_id, ch, pl, ctx, now, max_actions)

    def decide_encoded(self, requests: Sequence["EncodedRequest"],
                       explain: Sequence[bool] | bool = False, remember: bool = True
                       ) -> list[Decision]:
        """Decisions for encoded requests, in kernel batches (`remember`: decide_many's)."""
        if not requests:
            return []
        flags = [explain] * len(requests) if isinstance(explain, bool) else explain
        return self.decide_many([r.customer_id for r in requests],
                                [r.channel for r in requests], [r.placement for r in requests],
                                np.array([r.context for r in requests]),  # as apply's
                                [r.now for r in requests], [r.max_actions for r in requests],
                                flags, remember)

    def decide_many(self, customer_ids: Sequence[str], channels: Sequence[int],
                    placements: Sequence[int], contexts: np.ndarray, now: Sequence[float],
                    max_actions: Sequence[int] | None = None,
                    explain: Sequence[bool] | bool = False, remember: bool = True
                    ) -> list[Decision]:
        """Batch form with encoded inputs (channel and placement codes, context rows).
        `remember` False holds the decisions' inputs out of the memo, until `remember_held`
        names those to remember (the others', and those held before, go): for decisions whose
        ids may never leave the shard, which would push out of a full memo decisions that
        outcomes may name."""
        out: list[Decision] = []
        if remember:
            keep = self._remembered.keep
        else:
            self._held = {}  # those held before go
            keep = self._held.__setitem__
        n_ctx = contexts.shape[1]
        for start in range(0, len(customer_ids), self.workspace.capacity):
            ids = customer_ids[start:start + self.workspace.capacity]
            end = start + len(ids)
            rows = self.activate(ids)
            k_req = np.zeros(len(ids), np.int32) if max_actions is None else \
                np.asarray(max_actions[start:end], np.int32)
            self.k.decide(self.catalog_view, self.state_view, self.model_view, self.workspace,
                          rows, np.asarray(channels[start:end], np.int32),
                          np.asarray(placements[start:end], np.int32),
                          np.ascontiguousarray(contexts[start:end].reshape(-1, n_ctx)),
                          np.asarray(now[start:end], np.float64), k_req)
            out.extend(self._decision(i, ids[i], int(channels[start + i]),
                                      int(placements[start + i]),
                                      explain if isinstance(explain, bool) else
                                      explain[start + i], keep)
                       for i in range(len(ids)))
        return out

    def _decision(self, i: int, customer_id: str, channel: int, placement: int,
                  explain: bool, keep: Callable[[str, Remembered], None]) -> Decision:
        ws, c = self.workspace, self.compiled
        n = int(ws.out_count[i])
        codes = tuple(ws.out_action[i, :n].tolist())
        actions = tuple(self._ranked(a, channel, factors, selection) for a, factors, selection
                        in zip(codes, ws.out_factors[i, :n].tolist(),
                               ws.out_selection[i, :n].tolist()))
        decision_id = f"{self._prefix}{next(self._decisions):x}"
        # item by item: a fancy index and its tolist cost some 1.6 us more per decision
        values = tuple([ws.catalog_values.item(i, a) for a in codes])
        keep(decision_id, Remembered(customer_id, channel, ws.predictors[i].copy(), codes,
                                      values))
        if self.keep_eligible:
            self.eligible[decision_id] = _PASSED[ws.reasons[i]].nonzero()[0]
        explanation = self._explain(i, channel, actions) if explain else None
        return Decision(decision_id, customer_id, c.channel_names[channel],
                        c.placement_names[channel][placement], actions, c.version,
                        self.models.version, False, explanation, bool(ws.out_control[i]),
                        None if n else float(ws.out_selection[i, 0]))  # slot 0: P(nothing)

    def _ranked(self, a: int, channel: int, factors: list[float],
                selection: float) -> RankedAction:
        c = self.compiled
        propensity, weight, value, priority = factors
        return RankedAction(c.action_ids[a], self._groups[a], c.treatments[a][channel],
                            priority, propensity, value, weight, self._levers[a], selection)

    def _explain(self, i: int, channel: int, winners: tuple[RankedAction, ...]) -> Explanation:
        c, ws = self.compiled, self.workspace
        dropped = []
        for a, code in enumerate(ws.reasons[i]):
            reason = Reason(int(code))
            if reason != Reason.SELECTED:
                detail = self._detail(a, channel, reason, ws.factors[i, a])
                if ws.out_control[i] and reason == Reason.TOP_K:
                    detail = f"{detail.split(';')[0]}; held back as control: " + (
                        "another eligible action was drawn at random" if ws.out_count[i] else
                        "nothing was shown, as no action could be drawn")
                dropped.append(Dropped(c.action_ids[a], reason.name, detail))
        return Explanation(winners, tuple(dropped))

    def _detail(self, a: int, channel: int, reason: Reason, factors: np.ndarray) -> str:
        c = self.compiled
        action = c.catalog.actions[a]
        policy = action.contact_policy
        stage = {Reason.ELIGIBILITY: STAGE_ELIGIBILITY, Reason.APPLICABILITY: STAGE_APPLICABILITY,
                 Reason.SUITABILITY: STAGE_SUITABILITY}.get(reason)
        if stage is not None:
            return f"{STAGES[stage]}: {getattr(action, STAGES[stage]).text}"
        scored = f"priority {factors[3]:.4g} = propensity {factors[0]:.4g} x weight " \
                 f"{factors[1]:.4g} x value {factors[2]:.4g} x lever {c.lever[a]:.4g}"
        return {
            Reason.NOT_IN_CHANNEL: f"not offered on {c.channel_names[channel]} at this "
                                   f"placement",
            Reason.OUTSIDE_VALIDITY: "outside its validity window",
            Reason.NO_CONSENT: f"no consent for purpose '{action.purpose}' on "
                               f"{c.channel_names[channel]}",
            Reason.IMPRESSION_CAP: f"shown {policy.max_impressions} times within "
                                   f"{_duration(policy.impression_window_s)} on "
                                   f"{c.channel_names[channel]}",
            Reason.REJECT_SUPPRESSION: f"rejected {policy.reject_count} times: suppressed for "
                                       f"{_duration(policy.reject_suppress_s)}",
            Reason.ACCEPT_COOLDOWN: f"accepted within the last "
                                    f"{_duration(policy.accept_cooldown_s)}",
            Reason.INVALID_VALUE: "its value is not a finite number within ±1e12 for this "
                                  "customer",
            # a priority of 0 reaches a threshold of 0 but is not shown all the same
            Reason.RESTRAINT: f"{scored}, below the restraint threshold "
                              f"{c.restraint_threshold:g}" if factors[3] < c.restraint_threshold
                              else f"{scored}; only a priority above 0 is shown",
            Reason.GROUP_LIMIT: f"{scored}; a higher-priority action of group "
                                f"'{action.group}' was chosen",
            Reason.TOP_K: f"{scored}; ranked below the actions shown",
        }[reason]

    def inputs_of(self, decision_id: str) -> np.ndarray | None:
        """The model inputs a remembered decision saw, in `predictor_names` order; None once
        the memo has let it go."""
        memo = self._remembered.get(decision_id)
        return None if memo is None else memo.predictors

    @property
    def remembered(self) -> int:
        """Decisions whose model inputs the memo keeps (at most `memo_capacity`)."""
        return len(self._remembered)

    @property
    def memo_capacity(self) -> int:
        """How many decisions' inputs the memo keeps: DECISION_CACHE_SIZE, fewer for models
        with so many inputs that they would take more than DECISION_MEMO_BYTES."""
        return self._remembered.capacity

    def remember_held(self, decision_ids: Collection[str]) -> None:
        """Remember those named of the decisions last made with `remember` False, in the
        order made; the inputs of the others go."""
        held, self._held = self._held, {}
        for decision_id, entry in held.items():
            if decision_id in decision_ids:
                self._remembered.keep(decision_id, entry)

    def forget(self, customer_id: str) -> None:
        """Drop what the decision memo keeps of the customer (ForgetCustomer)."""
        self.forget_decisions(customer_id.__eq__)

    def forget_decisions(self, customers: Callable[[str], bool]) -> int:
        """Drop the memo's decisions of the customers `customers` is true of, every channel's,
        in one scan of the memo (a partition's customers, when it moves away); how many."""
        return self._remembered.drop(customers)

    # -- outcomes ----------------------------------------------------------------------------

    def record_outcomes(self, outcomes: Sequence[tuple], labels: TaughtLabels | None = None
                        ) -> list[Learned]:
        """Record (customer_id, action_id, channel, outcome, time, decision_id[, value])
        tuples; what each taught the models from. A convert may carry its value (0 to
        MAX_NUMBER, None for none), which the model's value learns from, counted at most
        `models.value.max_ratio` times the value the remembered decision gave the action
        (`_bounded_value`).

        The model learns from the inputs the decision saw when the decision is still
        remembered; otherwise from the profile as it is now, without context. A decision's
        action learns each label once: the memo says which it taught, and `labels`, where
        given, what outcomes taught beyond the memo (asked only of decisions the memo let go;
        told what these teach, kept or not).

        Every outcome is checked before any is recorded: one InputError refuses them all.
        """
        return self.record_encoded([self.encode_outcome(o) for o in outcomes], labels)

    def encode_outcome(self, reported: tuple) -> tuple:
        """Check one outcome as record_outcomes takes it; raises InputError naming the field.
        `record_encoded` records what it returns: so a caller answers a bad outcome alone and
        records the others of its batch in one call."""
        c = self.compiled
        customer_id, action_id, channel, outcome, when, decision_id, *rest = reported
        check_customer(customer_id, limit=MAX_PROFILE_ID_LENGTH)
        if action_id not in c.action_index:
            raise InputError("action_id", f"unknown action {action_id!r}")
        ch = channel_code(c, channel)
        a = c.action_index[action_id]
        if c.offered[a, ch] == 0:
            raise InputError("action_id", f"action {action_id!r} is not offered on "
                                          f"{channel}")
        try:
            if isinstance(outcome, bool):  # Outcome(True) would be an impression
                raise ValueError(outcome)
            code = Outcome[outcome.upper()] if isinstance(outcome, str) else Outcome(outcome)
        except (KeyError, ValueError, TypeError):
            raise InputError("outcome", f"unknown outcome {outcome!r} (outcomes: "
                                        f"{', '.join(o.name.lower() for o in Outcome)})"
                             ) from None
        if len(rest) > 1:
            raise ValueError(f"an outcome is 6 or 7 fields, got {6 + len(rest)}")
        value = rest[0] if rest else None
        if value is not None:
            if code != Outcome.CONVERT:
                raise InputError("value", f"only a convert carries a value, not "
                                          f"{code.name.lower()}")
            value = self._encode_value("value", CONVERSION_VALUE, value, None)
        return (customer_id, a, ch, code, _encode_time("time", when), decision_id,
                math.nan if value is None else value)

    def record_encoded(self, encoded: Sequence[tuple], labels: TaughtLabels | None = None
                       ) -> list[Learned]:
        """record_outcomes for outcomes `encode_outcome` checked, in one kernel call. They
        must have been encoded under the current `compiled`: they hold its action and channel
        indexes, so one kept across a catalog switch would teach another action's model.

        Outcomes of one decision in one call: the first that would teach a label counts it
        taught, refused or not (a refusal is known after the kernel call), so the others answer
        REPEATED; a caller that wants a refused label left to a later outcome (as one at a
        time) records that one in a call of its own."""
        c = self.compiled
        if not encoded:
            return []
        rows = self.activate(e[0] for e in encoded)
        x = np.empty((len(encoded), c.n_predictors))
        teach = np.full(len(encoded), Teach.ALL, np.int8)
        missing, learned = [], []
        marked: dict[int, tuple[Remembered, int, int]] = {}  # taken back if refused
        values = np.empty(len(encoded))
        bounded: dict[int, bool | None] = {}  # clipped, unbounded or neither (_bounded_value)
        # (customer, decision, action, positive) of the labels `labels` is to be told of
        durable: dict[int, tuple[str, str, str, bool]] = {}
        claimed: set[tuple[str, str, str, bool]] = set()  # and those of earlier outcomes here
        for i, e in enumerate(encoded):
            memo = self._remembered.get(e[5]) if e[5] else None
            kept = memo is not None and memo.customer_id == e[0]
            values[i] = e[6]
            if not math.isnan(e[6]):
                values[i], bounded[i] = self._bounded_value(memo if kept else None, e[1], e[6])
            if kept:
                x[i] = memo.predictors
                if e[3] != Outcome.IMPRESSION:
                    teach[i], bits = _still_to_teach(memo, e[1], e[3], values[i])
                    marked[i] = memo, e[1], bits
            else:
                missing.append(i)
            if labels is not None and e[5] and e[3] != _IMPRESSION:
                label = (e[0], e[5], c.action_ids[e[1]], e[3] in _POSITIVE)
                # a kept decision's memo knows what it taught (what `labels` knows of it came
                # from outcomes the memo saw): only one the memo let go is looked up
                if not kept and (label in claimed or labels.taught(*label)):
                    teach[i] &= ~_LABEL
                elif teach[i] & _LABEL:
                    durable[i] = label
                    claimed.add(label)
            learned.append(Learned.NOTHING if e[3] == Outcome.IMPRESSION else
                           Learned.REPEATED if e[5] and not teach[i] & Teach.LABEL else
                           Learned.DECISION if kept else
                           Learned.PROFILE_DECISION_FORGOTTEN if e[5] else
                           Learned.PROFILE_NO_DECISION)
        if missing:
            ctx = np.full((len(missing), max(c.context_width, 1)), math.nan)
            now = np.array([encoded[i][4] for i in missing])
            self.k.predictors(self.catalog_view, self.state_view, self.model_view,
                              rows[missing], ctx, now,
                              x_missing := np.empty((len(missing), c.n_predictors)))
            x[missing] = x_missing
        refused_at = np.empty(len(encoded), np.int8)
        self.models.refused += self.k.record_outcomes(
            self.catalog_view, self.state_view, self.model_view, rows,
            np.array([e[1] for e in encoded], np.int32),
            np.array([e[2] for e in encoded], np.int32), np.array([e[3] for e in encoded], np.int8),
            np.array([e[4] for e in encoded], np.float64), x, values, teach, refused_at)
        for i in np.flatnonzero(refused_at).tolist():
            if i in marked:  # nothing was taught: a later outcome of the decision may teach
                memo, action, bits = marked[i]
                memo.taught[action] &= ~bits
            durable.pop(i, None)
        for label in durable.values():
            labels.teach(*label)
        # counted where the value would have taught: not a repeat of a convert, not refused
        for i, clipped in bounded.items():
            if clipped is None or refused_at[i]:
                continue
            if clipped and teach[i] & Teach.VALUE:
                self.values_clipped += 1
            elif not clipped and learned[i] != Learned.REPEATED:
                self.values_unbounded += 1
        return [Learned.REFUSED if refused else kind
                for kind, refused in zip(learned, refused_at.tolist())]

    def _bounded_value(self, memo: Remembered | None, action: int, value: float
                       ) -> tuple[float, bool | None]:
        """A convert's value as the model may learn it: at most value_max_ratio times the
        catalog's value for the action when the remembered decision showed it; NaN (no value
        learned) without such a decision, or where that value was not above 0. The learned
        value is shared by every customer of the model, so one convert reporting 1e12 would
        set it for all; and the bound is the decision's, not one of the profile at the
        outcome, which the client writes (one page_view with a price of 1e12 lifted a rule on
        last_view_price) and which lacks the decision's context (a basket's value). Clipped,
        not refused: the client cannot see the bound, and the label still teaches. With it,
        whether the value was clipped (True), left unbounded (False) or neither (None)."""
        shown = memo.actions.index(action) if memo is not None and action in memo.actions \
            else -1
        bound = self.compiled.value_max_ratio * memo.values[shown] if shown >= 0 else math.nan
        if not bound > 0.0:
            return math.nan, False
        if value > bound:
            return bound, True
        return value, None

    def use_models(self, models: ModelTable) -> None:
        """Decide and learn with this table from now on (after a catalog switch)."""
        self.models = models
        self._bind_models()

    def adopt_models(self, published: Any) -> None:
        """Take up a model version a learner published (see ModelTable.adopt)."""
        self.models.adopt(published)
        self._bind_models()

    def adopt_prepared(self, whole: Adopting) -> bool:
        """Take up a whole table prepared off the event loop, unless the models moved on
        meanwhile (see ModelTable.adopt_prepared); whether it was."""
        if not self.models.adopt_prepared(whole):
            return False
        self._bind_models()
        return True

    # -- the string table --------------------------------------------------------------------

    def compact_strings(self) -> int:
        """Free the codes of the strings no resident profile holds (StringTable.compact), for
        new strings to take; how many. A code in use keeps its string, so no row is written.
        Only between rounds: an encoded event or request holds codes of the table as it is
        (a request's context, an event's fields), whose strings no row may hold yet; nothing
        else outside the profile rows holds one across rounds (the decision memo's inputs
        are numbers and 0/1 indicators, a decision, its log record and its pushes hold ids
        and text, a passivated or moved customer's block carries its strings as text, a free
        row holds the catalog's defaults). The gather, the pass's largest allocation, runs
        inside StringTable.compact, once its back-off is set: one that runs out of memory is
        not tried again every round."""
        t = self.table  # every row ever taken: a free one holds the catalog's defaults
        return self.compiled.strings.compact(lambda: t.values[:t.used, self._string_slots])

    def distinct_strings(self, top: int = 3) -> list[tuple[str, int]]:
        """The string slots whose values differ the most across the resident profiles, and
        how many values each holds (the most first): where a flood of free text comes in."""
        t, names = self.table, self.compiled.layout.names
        counted = []
        for slot in self._string_slots.tolist():
            column = t.values[:t.used, slot]
            counted.append((names[slot], len(np.unique(column[column == column]))))
        return sorted(counted, key=lambda c: -c[1])[:top]

    # -- reading a profile -------------------------------------------------------------------

    def profile(self, customer_id: str, now: float | None = None) -> dict[str, Any]:
        """The golden record as a person reads it: attributes, features, recent history."""
        if customer_id not in self.table:
            raise KeyError(customer_id)
        c = self.compiled
        now = time.time() if now is None else now
        view = profile_view(c, self.table.values[self.table.index[customer_id]], now)
        attrs = {a.name: self._decode(view[c.layout.slot[a.name]], a.type)
                 for a in c.catalog.attributes}
        feats = {f.name: self._decode(view[c.layout.slot[f.name]], f.type)
                 for f in c.catalog.features}
        return {"customer_id": customer_id, "attributes": attrs, "features": feats,
                "history": self.history(customer_id),
                "model_inputs": sorted({p.name for p in c.catalog.models.predictors
                                        if p.source == "profile"})}

    def history(self, customer_id: str) -> list[dict[str, Any]]:
        """Interactions in the ring, newest first."""
        t, c = self.table, self.compiled
        row = t.index[customer_id]
        size = c.history_size
        out = []
        for k in range(size):
            e = (int(t.ring_head[row]) - 1 - k) % size
            a = int(t.ring_action[row, e])
            if a == EMPTY:
                break
            out.append({"action_id": c.action_ids[a],
                        "channel": c.channel_names[int(t.ring_channel[row, e])],
                        "outcome": Outcome(int(t.ring_outcome[row, e])).name.lower(),
                        "time": float(t.ring_time[row, e]) + HISTORY_EPOCH_S})
        return out

    def _decode(self, value: float, vtype: str) -> Any:
        if value != value:
            return None
        if vtype == "string":
            return self.compiled.strings.text(value)
        if vtype == "bool":
            return bool(value)
        if vtype == "int":
            return int(value)
        return float(value)


# per kernel reason code: whether the action passed the decision's rules and contact policies
# (shown, or dropped only after: an invalid value, restraint, a group limit, top-k)
_PASSED = np.array([r == Reason.SELECTED or r >= Reason.INVALID_VALUE for r in Reason], bool)


def _unread(text: str) -> float:
    return math.nan


class _RequestCodes:
    """Codes for one request's context strings, adding none to the shared table (free text
    such as a store id would grow it without bound). A string the table lacks equals no
    catalog literal and no profile value, so it gets a code of its own below zero, the same
    for the same string: rules compare it exactly as they would an interned one."""

    def __init__(self, strings: StringTable):
        self._strings = strings
        self._own: dict[str, float] = {}

    def code(self, text: str) -> float:
        known = self._strings.codes.get(text)
        if known is not None:
            return float(known)
        return self._own.setdefault(text, -1.0 - len(self._own))


def _fields_read(compiled: CompiledCatalog) -> set[tuple[str, str]]:
    """(event type, field) pairs that some feature, filter or attribute reads."""
    read = set()
    for f in compiled.catalog.features:
        read.update((f.event, name) for name in (f.field, f.when_field) if name)
    for a in compiled.catalog.attributes:
        if a.from_event:
            read.add((a.from_event, a.from_field))
    return read


def _encode_time(where: str, value: Any) -> float:
    if isinstance(value, str):
        parsed = parse_timestamp(value)
        if parsed is None:
            raise InputError(where, f"expected epoch seconds or an ISO-8601 timestamp with a "
                                    f"zone, got {quoted(value)}")
        if not 0.0 <= parsed < LATEST_TIME_S:
            raise InputError(where, f"timestamp {quoted(value)} is outside {TIME_RANGE}")
        return parsed
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(where, f"expected a timestamp, got {shown(value)}")
    seconds = _finite(where, value, "timestamp")
    if not 0.0 <= seconds < LATEST_TIME_S:
        raise InputError(where, f"timestamp {value!r} is outside {TIME_RANGE} (epoch "
                                f"seconds)")
    return seconds


def _finite(where: str, value: int | float, what: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise InputError(where, f"must be a finite {what}, got an integer of "
                                f"{len(str(abs(value)))} digits") from None
    if not math.isfinite(number):
        raise InputError(where, f"must be a finite {what}, got {value!r}")
    return number


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _still_to_teach(memo: Remembered, action: int, outcome: int, value: float
                    ) -> tuple[int, int]:
    """What an outcome of a remembered decision may still teach its action (Teach's bits) and
    the _TAUGHT_ bits it takes for that, set in the memo: one positive and one negative label
    at most (an accept then a convert is one example; an ignore then an accept is both, as
    nothing can take the ignore back), and one conversion value."""
    taught = memo.taught if memo.taught is not None else {}
    memo.taught = taught
    before = taught.get(action, 0)
    label = _TAUGHT_POSITIVE if outcome in (Outcome.ACCEPT, Outcome.CONVERT) else \
        _TAUGHT_NEGATIVE
    bits = label & ~before
    if outcome == Outcome.CONVERT and math.isfinite(value):
        bits |= _TAUGHT_VALUE & ~before
    taught[action] = before | bits
    return ((Teach.LABEL if bits & label else 0) |
            (Teach.VALUE if bits & _TAUGHT_VALUE else 0)), bits
