"""Compile a validated Catalog into the flat arrays the scoring kernels run on.

The profile layout: one float64 row per resident customer. Slot 0 is the customer's clock (the
latest event time the decayed features are expressed at); then one slot per attribute and per
feature, and a second slot holding the event time of the value for `last` features and for
attributes set `from` an event: events arrive late, and the newest by event time must win, not
the last applied (a helper slot holding NaN, as in a row from before it existed, is older than
any event). Rules and predictors address the *view* of a row at decision time, which has the
same slots with decayed features decayed to `now` and `time_since` features turned into
seconds.

A catalog's text fixes its version, so `compiled_from_text` compiles each text once per process
and hands every caller the same read-only arrays.
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np

from . import rules
from .catalog import (MAX_NUMBER, Action, Catalog, Feature, Rule, default_catalog_text,
                      load_catalog)
from .errors import CatalogError, RuleError
from .strings import StringTable

log = logging.getLogger("kairos.catalog")
CLOCK_SLOT = 0
COMPILED_CACHE_SIZE = 8  # catalog texts kept compiled; a switch holds two versions at once
FACTOR_PROPENSITY, FACTOR_WEIGHT, FACTOR_VALUE, FACTOR_PRIORITY = range(4)
N_FACTORS = 4
# Model inputs are clipped to +-this. A predictor is a scaled signal, of order one by design;
# past a hundred it only lets one extreme customer swamp a model's precision (x*x per outcome).
PREDICTOR_LIMIT = 100.0


class Update(IntEnum):
    """How an event changes a profile slot; mirrored in _kernel.pyx."""

    COUNT = 1
    SUM = 2
    DECAYED_COUNT = 3
    DECAYED_SUM = 4
    LAST = 5
    TIME_SINCE = 6
    MIN = 7
    MAX = 8


class View(IntEnum):
    """How a stored slot is seen at decision time."""

    COPY = 0
    DECAYED = 1
    SINCE = 2


class Transform(IntEnum):
    IDENTITY = 0
    LOG1P = 1
    SCALE = 2
    RECENCY = 3
    EQUALS = 4
    STANDARDIZE = 5


class Exploration(IntEnum):
    NONE = 0
    THOMPSON = 1
    UCB = 2


class Outcome(IntEnum):
    """What a channel reports about a decision; the history ring stores these codes."""

    IMPRESSION = 1
    ACCEPT = 2
    REJECT = 3
    IGNORE = 4
    CONVERT = 5


class Teach(IntFlag):
    """What an outcome may still teach the model of its decision's action (record_outcomes):
    a decision's shown action is one example, however many outcomes report on it."""

    LABEL = 1  # the model's update, and the positives or negatives count
    VALUE = 2  # a conversion's value
    ALL = LABEL | VALUE


class Reason(IntEnum):
    """Why an action won or was dropped; the kernels write these codes per action."""

    SELECTED = 0
    NOT_IN_CHANNEL = 1
    OUTSIDE_VALIDITY = 2
    NO_CONSENT = 3
    ELIGIBILITY = 4
    APPLICABILITY = 5
    SUITABILITY = 6
    IMPRESSION_CAP = 7
    REJECT_SUPPRESSION = 8
    ACCEPT_COOLDOWN = 9
    INVALID_VALUE = 10
    RESTRAINT = 11
    GROUP_LIMIT = 12
    TOP_K = 13


STAGES = ("eligibility", "applicability", "suitability", "value")
STAGE_ELIGIBILITY, STAGE_APPLICABILITY, STAGE_SUITABILITY, STAGE_VALUE = range(4)


@dataclass
class Layout:
    names: list[str]  # per slot: the attribute or feature it belongs to ("" for helpers)
    slot: dict[str, int]  # attribute or feature name -> its primary slot
    types: dict[str, str]
    vocabularies: dict[str, tuple[str, ...] | None]
    defaults: np.ndarray
    view_kind: np.ndarray
    view_inv_half_life: np.ndarray

    @property
    def size(self) -> int:
        return len(self.names)


class CompiledCatalog:
    """A catalog as arrays. Attribute names are what the kernels' CatalogView reads.

    Nothing changes after compilation but the string table, which grows with the strings events
    bring: the arrays are read-only, and `with_own_strings` shares them with a new user.
    """

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.version = catalog.version
        self.strings = StringTable()
        self.channel_names = [c.name for c in catalog.channels]
        self.channel_index = {n: i for i, n in enumerate(self.channel_names)}
        self.group_names = list(catalog.groups)
        self.group_index = {n: i for i, n in enumerate(self.group_names)}
        self.action_ids = [a.id for a in catalog.actions]
        self.action_index = {n: i for i, n in enumerate(self.action_ids)}
        self.event_names = [e.name for e in catalog.events]
        self.event_index = {n: i for i, n in enumerate(self.event_names)}
        self.event_fields = {e.name: {f.name: i for i, f in enumerate(e.fields)}
                             for e in catalog.events}
        self.n_fields = max([len(e.fields) for e in catalog.events] + [1])
        self.context_names = [c.name for c in catalog.context]
        self.context_index = {n: i for i, n in enumerate(self.context_names)}
        # where each context key's value lands in a request's context array: one slot per
        # key, a vector's `size` in a row
        self.context_slot = dict(zip(self.context_names, itertools.accumulate(
            (c.size for c in catalog.context), initial=0)))
        self.context_width = sum(c.size for c in catalog.context)
        self.history_size = catalog.history_size
        self._intern_declared_vocabularies()
        self.layout = self._layout()
        self._compile_updates()
        self._compile_channels()
        self._compile_actions()
        self._compile_arbitration()
        self._compile_models()
        self._compile_timers()
        self._compile_senders()
        self.fallbacks = {self.channel_index[c]: [self.action_index[a] for a in ids]
                          for c, ids in catalog.fallbacks.items()}
        for value in (*vars(self).values(), *vars(self.layout).values()):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    def with_own_strings(self) -> "CompiledCatalog":
        """This compiled catalog with a string table of its own: one engine's free text must
        neither reach another's table nor race with it."""
        twin = copy.copy(self)
        twin.strings = self.strings.copy()
        return twin

    def _compile_timers(self) -> None:
        """Timer k: armed by the events in timers_started_by, disarmed by timers_cancelled_by,
        fires event timer_fire[k] timer_after_s[k] seconds after it was armed."""
        timers = self.catalog.timers
        self.timer_names = [t.name for t in timers]
        self.timer_after_s = [t.after_s for t in timers]
        self.timer_fire = [self.event_index[t.fire] for t in timers]
        self.timers_started_by: dict[int, list[int]] = {}
        self.timers_cancelled_by: dict[int, list[int]] = {}
        for k, t in enumerate(timers):
            for name in t.start:
                self.timers_started_by.setdefault(self.event_index[name], []).append(k)
            for name in t.cancel:
                self.timers_cancelled_by.setdefault(self.event_index[name], []).append(k)

    def _compile_senders(self) -> None:
        """Who may send an event of type e, as the gateways check it before routing one:
        event_sent[e], no caller when a timer fires the type (unless the catalog says
        `also_sent`); event_channels[e][ch], a caller naming channel ch (the type's
        `channels`; every channel by default). Tuples, not arrays: a gateway reads one of each
        an event, 24 ns for both, where numpy's index tuple and scalars took 100."""
        fired = {t.fire for t in self.catalog.timers}
        events = self.catalog.events
        self.event_sent = tuple(e.also_sent or e.name not in fired for e in events)
        self.event_channels = tuple(
            tuple(e.channels is None or c in e.channels for c in self.channel_names)
            for e in events)

    # -- strings and layout ------------------------------------------------------------------

    def _intern_declared_vocabularies(self) -> None:
        cat = self.catalog
        specs = [f for e in cat.events for f in e.fields] + list(cat.attributes) + \
            list(cat.context)
        for spec in specs:
            for value in spec.values or ():
                self.strings.intern(value)

    def encode_scalar(self, value: Any, vtype: str) -> float:
        """A typed catalog value (default, 'when', 'equals') as a float64 slot value."""
        if value is None:
            return math.nan
        if vtype == "string":
            return float(self.strings.intern(value))
        return float(value)

    def _layout(self) -> Layout:
        cat = self.catalog
        names, types, vocab, defaults, kinds, inv_hl = ["<clock>"], {}, {}, [math.nan], \
            [View.COPY], [0.0]
        slot: dict[str, int] = {}

        def add(name: str, vtype: str, values, default: float, kind: View = View.COPY,
                half_life_s: float = 0.0) -> None:
            slot[name] = len(names)
            names.append(name)
            types[name], vocab[name] = vtype, values
            defaults.append(default)
            kinds.append(kind)
            inv_hl.append(1.0 / half_life_s if half_life_s else 0.0)

        def add_time() -> None:
            """The helper slot after a value: its event's time, to keep the newest on late
            events."""
            names.append("")
            defaults.append(math.nan)
            kinds.append(View.COPY)
            inv_hl.append(0.0)

        for attr in cat.attributes:
            add(attr.name, attr.type, attr.values, self.encode_scalar(attr.default, attr.type))
            if attr.from_event is not None:
                add_time()
        for feat in cat.features:
            starts_at_zero = feat.kind in ("count", "sum", "decayed_count", "decayed_sum")
            kind = {"decayed_count": View.DECAYED, "decayed_sum": View.DECAYED,
                    "time_since": View.SINCE}.get(feat.kind, View.COPY)
            add(feat.name, feat.type, feat.values, 0.0 if starts_at_zero else math.nan, kind,
                feat.half_life_s)
            if feat.kind == "last":
                add_time()
        return Layout(names, slot, types, vocab, np.array(defaults, np.float64),
                      np.array(kinds, np.int8), np.array(inv_hl, np.float64))

    # -- events ------------------------------------------------------------------------------

    def _compile_updates(self) -> None:
        cat = self.catalog
        ops: list[list[tuple]] = [[] for _ in cat.events]
        when_values: list[float] = []
        for feat in cat.features:
            ops[self.event_index[feat.event]].append(self._update_op(feat, when_values))
        for attr in cat.attributes:
            if attr.from_event is not None:  # a `last` of its field: the newest event's value
                field = self.event_fields[attr.from_event][attr.from_field]
                ops[self.event_index[attr.from_event]].append(
                    (Update.LAST, self.layout.slot[attr.name], field, 0.0, -1, 0, 0))
        flat = [op for per_event in ops for op in per_event]
        self.update_start = np.cumsum([0] + [len(o) for o in ops]).astype(np.int32)
        columns = list(zip(*flat)) if flat else [()] * 7
        self.update_kind = np.array(columns[0], np.int32)
        self.update_slot = np.array(columns[1], np.int32)
        self.update_field = np.array(columns[2], np.int32)
        self.update_inv_half_life = np.array(columns[3], np.float64)
        self.update_when_field = np.array(columns[4], np.int32)
        self.update_when_start = np.array(columns[5], np.int32)
        self.update_when_end = np.array(columns[6], np.int32)
        self.when_values = np.array(when_values, np.float64)
        decayed = [i for i, k in enumerate(self.layout.view_kind) if k == View.DECAYED]
        self.decayed_slots = np.array(decayed, np.int32)
        self.decayed_inv_half_life = self.layout.view_inv_half_life[decayed].copy()

    def _update_op(self, feat: Feature, when_values: list[float]) -> tuple:
        fields = self.event_fields[feat.event]
        kind = Update[feat.kind.upper()]
        field = fields[feat.field] if feat.field else -1
        inv_hl = 1.0 / feat.half_life_s if feat.half_life_s else 0.0
        when_field, start = -1, len(when_values)
        if feat.when_field is not None:
            when_field = fields[feat.when_field]
            ftype = self.catalog.event(feat.event).field(feat.when_field).type
            when_values.extend(self.encode_scalar(v, ftype) for v in feat.when_values)
        return kind, self.layout.slot[feat.name], field, inv_hl, when_field, start, \
            len(when_values)

    # -- channels and consent ----------------------------------------------------------------

    def _compile_channels(self) -> None:
        cat = self.catalog
        self.placement_names = [[p.name for p in c.placements] for c in cat.channels]
        self.placement_index = [{n: i for i, n in enumerate(p)} for p in self.placement_names]
        max_p = max(len(p) for p in self.placement_names)
        self.placement_top_k = np.zeros((len(cat.channels), max_p), np.int32)
        for c, ch in enumerate(cat.channels):
            for p, placement in enumerate(ch.placements):
                self.placement_top_k[c, p] = placement.top_k
        self.max_top_k = int(self.placement_top_k.max())
        self.control_share = np.array([c.control for c in cat.channels], np.float64)
        self.purpose_names = list(cat.consent)
        self.purpose_slot = np.array([self.layout.slot[a] if a else -1
                                      for a in cat.consent.values()], np.int32)
        self.channel_consent_slot = np.full((len(cat.channels), len(self.purpose_names)), -1,
                                            np.int32)
        for c, ch in enumerate(cat.channels):
            for purpose, attr in ch.consent.items():
                self.channel_consent_slot[c, self.purpose_names.index(purpose)] = \
                    self.layout.slot[attr]

    # -- actions and rules -------------------------------------------------------------------

    def _compile_actions(self) -> None:
        cat = self.catalog
        n, n_channels = len(cat.actions), len(cat.channels)
        self.action_attribute_names = sorted({k for a in cat.actions for k in a.attributes})
        attr_index = {k: i for i, k in enumerate(self.action_attribute_names)}
        self.action_attribute_types = self._action_attribute_types()
        self.action_attributes = np.full((n, max(len(attr_index), 1)), np.nan)
        self.offered = np.zeros((n, n_channels), np.int64)
        self.treatments: list[dict[int, str]] = []
        # what an agent's screen shows for a winning action, by (action id, channel): only the
        # gateway reads it, as it turns decisions into the contract's messages
        self.agent_texts: dict[tuple[str, str], str] = {}
        self.action_group = np.zeros(n, np.int32)
        self.action_purpose = np.zeros(n, np.int32)
        self.valid_from = np.zeros(n)
        self.valid_until = np.zeros(n)
        self.lever = np.zeros(n)
        self.max_impressions = np.zeros(n, np.int32)
        self.impression_window = np.zeros(n)
        self.reject_count = np.zeros(n, np.int32)
        self.reject_within = np.zeros(n)
        self.reject_suppress = np.zeros(n)
        self.accept_cooldown = np.zeros(n)
        self.program = rules.Program()
        self.rule_range = np.zeros((n, len(STAGES), 2), np.int32)
        self.rule_ast: list[list[rules.Node | None]] = []
        rule_cost = _RuleCost()
        for a, action in enumerate(cat.actions):
            for key, value in action.attributes.items():
                self.action_attributes[a, attr_index[key]] = self._action_attribute_value(value)
            treatments = {}
            for offer in action.offers:
                c = self.channel_index[offer.channel]
                names = offer.placements or self.placement_names[c]
                self.offered[a, c] = sum(1 << self.placement_index[c][p] for p in names)
                treatments[c] = offer.treatment
                if offer.agent_text:
                    self.agent_texts[action.id, offer.channel] = offer.agent_text
            self.treatments.append(treatments)
            self.action_group[a] = self.group_index[action.group]
            self.action_purpose[a] = self.purpose_names.index(action.purpose)
            self.valid_from[a], self.valid_until[a] = action.valid_from, action.valid_until
            self.lever[a] = action.lever
            policy = action.contact_policy
            self.max_impressions[a] = policy.max_impressions
            self.impression_window[a] = policy.impression_window_s
            self.reject_count[a] = policy.reject_count
            self.reject_within[a] = policy.reject_within_s
            self.reject_suppress[a] = policy.reject_suppress_s
            self.accept_cooldown[a] = policy.accept_cooldown_s
            self.rule_ast.append(self._compile_action_rules(a, action, rule_cost))
        self.code = np.array(self.program.code, np.int32)
        self.consts = np.array(self.program.consts or [0.0], np.float64)
        self.sets = np.array(self.program.sets or [0.0], np.float64)
        self.set_ranges = np.array(self.program.set_ranges or [(0, 0)], np.int32).reshape(-1, 2)

    def _action_attribute_types(self) -> dict[str, str]:
        types: dict[str, str] = {}
        for action in self.catalog.actions:
            for key, value in action.attributes.items():
                vtype = rules.BOOL if isinstance(value, bool) else \
                    rules.STR if isinstance(value, str) else rules.NUM
                if types.setdefault(key, vtype) != vtype:
                    raise self._error(action.path + ("attributes", key),
                                      f"action attribute '{key}' is {vtype} here but "
                                      f"{types[key]} in another action", action)
        return types

    def _action_attribute_value(self, value: Any) -> float:
        return float(self.strings.intern(value)) if isinstance(value, str) else float(value)

    def _compile_action_rules(self, a: int, action: Action,
                              cost: _RuleCost) -> list[rules.Node | None]:
        asts: list[rules.Node | None] = []
        for s, stage in enumerate(STAGES):
            rule = action.value if stage == "value" else getattr(action, stage)
            if isinstance(rule, float):  # a constant value
                node: rules.Node | None = rules.Const(1, rule, rules.NUM)
            elif rule is None:
                node = None
            else:
                node = self._parse(rule, rules.NUM if stage == "value" else rules.BOOL, action,
                                   cost)
            if node is not None:
                self.rule_range[a, s] = self._add_program(node, rule, action)
            asts.append(node)
        return asts

    def _parse(self, rule: Rule, want: str, action: Action, cost: _RuleCost) -> rules.Node:
        """The rule's tree, parsed on its text's first use in this compile (actions that share
        a text, through a YAML alias say, share its tree) and counted against the catalog's
        bounds on every use."""
        parsed = cost.parsed.get((rule.text, want))
        if parsed is None:
            try:
                node = rules.parse(rule.text, self.resolve, self.strings.intern, want)
            except RuleError as exc:
                raise self._error(rule.path, exc.reason, action, exc.column) from None
            parsed = cost.parsed[rule.text, want] = (node, *rules.size(node))
        node, nodes, items = parsed
        cost.nodes += nodes
        cost.items += items
        for used, limit, what in ((cost.nodes, rules.MAX_CATALOG_RULE_NODES, "syntax-tree nodes"),
                                  (cost.items, rules.MAX_CATALOG_LIST_ITEMS, "list items")):
            if used > limit:
                raise self._error(rule.path, f"the catalog's rules hold more than {limit:,} "
                                             f"{what} in all, counting a rule once for each "
                                             f"action that uses it", action)
        return node

    def _add_program(self, node: rules.Node, rule: Rule | float, action: Action) -> tuple:
        try:
            return self.program.add(node, self.strings.intern)
        except RuleError as exc:
            path = rule.path if isinstance(rule, Rule) else action.path
            raise self._error(path, exc.reason, action, exc.column) from None

    def _error(self, path: tuple, reason: str, action: Action | None,
               column: int = 0) -> CatalogError:
        return self.catalog.source.error(path, reason, action_id=action.id if action else None,
                                         column_in_value=column)

    def resolve(self, name: str) -> rules.Ref | None:
        """What a name in a rule means: profile slot, context key, action attribute or now."""
        if name == "now":
            return rules.Ref("now", 0, rules.TIME, name=name)
        if name.startswith("context."):
            key = name[len("context."):]
            if key not in self.context_index:
                return None
            spec = self.catalog.context[self.context_index[key]]
            if spec.type == "vector":
                raise rules.Unusable(f"{name} is a vector: only predictors read it")
            return rules.Ref("context", self.context_slot[key], _rule_type(spec.type),
                             spec.values, name)
        if name.startswith("action."):
            key = name[len("action."):]
            if key not in self.action_attribute_types:
                return None
            return rules.Ref("action", self.action_attribute_names.index(key),
                             self.action_attribute_types[key], None, name)
        if name in self.layout.slot:
            return rules.Ref("profile", self.layout.slot[name],
                             _rule_type(self.layout.types[name]), self.layout.vocabularies[name],
                             name)
        return None

    # -- arbitration, exploration, models ----------------------------------------------------

    def _compile_arbitration(self) -> None:
        arb = self.catalog.arbitration
        self.restraint_threshold = arb.restraint_threshold
        multi = [(not arb.one_per_group) or g in arb.allow_multiple for g in self.group_names]
        self.group_multiple = np.array(multi, np.uint8)
        weights = arb.context_weights
        self.weight_channel = np.array([self.channel_index[w.channel] if w.channel else -1
                                        for w in weights], np.int32)
        self.weight_group = np.array([self.group_index[w.group] if w.group else -1
                                      for w in weights], np.int32)
        self.weight_value = np.array([w.weight for w in weights], np.float64)
        keys, values, starts = [], [], [0]
        for w in weights:
            for key, value in w.when.items():
                keys.append(self.context_slot[key])
                ctype = self.catalog.context[self.context_index[key]].type
                values.append(self.encode_scalar(value, ctype))
            starts.append(len(keys))
        self.weight_cond_start = np.array(starts, np.int32)
        self.weight_cond_key = np.array(keys, np.int32)
        self.weight_cond_value = np.array(values, np.float64)
        exp = arb.exploration
        self.exploration = Exploration[exp.method.upper()]
        self.optimistic = exp.optimistic
        self.ucb_alpha = exp.ucb_alpha
        self.trial_rate = exp.trial_rate if self.exploration != Exploration.NONE else 0.0
        self.selection_samples = exp.selection_samples
        self.explore_scale = np.array([exp.group_variance_scale.get(a.group, exp.variance_scale)
                                       for a in self.catalog.actions], np.float64)

    def _compile_models(self) -> None:
        models = self.catalog.models
        preds, slots, names = [], [], ["bias"]  # one input per predictor, per vector element
        read: set[str] = set()
        for p in models.predictors:
            # an input read twice (as is and as its log, say) is told apart by its transform,
            # the first reader keeping the plain name: a switch that adds a reader of an input
            # keeps the first's weight, since models are carried across by these names
            key = f"{p.key}:{p.transform}:{p.scale:g}" if p.key in read else p.key
            read.add(p.key)
            if p.source == "context":
                spec = self.catalog.context[self.context_index[p.name]]
                first, size = self.context_slot[p.name], spec.size
                vector = spec.type == "vector"
            else:
                first, size, vector = self.layout.slot[p.name], 1, False
            preds += [p] * size
            slots += range(first, first + size)
            names += [f"{key}[{i}]" for i in range(size)] if vector else [key]
        self.predictor_names = names
        self.n_predictors = len(self.predictor_names)
        self.full_posterior = models.full
        # a value rule's result past it is invalid, as a non-finite one is: priorities stay
        # finite however the catalog's numbers combine. A catalog saved before the bound
        # (one with refusals) keeps what it had, only a non-finite value invalid: its value
        # past 1e12, a constant too, would otherwise drop its action from every decision
        self.value_limit = sys.float_info.max if self.catalog.refusals else MAX_NUMBER
        self.value_prior_weight = models.value.prior_weight if models.value.learn else -1.0
        self.value_max_ratio = models.value.max_ratio
        self.predictor_source = np.array([int(p.source == "context") for p in preds], np.int8)
        self.predictor_index = np.array(slots, np.int32)
        self.predictor_transform = np.array([Transform[p.transform.upper()] for p in preds],
                                            np.int8)
        params = []
        for p in preds:
            if p.transform == "equals":
                vtype = self.catalog.context[self.context_index[p.name]].type \
                    if p.source == "context" else self.layout.types[p.name]
                params.append(self.encode_scalar(p.equals, vtype))
            else:
                params.append(p.scale)
        self.predictor_param = np.array(params, np.float64)
        # a standardised input whose field declares both bounds joins its statistics unclipped:
        # the gateway refuses values outside them, which bounds what one value can do, and the
        # clip would narrow a sparse input (a flag set in under 10% of decisions) to nothing
        self.predictor_clip = np.array([int(not self._declares_bounds(p)) for p in preds],
                                       np.uint8)
        self.predictor_limit = PREDICTOR_LIMIT
        n = len(self.action_ids)
        self.prior_mean = np.zeros((n, self.n_predictors))
        self.prior_precision = np.zeros((n, self.n_predictors))
        for a, action in enumerate(self.catalog.actions):
            prior = models.group_priors.get(action.group, models.prior)
            self.prior_mean[a, 0] = math.log(prior.base_rate / (1.0 - prior.base_rate))
            self.prior_precision[a, 0] = prior.precision
            self.prior_precision[a, 1:] = prior.predictor_precision

    def _declares_bounds(self, p) -> bool:
        """Whether predictor p reads a context field declaring both a min and a max."""
        if p.source != "context":
            return False
        spec = self.catalog.context[self.context_index[p.name]]
        return -MAX_NUMBER < spec.minimum and spec.maximum < MAX_NUMBER

    @property
    def n_models(self) -> int:
        return len(self.action_ids) * len(self.channel_names)

    def model_index(self, action: int, channel: int) -> int:
        return action * len(self.channel_names) + channel


@dataclass
class _RuleCost:
    """What one compile's rules have used so far: trees by (text, type), nodes, list items."""

    parsed: dict[tuple[str, str], tuple[rules.Node, int, int]] = field(default_factory=dict)
    nodes: int = 0
    items: int = 0


def _rule_type(field_type: str) -> str:
    return {"string": rules.STR, "bool": rules.BOOL, "timestamp": rules.TIME}.get(field_type,
                                                                                rules.NUM)


def compile_catalog(catalog: Catalog) -> CompiledCatalog:
    """Compile; raises CatalogError with file, line:column, path and action id on bad rules."""
    return CompiledCatalog(catalog)


_compiled: OrderedDict[str, CompiledCatalog] = OrderedDict()  # by text, least recent first
_compiled_lock = threading.Lock()  # callers compile on executor threads too
# the texts whose refusals were logged as running (a strict compile logs nothing: it refuses)
_refusals_said: OrderedDict[str, bool] = OrderedDict()


def compiled_from_text(text: str, source: str = "<catalog>", strict: bool = False,
                       quiet: bool = False) -> CompiledCatalog:
    """The catalog written in `text`, loaded and compiled once per process however many roles
    ask (the last COMPILED_CACHE_SIZE texts are kept). Each caller gets its own string table
    over the shared arrays. A bad catalog raises CatalogError naming `source`, every time;
    `strict` as load_catalog's (a catalog coming in new: PutCatalog, ValidateCatalog); a
    caller that only checks the text (`quiet`) does not log its refusals as running."""
    with _compiled_lock:
        compiled = _compiled.get(text)
        if compiled is not None:
            _compiled.move_to_end(text)
    if compiled is None:
        compiled = compile_catalog(load_catalog(text, source, strict=False))
        with _compiled_lock:
            _compiled[text] = compiled
            while len(_compiled) > COMPILED_CACHE_SIZE:
                _compiled.popitem(last=False)
    if compiled.catalog.refusals:
        if strict:
            raise compiled.catalog.refusals[0]
        if quiet:
            return compiled.with_own_strings()
        with _compiled_lock:
            said, _refusals_said[text] = text in _refusals_said, True
            while len(_refusals_said) > COMPILED_CACHE_SIZE:
                _refusals_said.popitem(last=False)
        for refusal in () if said else compiled.catalog.refusals:  # once per text and process
            # %r: the version may hold what the newer checks refuse (control characters)
            log.warning("catalog %r runs, though a new catalog would be refused: %s",
                        compiled.version, refusal)
    return compiled.with_own_strings()


def default_compiled() -> CompiledCatalog:
    """The catalog Kairos ships with (catalogs/default.yaml), compiled."""
    return compiled_from_text(default_catalog_text(), "default.yaml")
