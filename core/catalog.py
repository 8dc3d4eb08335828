"""The catalog: the marketer's language, read from YAML and validated into plain dataclasses.

`load_catalog` checks the structure (every key known, every type right, every reference
declared) and keeps where each value came from. Rules stay text here; `compiler.compile_catalog`
parses them against the profile layout and turns the whole catalog into arrays.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from importlib import resources
from pathlib import Path as FsPath
from typing import Any, Callable

from ._kernel import MAX_PREDICTORS_SUPPORTED
from .errors import CatalogError, RuleError, not_text
from .rules import DURATION_UNITS_S, KEYWORDS, MAX_NUMBER, refused_number
from .yamlsource import Path, Source

MAX_ACTIONS = 10_000  # in one catalog
# the history ring keeps an interaction's channel in an int8 (state.py's ring_channel)
MAX_CHANNELS = 127
MAX_PREDICTORS = MAX_PREDICTORS_SUPPORTED - 1  # a catalog's; the kernel adds the intercept
FORMAT_VERSION = 1
FIELD_TYPES = ("string", "int", "float", "bool", "timestamp")
FEATURE_KINDS = ("count", "sum", "decayed_count", "decayed_sum", "last", "time_since", "min",
                 "max")
KINDS_WITH_FIELD = {"sum", "decayed_sum", "last", "min", "max"}
KINDS_WITH_HALF_LIFE = {"decayed_count", "decayed_sum"}
NUMERIC_TYPES = ("int", "float")
EXPLORATION_METHODS = ("thompson", "ucb", "none")
TRANSFORMS = ("identity", "log1p", "scale", "recency", "standardize")
DEFAULT_HISTORY_SIZE = 32
MAX_HISTORY_SIZE = 1024  # a history's most interactions
MAX_TOP_K = 1024  # actions one placement may show: the kernels size their output buffers by it
# A customer's event fires each of its overdue timers first, one journal record each, inside the
# event's request round, whose bytes the shard counts ahead for every timer (cluster/shard/
# rounds.py): 64 keeps an event's share at most 80 KB (a 1 KB id, 200-character names), half a %
# of a round's 16 MiB, and 2,048 events of 36-character ids (20-character names) one round.
MAX_TIMERS = 64
# an offer's agent_text: a few sentences for an agent's screen, not a document (every decision
# on the channel carries it)
MAX_AGENT_TEXT = 1_000
# the catalog's name and version are labels: the version travels in every decision, ack and
# status (a 900 KB one made every customer's GetProfile pass gRPC's 4 MiB), so it is a short run
# of visible ASCII (what "2026.12.2", "v2-rc.1" or "2026-12-05T10:00+01:00" need)
MAX_NAME = 200
MAX_VERSION = 64
# a string field's value (`values:`), and a request's string (request.py's MAX_STRING_LENGTH):
# a longer declared value could never be matched
MAX_VALUE = 1_024
# an action's string attribute (a URL, a short description): what clients read off the
# catalog, not a document
MAX_ATTRIBUTE_TEXT = 4_096
_VERSION_RE = re.compile(r"[!-~]{1,%d}" % MAX_VERSION)
# characters no text may hold once YAML's escapes are read ("\e", "\u202e"; YAML itself refuses
# only raw ones): controls but tab and line feed (a terminal's or a log's escape sequences), and
# bidirectional embeddings, overrides and isolates, which show a text in another order than it
# is read; and the line and paragraph separators, which break a line in a log or the console's
# JSON, and the zero-width space, word joiner and byte order mark, which hide text. A label
# (name) is one line, so it holds no tab or line feed either, nor the other invisible ones:
# zero-width (non-)joiners and direction marks, which a text's Persian, Indic or Hebrew words
# may need, a label's name does not.
_INVISIBLE = "\u200b\u2028\u2029\u2060\ufeff"
_HIDDEN_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069%s]"
                        % _INVISIBLE)
_HIDDEN_IN_LABEL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069%s"
                                 "\u061c\u200c-\u200f]" % _INVISIBLE)
DEFAULT_VARIANCE_SCALE = 0.1
# Exploration reaches at most 10 posterior deviations (variance_scale scales the variance, so
# 100; ucb_alpha the deviation): past that a draw or a bonus swamps whatever a model learnt,
# and the ranking is as good as random
MAX_VARIANCE_SCALE, MAX_UCB_ALPHA = 100.0, 10.0
# a prior's precision: a weight's prior deviation of at most 1,000 logits, already far wider
# than any weight a logistic model can use
MIN_PRECISION = 1e-6
MAX_CONTROL_SHARE = 0.5  # a control group larger than the policy it measures is a mistake
DEFAULT_TRIAL_RATE = 0.02  # decisions that try an action not yet accepted on the channel
DEFAULT_SELECTION_SAMPLES, MAX_SELECTION_SAMPLES = 128, 65_536
# A decision's selection_samples re-runs (where decisions draw at random) each draw every action
# of the channel that can still rank, then fill each of its top_k slots by a pass over them:
# about 1.1-2.0 ns x (15 + top_k) an action a re-run on a 2-core dev box (2,048 actions x 128
# samples: 4.4 ms at top_k 3, 28 ms at 64, 336 ms at 1,024; a pass costs more where few
# actions fill many slots, the most where top_k is about the actions). selection_samples x
# actions x (15 + top_k) at most MAX_SELECTION_WORK keeps a decision to about 4-7 ms: 3.7 ms
# at top_k 3 (194,444 samples x actions), 4.2 ms with 10 actions in 10 slots (14,000 samples),
# 7.1 ms with 32 in 32 (2,327 samples), the slowest shape found (python -m bench.costs,
# bench/results/costs-20261206T003319Z.md)
SELECTION_DRAW_PASSES = 15  # what drawing an action costs, in passes over it
MAX_SELECTION_WORK = 3_500_000
# Every decision weighs the context weights: the kernel (_context_weights) looks at each
# weight, at the `when` conditions of those on the channel, and for each of those that match
# multiplies the weight into every group's, named group or not: weights x (conditions +
# groups) on a channel, 0.3-1.5 ns a step on a 2-core dev box (5,000 groups x 40,000 weights
# took 53 ms a decision; 10,000 x 200, 2 million steps, 1.3-3 ms). MAX_WEIGHT_WORK keeps it
# to a few ms: 200 weights over 10,000 groups, or 2,000 over 1,000; MAX_CONTEXT_WEIGHTS
# also bounds what the catalog checks multiply together at validation.
MAX_CONTEXT_WEIGHTS = 2_000
MAX_WEIGHT_WORK = 4_000_000
# Every decision scores each action of the channel by its model: inputs (the intercept
# included) a step, and where exploration draws or adds its deviation, inputs^2 under a full
# posterior and twice the inputs under a diagonal one, about 1.6 ns a step (2,000 actions x
# 64^2 took 13 ms a decision). MAX_MODEL_WORK keeps it to about 4-6 ms: 2,048 actions with
# auto's 32 full inputs (2.1 million), 850 with 64, 10,000 with 174 diagonal inputs.
MAX_MODEL_WORK = 3_500_000
POSTERIORS = ("auto", "full", "diagonal")
DEFAULT_VALUE_PRIOR_WEIGHT = 10.0
# A convert's value counts at most this many times the action's catalog value in the
# decision it names (models.value.max_ratio): the learned value is shared by every customer,
# so one convert reporting 1e12 would otherwise set it for all of them
DEFAULT_VALUE_MAX_RATIO = 10.0
# Inputs, the intercept included, a full-covariance posterior may have: a decision costs
# inputs^2 per action and a model inputs^2 * 16 bytes (precision and covariance)...
FULL_POSTERIOR_MAX_INPUTS = 64
FULL_POSTERIOR_AUTO_INPUTS = 32  # ...and "auto" takes it up to this many
# The bytes a shard's models of every (action, channel) pair may take: 10,000 actions on 6
# channels, 32 full-covariance inputs: 1.4 GiB. Each shard and the learner hold a table of them,
# and a model sync briefly needs about twice that (a shard's and a learner's table in one
# process peaked at 3.3-3.8 times one table's bytes while taking, merging and adopting deltas)
MAX_MODEL_BYTES = 2 * 2**30
_MAX_WEIGHT_SPLITS = 32  # context fields _most tells weights apart by, one within another
_MAX_JOINT_WEIGHTS = 1_000  # weights for every group x groups named, weighed together
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # of everything a catalog names: channels, actions...
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")  # Unicode digits: see duration


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    required: bool = True
    values: tuple[str, ...] | None = None
    minimum: float = -MAX_NUMBER  # int, float and vector fields only (a vector's elements)
    maximum: float = MAX_NUMBER
    size: int = 1  # a vector's numbers (context only: many numeric features in one key)


@dataclass(frozen=True)
class EventType:
    """An event type. Who may send it: callers naming a channel of `channels` (None: every
    channel) or none; and, for a type a timer fires, no caller at all unless `also_sent`."""

    name: str
    fields: tuple[FieldSpec, ...]
    channels: tuple[str, ...] | None = None
    also_sent: bool = False

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str
    values: tuple[str, ...] | None = None
    default: Any = None
    from_event: str | None = None
    from_field: str | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    event: str
    field: str | None = None
    half_life_s: float = 0.0
    when_field: str | None = None
    when_values: tuple[Any, ...] = ()
    type: str = "float"  # what rules see: float, or the field's type for `last`
    values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Placement:
    name: str
    top_k: int


@dataclass(frozen=True)
class Channel:
    name: str
    placements: tuple[Placement, ...]
    consent: dict[str, str] = field(default_factory=dict)  # purpose -> bool attribute
    # the share of decisions held back as a control group: they show one action drawn
    # uniformly from the eligible ones, so the models' uplift can be measured against them
    control: float = 0.0


@dataclass(frozen=True)
class Rule:
    """A rule's text and the catalog path it came from (for error positions)."""

    text: str
    path: Path


@dataclass(frozen=True)
class ContactPolicy:
    max_impressions: int = 0
    impression_window_s: float = 0.0
    reject_count: int = 0
    reject_within_s: float = 0.0
    reject_suppress_s: float = 0.0
    accept_cooldown_s: float = 0.0


@dataclass(frozen=True)
class Offer:
    """An action as offered on one channel."""

    channel: str
    treatment: str
    placements: tuple[str, ...] | None = None  # None: every placement of the channel
    agent_text: str = ""  # what an agent reads or says when the action wins (may be empty)


@dataclass(frozen=True)
class Action:
    id: str
    group: str
    purpose: str
    offers: tuple[Offer, ...]
    eligibility: Rule | None
    applicability: Rule | None
    suitability: Rule | None
    value: float | Rule
    lever: float
    valid_from: float  # epoch seconds; -inf when open
    valid_until: float  # +inf when open
    contact_policy: ContactPolicy
    attributes: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class ContextWeight:
    weight: float
    channel: str | None = None
    group: str | None = None
    when: dict[str, Any] = field(default_factory=dict)
    path: Path = ()


@dataclass(frozen=True)
class Exploration:
    method: str = "thompson"
    variance_scale: float = DEFAULT_VARIANCE_SCALE
    # Thompson draws below the posterior mean count as the mean (optimistic Bayesian sampling,
    # May et al. 2012): an arm is never ranked below what the model expects of it, so
    # exploration only ever lifts an uncertain arm, while the draws above the mean still differ
    # from decision to decision (what UCB lacks when outcomes come late). Off by default: it
    # explores half as much, and the decision log then covers a candidate catalog less
    optimistic: bool = False
    ucb_alpha: float = 1.0
    group_variance_scale: dict[str, float] = field(default_factory=dict)
    # The share of decisions, among those where an action that passed its rules has never
    # been accepted on the channel, that show one such action first (drawn at random): a
    # pessimistic prior then cannot lock onto the first action that got an accept.
    trial_rate: float = DEFAULT_TRIAL_RATE
    # How many re-runs of a decision's random draws estimate the probability that it shows
    # what it showed (standard error at most 0.5 / sqrt(selection_samples))
    selection_samples: int = DEFAULT_SELECTION_SAMPLES


@dataclass(frozen=True)
class Arbitration:
    restraint_threshold: float = 0.0
    one_per_group: bool = True
    allow_multiple: tuple[str, ...] = ()
    context_weights: tuple[ContextWeight, ...] = ()
    exploration: Exploration = Exploration()


@dataclass(frozen=True)
class Predictor:
    name: str
    source: str  # "profile" or "context"
    transform: str
    scale: float = 1.0
    equals: Any = None  # indicator: x == equals
    path: Path = ()

    @property
    def key(self) -> str:
        """What the predictor reads: source, name and, for an indicator, the value. Not the
        transform, so across catalog versions a rescaled input keeps its weight."""
        key = f"context.{self.name}" if self.source == "context" else self.name
        return key if self.equals is None else f"{key}=={self.equals!r}"


@dataclass(frozen=True)
class Prior:
    """Where a model starts: the intercept at the base rate's logit with `precision`, every
    predictor's weight at 0 with `predictor_precision` (apart: a confident base rate need not
    make the weights slow to learn)."""

    base_rate: float = 0.05
    precision: float = 1.0
    predictor_precision: float = 1.0


@dataclass(frozen=True)
class ValueLearning:
    """Whether the values conversions report replace, little by little, the catalog's value
    of an action: the catalog's counts as `prior_weight` conversions of that value."""

    learn: bool = True
    prior_weight: float = DEFAULT_VALUE_PRIOR_WEIGHT
    max_ratio: float = DEFAULT_VALUE_MAX_RATIO  # a convert's value counts at most this x it


@dataclass(frozen=True)
class Models:
    predictors: tuple[Predictor, ...] = ()
    prior: Prior = Prior()
    group_priors: dict[str, Prior] = field(default_factory=dict)
    # "full": a covariance matrix per model, so correlated predictors share what an example
    # taught; "diagonal": one variance per predictor; "auto": full up to
    # FULL_POSTERIOR_AUTO_INPUTS inputs
    posterior: str = "auto"
    value: ValueLearning = ValueLearning()
    inputs: int = 0  # the predictors' inputs (a vector counts its size), the intercept not

    @property
    def full(self) -> bool:
        """Whether each model keeps a covariance matrix."""
        return self.posterior == "full" or (
            self.posterior == "auto" and self.inputs + 1 <= FULL_POSTERIOR_AUTO_INPUTS)

    @property
    def model_bytes(self) -> int:
        """What one (action, channel) model takes in a shard's table: its mean, precision (and
        covariance, full) and four counts (models.COUNTS), and the copy of them the table
        keeps to take what it learned since."""
        d = self.inputs + 1
        matrix = d * d if self.full else d
        return 8 * (2 * (d + matrix + 4) + (matrix if self.full else 0))


@dataclass(frozen=True)
class Timer:
    """A per-customer wake-up: `start` events arm it (again), `cancel` events disarm it, and
    `after` that long without a cancel it fires by applying the `fire` event at the due time,
    so the absence of events reaches features, rules and watchers like any event."""

    name: str
    start: tuple[str, ...]
    after_s: float
    cancel: tuple[str, ...]
    fire: str


@dataclass
class Catalog:
    name: str
    version: str
    channels: tuple[Channel, ...]
    context: tuple[FieldSpec, ...]
    events: tuple[EventType, ...]
    attributes: tuple[Attribute, ...]
    features: tuple[Feature, ...]
    consent: dict[str, str | None]  # purpose -> bool attribute (None: always granted)
    actions: tuple[Action, ...]
    arbitration: Arbitration
    models: Models
    fallbacks: dict[str, tuple[str, ...]]
    history_size: int
    source: Source = field(repr=False)
    # what the checks added since catalogs could be saved refuse (load_catalog's `strict`)
    refusals: tuple[CatalogError, ...] = field(default=(), repr=False, compare=False)
    timers: tuple[Timer, ...] = ()

    def channel(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    def event(self, name: str) -> EventType | None:
        return self._events_by_name.get(name)

    @cached_property
    def _events_by_name(self) -> dict[str, EventType]:
        # looked up for every event a gateway checks and a shard applies; the first of a name
        # wins, as a search in order did (a catalog's event types are not changed once loaded)
        return {e.name: e for e in reversed(self.events)}

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.group for a in self.actions))


def load_catalog(text: str, source: str = "<catalog>", strict: bool = True) -> Catalog:
    """Parse and validate a catalog; raises CatalogError naming file, line:column and path.
    Not `strict`: what only the checks added since catalogs could be saved refuse (a
    contact-policy count past the history ring, timers arming each other, more than
    MAX_TIMERS timers, a name, version, field value or string attribute too long, a text with
    control or bidirectional-override characters) is kept in `refusals` instead, so that a
    catalog the cluster took up before still runs (a saved one is not checked anew at a
    restart); a new catalog is loaded strict (PutCatalog, ValidateCatalog, the CLI)."""
    catalog = _Reader(Source(text, source)).catalog()
    if strict and catalog.refusals:
        raise catalog.refusals[0]
    return catalog


def load_catalog_file(path: str | FsPath) -> Catalog:
    return load_catalog(catalog_file_text(path), str(path))


def catalog_file_text(path: str | FsPath) -> str:
    """A catalog file's text; CatalogError naming the file where it is not UTF-8 (YAML is)."""
    try:
        return FsPath(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(not_text(exc), source=str(path)) from None


def default_catalog_text() -> str:
    return resources.files(__package__).joinpath("catalogs/default.yaml").read_text("utf-8")


def load_default_catalog() -> Catalog:
    return load_catalog(default_catalog_text(), "default.yaml")


def parse_duration(value: Any) -> float | None:
    """Seconds from `90`, `45s`, `30m`, `2h`, `7d`, `4w`; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _to_float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if m:
            return float(m.group(1)) * DURATION_UNITS_S[m.group(2)]
    return None


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from an ISO-8601 timestamp with a zone; None when it is not one.

    YAML reads an unquoted timestamp as a datetime, and one without a zone (or a bare date)
    as a naive one: that is refused like the same text quoted, since the zone is a guess.
    """
    if isinstance(value, datetime):
        return value.timestamp() if value.tzinfo is not None else None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed.timestamp()
    return None


class _Reader:
    """Walks the YAML data, checking each part and building the Catalog."""

    def __init__(self, source: Source):
        self.src = source
        self.action_id: str | None = None
        self.refusals: list[CatalogError] = []
        self.literals: dict[str, RuleError | None] = {}  # rules.refused_number by rule text

    # -- primitives -----------------------------------------------------------------------

    def fail(self, path: Path, reason: str, *, at_key: bool = False) -> CatalogError:
        return self.src.error(path, reason, action_id=self.action_id, at_key=at_key)

    def get(self, path: Path) -> Any:
        value: Any = self.src.data
        for part in path:
            value = value[part]
        return value

    def mapping(self, path: Path, required: tuple[str, ...] = (),
                optional: tuple[str, ...] = (), *, open_keys: bool = False) -> dict:
        value = self.get(path)
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {key!r}")
            if not open_keys and key not in required and key not in optional:
                allowed = ", ".join(required + optional)
                raise self.fail(path + (key,), f"unknown key '{key}' (allowed: {allowed})",
                                at_key=True)
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing required key '{key}'")
        return value

    def sequence(self, path: Path) -> list:
        value = self.get(path)
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_kind(value)}")
        return value

    def name(self, path: Path) -> str:
        value = self.get(path)
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise self.fail(path, f"expected a name of lowercase letters, digits and '_' "
                                  f"starting with a letter, got {value!r}")
        return value

    def key_name(self, path: Path) -> str:
        key = path[-1]
        if not NAME_RE.match(key):
            raise self.fail(path, f"'{key}' is not a valid name: use lowercase letters, digits "
                                  f"and '_', starting with a letter", at_key=True)
        return key

    def string(self, path: Path) -> str:
        value = self.get(path)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def text(self, path: Path, max_length: int | None = None) -> str:
        value = self.string(path)
        if max_length is not None and len(value) > max_length:
            raise self.fail(path, f"at most {max_length} characters, got {len(value)}")
        self.visible(path, value, _HIDDEN_RE)
        return value

    def label(self, path: Path, max_length: int) -> str:
        """A one-line text; its length is a check added since catalogs could be saved."""
        value = self.string(path)
        self.bounded(path, value, max_length, _HIDDEN_IN_LABEL_RE)
        return value

    def bounded(self, path: Path, value: str, max_length: int, hidden: re.Pattern) -> None:
        """Refusals (checks added since catalogs could be saved) for `value` longer than
        `max_length`, and for the first character of it that `hidden` finds."""
        if len(value) > max_length:
            self.refusals.append(self.fail(path, f"at most {max_length} characters, got "
                                                 f"{len(value)}"))
        self.visible(path, value, hidden)

    def visible(self, path: Path, value: str, hidden: re.Pattern) -> None:
        """A refusal (a check added since catalogs could be saved) for the first character of
        `value` that `hidden` finds."""
        found = hidden.search(value)
        if found:
            char = found.group()
            name = unicodedata.name(char, "")
            self.refusals.append(self.fail(
                path, f"character #x{ord(char):04x}{f' ({name})' if name else ''} at "
                      f"{found.start() + 1}: no control or bidirectional-override characters "
                      f"in a catalog's texts"))

    def number(self, path: Path, *, minimum: float | None = None, positive: bool = False,
               maximum: float | None = None) -> float:
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"expected a number, got {value!r}")
        if not math.isfinite(_to_float(value)):
            raise self.fail(path, f"expected a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(path, f"must be greater than 0, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be at least {minimum:g}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.fail(path, f"must be at most {maximum:g}, got {value!r}")
        return float(value)

    def within(self, path: Path, value: float, minimum: float = 0.0,
               maximum: float = MAX_NUMBER) -> float:
        """A bound that came after catalogs could be saved: past it refuses a catalog coming
        in new, while a saved one still loads with its value (load_catalog's `strict`)."""
        if value < minimum:
            self.refusals.append(self.fail(path, f"must be at least {minimum:g}, got {value!r}"))
        elif value > maximum:
            self.refusals.append(self.fail(path, f"must be at most {maximum:g}, got {value!r}"))
        return value

    def rule(self, path: Path) -> Rule:
        text = self.text(path)
        if text not in self.literals:  # an alias repeats a rule's text many times
            self.literals[text] = refused_number(text)
        error = self.literals[text]
        if error is not None:
            self.refusals.append(self.src.error(path, error.reason, action_id=self.action_id,
                                                column_in_value=error.column))
        return Rule(text, path)

    def integer(self, path: Path, *, minimum: int = 0, maximum: int) -> int:
        """The compiler keeps integers in int32 arrays, so each has an upper bound."""
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.fail(path, f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise self.fail(path, f"must be at most {maximum}, got {value}")
        return value

    def boolean(self, path: Path) -> bool:
        value = self.get(path)
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def duration(self, path: Path) -> float:
        value = self.get(path)
        seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            raise self.fail(path, f"expected a positive duration such as 30m, 2h or 7d, "
                                  f"got {value!r}")
        if isinstance(value, str) and not value.isascii():  # "１d": float() reads it as 1
            self.refusals.append(self.fail(path, f"digits are ASCII ones, got {value!r}"))
        return seconds

    def timestamp(self, path: Path) -> float:
        seconds = parse_timestamp(self.get(path))
        if seconds is None:
            raise self.fail(path, f"expected an ISO-8601 timestamp with a zone such as "
                                  f"2026-01-01T00:00:00Z, got {_written(self.get(path))}")
        return seconds

    def choice(self, path: Path, options: tuple[str, ...]) -> str:
        value = self.get(path)
        if value not in options:
            raise self.fail(path, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def reference(self, path: Path, known: Any, what: str) -> str:
        value = self.name(path)
        if value not in known:
            hint = _did_you_mean(value, known)
            raise self.fail(path, f"unknown {what} '{value}'{hint}")
        return value

    def names(self, path: Path, known: Any, what: str) -> tuple[str, ...]:
        return tuple(self.reference(path + (i,), known, what)
                     for i in range(len(self.sequence(path))))

    def each(self, path: Path, build: Callable[[Path], Any], *, non_empty: bool = False) -> tuple:
        items = self.mapping(path, open_keys=True)
        if non_empty and not items:
            raise self.fail(path, "must not be empty")
        return tuple(build(path + (self.key_name(path + (key,)),)) for key in items)

    # -- sections ------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        self.no_duplicate_keys()
        self.plain_numbers()
        root = self.mapping((), ("kairos_catalog", "name", "version", "channels", "events",
                                 "actions", "fallbacks"),
                            ("context", "attributes", "features", "consent", "arbitration",
                             "models", "history", "timers"))
        fmt = root["kairos_catalog"]
        if isinstance(fmt, bool) or fmt != FORMAT_VERSION:  # True == 1
            raise self.fail(("kairos_catalog",), f"unsupported catalog format {fmt!r} (this "
                                                 f"Kairos reads {FORMAT_VERSION})")
        name = self.label(("name",), MAX_NAME)
        version = self.version()
        events = self.each(("events",), self.event_type, non_empty=True)
        event_map = {e.name: e for e in events}
        attributes = self.each(("attributes",), lambda p: self.attribute(p, event_map)) \
            if "attributes" in root else ()
        attr_map = {a.name: a for a in attributes}
        features = self.each(("features",), lambda p: self.feature(p, event_map)) \
            if "features" in root else ()
        self.unique_profile_names(attributes, features)
        bool_attrs = {a.name for a in attributes if a.type == "bool"}
        channels = self.each(("channels",), lambda p: self.channel(p, bool_attrs),
                             non_empty=True)
        # past 127 the history's channels wrap onto others, so such a catalog never kept its
        # contact policies; a saved one still runs (refusing it would leave its store no way to
        # start, not even with another catalog: the saved one is taken up first) until replaced
        if len(channels) > MAX_CHANNELS:
            self.refusals.append(self.fail(("channels",), (
                f"more than {MAX_CHANNELS} channels ({len(channels)} given): the history keeps "
                f"a channel in a byte, so the channels past the {MAX_CHANNELS}th share others' "
                f"history until this catalog is replaced")))
        context = self.each(("context",), lambda p: self.field_spec(p, vectors=True)) \
            if "context" in root else ()
        for key in context:
            self.not_keyword(("context", key.name))
        consent = self.consent(bool_attrs) if "consent" in root else {"service": None}
        for ch in channels:
            for purpose in ch.consent:
                if purpose not in consent:
                    raise self.fail(("channels", ch.name, "consent", purpose),
                                    f"unknown purpose '{purpose}' (purposes: "
                                    f"{', '.join(consent)})", at_key=True)
        channel_map = {c.name: c for c in channels}
        self.event_channels(events, channel_map)
        history = DEFAULT_HISTORY_SIZE  # before the actions: it bounds their contact policies
        if "history" in root:
            self.mapping(("history",), ("size",))
            history = self.integer(("history", "size"), minimum=1, maximum=MAX_HISTORY_SIZE)
        actions = self.actions(channel_map, consent, history)
        groups = tuple(dict.fromkeys(a.group for a in actions))
        arbitration = self.arbitration(channel_map, groups, {c.name: c for c in context}) \
            if "arbitration" in root else Arbitration()
        offered = _offered(channels, actions)
        self.selection_work(channels, offered, arbitration.exploration)
        self.weight_work(offered, arbitration.context_weights, len(groups))
        models = self.models(attr_map, {f.name: f for f in features}, {c.name: c for c in context},
                             groups) if "models" in root else Models()
        self.models_fit(models, len(actions), len(channels))
        self.model_work(models, offered, arbitration.exploration)
        fallbacks = self.fallbacks(channel_map, actions, consent)
        timers = self.each(("timers",), lambda p: self.timer(p, event_map)) \
            if "timers" in root else ()
        if len(timers) > MAX_TIMERS:
            self.refusals.append(self.fail(("timers",), (
                f"more than {MAX_TIMERS} timers ({len(timers)} given): an event fires each of "
                f"its customer's overdue ones in its request round")))
        self.no_timer_cycle(timers)
        self.event_senders(events, timers)
        return Catalog(name=name, version=version, channels=channels, context=context,
                       events=events, attributes=attributes, features=features, consent=consent,
                       actions=actions, arbitration=arbitration, models=models,
                       fallbacks=fallbacks, history_size=history, source=self.src,
                       timers=timers, refusals=tuple(self.refusals))

    def no_duplicate_keys(self) -> None:
        """Raise for the first key the YAML repeats, naming the action it is in as every other
        error inside an action does (the YAML parser cannot know actions)."""
        for path, mark in self.src.duplicates[:1]:
            raise self.src.error(path, f"duplicate key '{path[-1]}'", mark,
                                 action_id=self.action_id_at(path))

    def plain_numbers(self) -> None:
        """Refusals (a check added since catalogs could be saved) for numbers that YAML 1.1
        reads otherwise than an author, or YAML 1.2, would: `1:30` is 90, `010` is 8."""
        for path, mark, text, value in self.src.odd_numbers:
            self.refusals.append(self.src.error(
                path, f"{text!r} reads as {value!r} (a YAML 1.1 number form): write numbers "
                      f"in plain decimal, such as 90 or 1.5, a duration such as 1h30m as "
                      f"\"90m\", and quote a text that is not a number", mark,
                action_id=self.action_id_at(path)))

    def action_id_at(self, path: Path) -> str | None:
        """The id of the action that `path` is inside, when it has one."""
        if len(path) < 2 or path[0] != "actions" or not isinstance(path[1], int):
            return None
        actions = self.src.data.get("actions") if isinstance(self.src.data, dict) else None
        action = actions[path[1]] if isinstance(actions, list) else None
        action_id = action.get("id") if isinstance(action, dict) else None
        return action_id if isinstance(action_id, str) else None

    def version(self) -> str:
        value = self.get(("version",))
        if not isinstance(value, str):  # a YAML number would lose digits: 1.10 reads as 1.1
            raise self.fail(("version",), f"expected a string such as \"2026.11.1\" (quote it), "
                                          f"got {_kind(value)}")
        value = self.string(("version",))
        if not _VERSION_RE.fullmatch(value):
            shown = repr(value[:MAX_VERSION]) + ("..." if len(value) > MAX_VERSION else "")
            self.refusals.append(self.fail(("version",), (
                f"expected at most {MAX_VERSION} ASCII letters, digits and punctuation marks "
                f"(no spaces), got {shown} ({len(value)} characters)")))
        return value

    def field_spec(self, path: Path, vectors: bool = False) -> FieldSpec:
        spec = self.mapping(path, ("type",), ("required", "values", "min", "max", "size"))
        ftype = self.choice(path + ("type",), FIELD_TYPES + (("vector",) if vectors else ()))
        values = self.vocabulary(path, ftype) if "values" in spec else None
        required = self.boolean(path + ("required",)) if "required" in spec else True
        size = 1
        if ftype == "vector":
            if "size" not in spec:
                raise self.fail(path, "a vector needs 'size' (how many numbers it holds)")
            size = self.integer(path + ("size",), minimum=1, maximum=MAX_PREDICTORS)
        elif "size" in spec:
            raise self.fail(path + ("size",), f"only vectors take 'size', this field is {ftype}")
        bounds = []
        for key, default in (("min", -MAX_NUMBER), ("max", MAX_NUMBER)):
            if key not in spec:
                bounds.append(default)
            elif ftype not in NUMERIC_TYPES + ("vector",):
                raise self.fail(path + (key,), f"only int, float and vector fields take "
                                               f"'{key}', this one is {ftype}")
            else:
                bounds.append(self.number(path + (key,), minimum=-MAX_NUMBER,
                                          maximum=MAX_NUMBER))
        if bounds[0] > bounds[1]:
            raise self.fail(path + ("max",), f"must be at least min ({bounds[0]:g}), got "
                                             f"{bounds[1]:g}")
        return FieldSpec(path[-1], ftype, required, values, *bounds, size)

    def vocabulary(self, path: Path, ftype: str) -> tuple[str, ...]:
        if ftype != "string":
            raise self.fail(path + ("values",), f"only string fields take 'values', this one "
                                                f"is {ftype}")
        items = self.sequence(path + ("values",))
        if not items:
            raise self.fail(path + ("values",), "must not be empty")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(path + ("values", i), f"expected a string, got {item!r}")
            if item in out:
                raise self.fail(path + ("values", i), f"duplicate value '{item}'")
            self.bounded(path + ("values", i), item, MAX_VALUE, _HIDDEN_IN_LABEL_RE)
            out.append(item)
        return tuple(out)

    def event_type(self, path: Path) -> EventType:
        """An event type; its `channels` are names here, checked against the channels by
        `event_channels` once those are read."""
        spec = self.mapping(path, ("fields",), ("channels", "also_sent"))
        fields = self.each(path + ("fields",), self.field_spec)
        channels = None
        if "channels" in spec:
            channels = tuple(self.name(path + ("channels", i))
                             for i in range(len(self.sequence(path + ("channels",)))))
            for i, name in enumerate(channels):
                if name in channels[:i]:
                    raise self.fail(path + ("channels", i), f"duplicate channel '{name}'")
        also_sent = self.boolean(path + ("also_sent",)) if "also_sent" in spec else False
        return EventType(path[-1], fields, channels, also_sent)

    def event_channels(self, events: tuple[EventType, ...], channels: dict[str, Channel]
                       ) -> None:
        """Every channel an event type's `channels` names is one of the catalog's."""
        for e in events:
            for i in range(len(e.channels or ())):
                self.reference(("events", e.name, "channels", i), channels, "channel")

    def event_senders(self, events: tuple[EventType, ...], timers: tuple[Timer, ...]) -> None:
        """`also_sent` only on a type a timer fires (elsewhere it would say nothing), and
        `channels` on such a type only with it: that callers' events of the type count as the
        timer's firings do is the author's to state, never a default."""
        fired = {t.fire: t.name for t in timers}
        for e in events:
            path = ("events", e.name)
            if e.also_sent and e.name not in fired:
                raise self.fail(path + ("also_sent",), f"no timer fires '{e.name}': callers "
                                                       f"send it anyway (leave also_sent out)")
            if e.channels is not None and e.name in fired and not e.also_sent:
                raise self.fail(path + ("channels",), (
                    f"timer '{fired[e.name]}' fires '{e.name}', so no caller sends it on any "
                    f"channel unless it says `also_sent: true`"))

    def attribute(self, path: Path, events: dict[str, EventType]) -> Attribute:
        spec = self.mapping(path, ("type",), ("values", "default", "from"))
        atype = self.choice(path + ("type",), FIELD_TYPES)
        values = self.vocabulary(path, atype) if "values" in spec else None
        default = None
        if "default" in spec:
            default = self.typed_value(path + ("default",), atype, values)
        from_event = from_field = None
        if "from" in spec:
            self.mapping(path + ("from",), ("event", "field"))
            from_event = self.reference(path + ("from", "event"), events, "event type")
            event = events[from_event]
            from_field = self.reference(path + ("from", "field"),
                                        {f.name for f in event.fields}, f"field of {from_event}")
            source = event.field(from_field)
            if source.type != atype:
                raise self.fail(path + ("from", "field"), f"{from_event}.{from_field} is "
                                                          f"{source.type}, the attribute {atype}")
        return Attribute(path[-1], atype, values, default, from_event, from_field)

    def typed_value(self, path: Path, ftype: str, values: tuple[str, ...] | None) -> Any:
        if ftype == "bool":
            return self.boolean(path)
        if ftype == "timestamp":
            return self.timestamp(path)
        if ftype in NUMERIC_TYPES:
            number = self.number(path, minimum=-MAX_NUMBER, maximum=MAX_NUMBER)
            if ftype == "int" and not float(number).is_integer():
                raise self.fail(path, f"expected an integer, got {self.get(path)!r}")
            return number
        value = self.string(path)  # a default or a rule's literal: a request's string's size
        self.bounded(path, value, MAX_VALUE, _HIDDEN_IN_LABEL_RE)
        if values is not None and value not in values:
            raise self.fail(path, f"'{value}' is not one of {', '.join(values)}")
        return value

    def feature(self, path: Path, events: dict[str, EventType]) -> Feature:
        spec = self.mapping(path, ("kind", "event"), ("field", "half_life", "when"))
        kind = self.choice(path + ("kind",), FEATURE_KINDS)
        event_name = self.reference(path + ("event",), events, "event type")
        event = events[event_name]
        field_name = None
        if kind in KINDS_WITH_FIELD:
            if "field" not in spec:
                raise self.fail(path, f"a {kind} feature needs 'field'")
            field_name = self.reference(path + ("field",), {f.name for f in event.fields},
                                        f"field of {event_name}")
            ftype = event.field(field_name).type
            if kind != "last" and ftype not in NUMERIC_TYPES:
                raise self.fail(path + ("field",), f"a {kind} feature needs a numeric field, "
                                                   f"{event_name}.{field_name} is {ftype}")
        elif "field" in spec:
            raise self.fail(path + ("field",), f"a {kind} feature takes no field")
        half_life = 0.0
        if kind in KINDS_WITH_HALF_LIFE:
            if "half_life" not in spec:
                raise self.fail(path, f"a {kind} feature needs 'half_life'")
            half_life = self.duration(path + ("half_life",))
        elif "half_life" in spec:
            raise self.fail(path + ("half_life",), f"a {kind} feature takes no half_life")
        when_field, when_values = None, ()
        if "when" in spec:
            when = self.mapping(path + ("when",), open_keys=True)
            if len(when) != 1:
                raise self.fail(path + ("when",), "expected one field: a list of its values")
            when_field = next(iter(when))
            spec_field = event.field(when_field)
            if spec_field is None:
                raise self.fail(path + ("when", when_field), f"unknown field of {event_name} "
                                                             f"'{when_field}'", at_key=True)
            if spec_field.type not in ("string", "bool"):
                raise self.fail(path + ("when", when_field), f"'when' filters on string or "
                                                             f"bool fields, {when_field} is "
                                                             f"{spec_field.type}")
            wpath = path + ("when", when_field)
            when_values = tuple(self.typed_value(wpath + (i,), spec_field.type, spec_field.values)
                                for i in range(len(self.sequence(wpath))))
            if not when_values:  # no event would count
                self.refusals.append(self.fail(wpath, "must not be empty"))
        ftype, fvalues = "float", None
        if kind == "last":
            ftype, fvalues = event.field(field_name).type, event.field(field_name).values
        return Feature(path[-1], kind, event_name, field_name, half_life, when_field, when_values,
                       ftype, fvalues)

    def unique_profile_names(self, attributes: tuple, features: tuple) -> None:
        for section, items in (("attributes", attributes), ("features", features)):
            for item in items:
                self.not_keyword((section, item.name))
        seen = {a.name for a in attributes}
        for f in features:
            if f.name in seen:
                raise self.fail(("features", f.name), f"'{f.name}' is already an attribute",
                                at_key=True)
            if f.name == "now":
                raise self.fail(("features", f.name), "'now' is reserved", at_key=True)
        if "now" in seen:
            raise self.fail(("attributes", "now"), "'now' is reserved", at_key=True)

    def not_keyword(self, path: Path) -> None:
        """A refusal (a check added since catalogs could be saved) for a name rules read as a
        keyword, so that no rule could read it."""
        if path[-1] in KEYWORDS:
            self.refusals.append(self.fail(path, f"'{path[-1]}' is a rule keyword, so no rule "
                                                 f"could read it: use another name",
                                           at_key=True))

    def channel(self, path: Path, bool_attrs: set[str]) -> Channel:
        spec = self.mapping(path, ("placements",), ("consent", "control"))
        placements = self.each(path + ("placements",), self.placement, non_empty=True)
        if len(placements) > 63:
            raise self.fail(path + ("placements",), "at most 63 placements per channel")
        consent = {}
        if "consent" in spec:
            for purpose in self.mapping(path + ("consent",), open_keys=True):
                consent[purpose] = self.reference(path + ("consent", purpose), bool_attrs,
                                                  "bool attribute")
        control = 0.0
        if "control" in spec:
            control = self.number(path + ("control",), minimum=0.0, maximum=MAX_CONTROL_SHARE)
        return Channel(path[-1], placements, consent, control)

    def placement(self, path: Path) -> Placement:
        self.mapping(path, ("top_k",))
        top_k = self.integer(path + ("top_k",), minimum=1, maximum=MAX_TOP_K)
        return Placement(path[-1], top_k)

    def consent(self, bool_attrs: set[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for purpose in self.mapping(("consent",), open_keys=True):
            path = ("consent", self.key_name(("consent", purpose)))
            value = self.get(path)
            if value is True:
                out[purpose] = None
            elif isinstance(value, str):
                out[purpose] = self.reference(path, bool_attrs, "bool attribute")
            else:
                shown = str(value).lower() if isinstance(value, bool) else _kind(value)
                raise self.fail(path, f"expected true or the name of a bool attribute, "
                                      f"got {shown}")
        return out

    def actions(self, channels: dict[str, Channel], consent: dict,
                history: int) -> tuple[Action, ...]:
        items = self.sequence(("actions",))
        if not items:
            raise self.fail(("actions",), "must not be empty")
        if len(items) > MAX_ACTIONS:
            raise self.fail(("actions",), f"more than {MAX_ACTIONS} actions ({len(items)} given)")
        seen: dict[str, int] = {}
        out = []
        for i in range(len(items)):
            path = ("actions", i)
            self.action_id = self.action_id_at(path)  # so that every error inside names it
            spec = self.mapping(path, ("id", "group", "purpose", "channels", "value"),
                                ("eligibility", "applicability", "suitability", "lever", "valid",
                                 "contact_policy", "attributes", "name", "description"))
            action_id = self.name(path + ("id",))
            self.action_id = action_id
            if action_id in seen:
                raise self.fail(path + ("id",), f"duplicate action id (first at actions"
                                                f"[{seen[action_id]}])")
            seen[action_id] = i
            out.append(self.action(path, spec, action_id, channels, consent, history))
            self.action_id = None
        return tuple(out)

    def action(self, path: Path, spec: dict, action_id: str, channels: dict[str, Channel],
               consent: dict, history: int) -> Action:
        group = self.name(path + ("group",))
        purpose = self.reference(path + ("purpose",), consent, "purpose")
        offers = []
        offered = self.mapping(path + ("channels",), open_keys=True)
        if not offered:
            raise self.fail(path + ("channels",), "an action needs at least one channel")
        for ch_name in offered:
            cpath = path + ("channels", ch_name)
            if ch_name not in channels:
                raise self.fail(cpath, f"unknown channel '{ch_name}'"
                                       f"{_did_you_mean(ch_name, channels)}", at_key=True)
            ospec = self.mapping(cpath, ("treatment",), ("placements", "agent_text"))
            treatment = self.name(cpath + ("treatment",))
            agent_text = self.text(cpath + ("agent_text",), MAX_AGENT_TEXT) \
                if "agent_text" in ospec else ""
            placements = None
            if "placements" in ospec:
                placements = self.names(cpath + ("placements",),
                                        {p.name for p in channels[ch_name].placements},
                                        f"placement of {ch_name}")
                if not placements:  # the compiler reads no placements as every placement
                    self.refusals.append(self.fail(cpath + ("placements",), (
                        f"must not be empty (leave {ch_name} out to not offer the action "
                        f"there)")))
            offers.append(Offer(ch_name, treatment, placements, agent_text))
        rules = {stage: self.rule(path + (stage,)) if stage in spec
                 else None for stage in ("eligibility", "applicability", "suitability")}
        raw_value = spec["value"]
        if isinstance(raw_value, str):
            value: float | Rule = self.rule(path + ("value",))
        else:
            value = self.within(path + ("value",), self.number(path + ("value",)), -MAX_NUMBER)
        lever = self.within(path + ("lever",), self.number(path + ("lever",), minimum=0.0)) \
            if "lever" in spec else 1.0
        valid_from, valid_until = -math.inf, math.inf
        if "valid" in spec:
            window = self.mapping(path + ("valid",), (), ("from", "until"))
            if "from" in window:
                valid_from = self.timestamp(path + ("valid", "from"))
            if "until" in window:
                valid_until = self.timestamp(path + ("valid", "until"))
            if valid_until <= valid_from:
                raise self.fail(path + ("valid",), "'until' must be after 'from'")
        policy = self.contact_policy(path + ("contact_policy",), history) \
            if "contact_policy" in spec else ContactPolicy()
        attributes = {}
        if "attributes" in spec:
            for key, val in self.mapping(path + ("attributes",), open_keys=True).items():
                apath = path + ("attributes", self.key_name(path + ("attributes", key)))
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    # finite (an int past float range would overflow later), and within what
                    # a decision takes: past it every decision drops the action
                    self.within(apath, self.number(apath), -MAX_NUMBER)
                if not isinstance(val, (int, float, str, bool)):
                    raise self.fail(apath, f"expected a number, string or boolean, "
                                           f"got {_kind(val)}")
                if isinstance(val, str):
                    self.bounded(apath, val, MAX_ATTRIBUTE_TEXT, _HIDDEN_RE)
                attributes[key] = val
        return Action(action_id, group, purpose, tuple(offers), rules["eligibility"],
                      rules["applicability"], rules["suitability"], value, lever, valid_from,
                      valid_until, policy, attributes, path)

    def contact_policy(self, path: Path, history: int) -> ContactPolicy:
        spec = self.mapping(path, (), ("max_impressions", "suppress_after_rejects",
                                       "cooldown_after_accept"))
        kw: dict[str, Any] = {}
        if "max_impressions" in spec:
            self.mapping(path + ("max_impressions",), ("count", "window"))
            kw["max_impressions"] = self.policy_count(path + ("max_impressions", "count"),
                                                      history)
            kw["impression_window_s"] = self.duration(path + ("max_impressions", "window"))
        if "suppress_after_rejects" in spec:
            sub = path + ("suppress_after_rejects",)
            self.mapping(sub, ("count", "for"), ("within",))
            kw["reject_count"] = self.policy_count(sub + ("count",), history)
            kw["reject_suppress_s"] = self.duration(sub + ("for",))
            kw["reject_within_s"] = self.duration(sub + ("within",)) \
                if "within" in spec["suppress_after_rejects"] else kw["reject_suppress_s"]
        if "cooldown_after_accept" in spec:
            kw["accept_cooldown_s"] = self.duration(path + ("cooldown_after_accept",))
        return ContactPolicy(**kw)

    def policy_count(self, path: Path, history: int) -> int:
        """A contact policy counts entries of the history ring, so a count past the ring's size
        could never be reached and the cap would never trip."""
        count = self.get(path)
        if isinstance(count, int) and not isinstance(count, bool) and count > history:
            self.refusals.append(self.fail(
                path, f"must be at most history.size ({history}), got {count}: contact "
                      f"policies count in the customer's last {history} interactions, all "
                      f"actions' together"))
            return self.integer(path, minimum=1, maximum=MAX_HISTORY_SIZE)  # as it was taken
        return self.integer(path, minimum=1, maximum=history)

    def arbitration(self, channels: dict, groups: tuple[str, ...], context: dict) -> Arbitration:
        path = ("arbitration",)
        spec = self.mapping(path, (), ("restraint_threshold", "one_per_group", "allow_multiple",
                                       "context_weights", "exploration"))
        kw: dict[str, Any] = {}
        if "restraint_threshold" in spec:
            kw["restraint_threshold"] = self.number(path + ("restraint_threshold",), minimum=0.0)
        if "one_per_group" in spec:
            kw["one_per_group"] = self.boolean(path + ("one_per_group",))
        if "allow_multiple" in spec:
            kw["allow_multiple"] = self.names(path + ("allow_multiple",), groups, "action group")
        if "context_weights" in spec:
            weights = []
            for i in range(len(self.sequence(path + ("context_weights",)))):
                weights.append(self.context_weight(path + ("context_weights", i), channels,
                                                   groups, context))
            kw["context_weights"] = tuple(weights)
            self.weights_bounded(path + ("context_weights",), kw["context_weights"], channels)
        if "exploration" in spec:
            kw["exploration"] = self.exploration(path + ("exploration",), groups)
        return Arbitration(**kw)

    def context_weight(self, path: Path, channels: dict, groups: tuple[str, ...],
                       context: dict) -> ContextWeight:
        spec = self.mapping(path, ("weight",), ("channel", "group", "when"))
        weight = self.within(path + ("weight",), self.number(path + ("weight",), minimum=0.0))
        channel = self.reference(path + ("channel",), channels, "channel") \
            if "channel" in spec else None
        group = self.reference(path + ("group",), groups, "action group") \
            if "group" in spec else None
        when = {}
        if "when" in spec:
            for key in self.mapping(path + ("when",), open_keys=True):
                kpath = path + ("when", key)
                if key not in context:
                    raise self.fail(kpath, f"unknown context key '{key}'"
                                           f"{_did_you_mean(key, context)}", at_key=True)
                ctx = context[key]
                if ctx.type == "vector":
                    raise self.fail(kpath, f"'{key}' is a vector: only predictors read it",
                                    at_key=True)
                when[key] = self.typed_value(kpath, ctx.type, ctx.values)
        return ContextWeight(weight, channel, group, when, path)

    def weights_bounded(self, path: Path, weights: tuple[ContextWeight, ...],
                        channels: dict) -> None:
        """Context weights that match together multiply, so the most a group's weight can
        reach on a channel stays within MAX_NUMBER (past it priorities overflow to inf and
        rank by nothing). Past _MAX_JOINT_WEIGHTS, the weights for every group are bounded
        apart from a group's own and the two multiplied: looser, but channels x groups x
        weights would make a catalog of many weights slow to check."""
        over: dict[tuple[str | None, str | None], list[ContextWeight]] = {}
        for w in weights:
            if w.weight > 1.0:  # one under 1 only ever lowers a priority
                over.setdefault((w.channel, w.group), []).append(w)
        named = dict.fromkeys(g for _, g in over if g is not None)
        # a channel no weight names reaches what any other such does: one of them is checked
        own_weights = {c for c, _ in over}
        alike = [c for c in channels if c not in own_weights][:1]
        for channel in (c for c in channels if c in own_weights or c in alike):
            common = over.get((None, None), []) + over.get((channel, None), [])
            apart = len(common) * len(named) > _MAX_JOINT_WEIGHTS
            most, group = _most(common), None
            alone = most
            for g in named:
                own = over.get((None, g), []) + over.get((channel, g), [])
                reach = alone * _most(own) if apart else _most(common + own)
                if reach > most:
                    most, group = reach, g
            if most > MAX_NUMBER:
                where = f"channel '{channel}'" + (f" (group '{group}')" if group else "")
                how = "; the weights for every group bounded apart from the group's own, " \
                      "as there are so many" if apart and group else ""
                self.refusals.append(self.fail(
                    path, f"weights that can match together may multiply to {most:g} on "
                          f"{where}; the most is {MAX_NUMBER:g} (of weights whose `when` "
                          f"names different values of one context field, only the largest "
                          f"counts{how})"))
                return

    def selection_work(self, channels: tuple[Channel, ...], offered: dict[str, int],
                       exploration: Exploration) -> None:
        """Where a decision is drawn at random, its selection probabilities re-run the draws
        selection_samples times over every action of the channel that can still rank, filling
        its top_k slots: what one decision costs (MAX_SELECTION_WORK), so it is bounded."""
        if exploration.method == "none" or (exploration.method == "ucb"
                                            and exploration.trial_rate == 0.0):
            return
        samples = exploration.selection_samples
        # a re-run fills no more slots than the channel has actions
        work, channel, k = max((samples * offered[c.name] * (SELECTION_DRAW_PASSES + k), c.name, k)
                               for c in channels
                               for k in [min(max(p.top_k for p in c.placements), offered[c.name])])
        if work > MAX_SELECTION_WORK:
            self.refusals.append(self.fail(
                ("arbitration", "exploration", "selection_samples"),
                f"selection_samples x actions x ({SELECTION_DRAW_PASSES} + top_k) on channel "
                f"'{channel}' is {samples} x {offered[channel]} x ({SELECTION_DRAW_PASSES} + {k}) "
                f"= {work:,}; the most is {MAX_SELECTION_WORK:,}, about 4 to 7 ms a decision "
                f"(fewer samples, actions or top_k, or exploration method: none)"))

    def weight_work(self, offered: dict[str, int], weights: tuple[ContextWeight, ...],
                    n_groups: int) -> None:
        """What weighing the context weights costs a decision on its costliest channel
        (MAX_WEIGHT_WORK): every weight is looked at, and those on the channel test their
        conditions and, all matching, multiply into every group."""
        path = ("arbitration", "context_weights")
        if len(weights) > MAX_CONTEXT_WEIGHTS:
            self.refusals.append(self.fail(path, f"more than {MAX_CONTEXT_WEIGHTS:,} context "
                                                 f"weights ({len(weights):,} given)"))
            return
        work, channel = max((len(weights) + sum(len(w.when) + n_groups for w in weights
                                                if w.channel in (None, c)), c)
                            for c in offered)
        if work > MAX_WEIGHT_WORK:
            on = sum(w.channel in (None, channel) for w in weights)
            self.refusals.append(self.fail(
                path, f"context weights cost {work:,} steps a decision on channel '{channel}' "
                      f"({len(weights):,} weights, {on:,} of them on it, each multiplied into "
                      f"{n_groups:,} groups); the most is {MAX_WEIGHT_WORK:,}, about 1 to 2 ms "
                      f"(fewer weights or fewer action groups)"))

    def model_work(self, models: Models, offered: dict[str, int],
                   exploration: Exploration) -> None:
        """What scoring every action of a channel by its model costs a decision
        (MAX_MODEL_WORK): its inputs, and where exploration reads the posterior's deviation,
        their square (full) or twice them again (diagonal)."""
        d = models.inputs + 1
        exploring = exploration.method != "none"
        per_action = d * d if exploring and models.full else 2 * d if exploring else d
        most, channel = max((n, c) for c, n in offered.items())
        if most * per_action > MAX_MODEL_WORK:
            how = f"{d} x {d} (full posterior)" if exploring and models.full else \
                f"2 x {d} (diagonal posterior, explored)" if exploring else f"{d}"
            diagonal = ", or posterior: diagonal" if models.full else ""
            self.refusals.append(self.fail(
                ("models", "predictors"),
                f"scoring channel '{channel}' costs {most:,} actions x {how} inputs = "
                f"{most * per_action:,} steps a decision; the most is {MAX_MODEL_WORK:,}, about "
                f"4 to 6 ms (fewer actions on the channel, fewer predictors{diagonal})"))

    def models_fit(self, models: Models, n_actions: int, n_channels: int) -> None:
        """A model for every (action, channel) pair, in every shard and the learner: a catalog
        whose models would not fit MAX_MODEL_BYTES is refused before any of them allocates."""
        need = models.model_bytes * n_actions * n_channels
        if need > MAX_MODEL_BYTES:
            kind = " (full posterior)" if models.full else ""
            self.refusals.append(self.fail(
                ("models",), f"models need {need / 2**30:.1f} GiB for {n_actions:,} actions x "
                             f"{n_channels} channels x {models.inputs + 1} coefficients{kind}; "
                             f"the most is {MAX_MODEL_BYTES / 2**30:g} GiB"))

    def exploration(self, path: Path, groups: tuple[str, ...]) -> Exploration:
        spec = self.mapping(path, (), ("method", "variance_scale", "optimistic", "ucb_alpha",
                                       "trial_rate", "selection_samples", "groups"))
        kw: dict[str, Any] = {}
        if "method" in spec:
            kw["method"] = self.choice(path + ("method",), EXPLORATION_METHODS)
        if "variance_scale" in spec:
            kw["variance_scale"] = self.within(
                path + ("variance_scale",), self.number(path + ("variance_scale",), minimum=0.0),
                maximum=MAX_VARIANCE_SCALE)
        if "optimistic" in spec:
            kw["optimistic"] = self.boolean(path + ("optimistic",))
        if "ucb_alpha" in spec:
            kw["ucb_alpha"] = self.within(
                path + ("ucb_alpha",), self.number(path + ("ucb_alpha",), minimum=0.0),
                maximum=MAX_UCB_ALPHA)
        if "trial_rate" in spec:
            kw["trial_rate"] = self.number(path + ("trial_rate",), minimum=0.0, maximum=1.0)
        if "selection_samples" in spec:
            kw["selection_samples"] = self.integer(path + ("selection_samples",), minimum=1,
                                                   maximum=MAX_SELECTION_SAMPLES)
        if "groups" in spec:
            per_group = {}
            for group in self.mapping(path + ("groups",), open_keys=True):
                gpath = path + ("groups", group)
                if group not in groups:
                    raise self.fail(gpath, f"unknown action group '{group}'"
                                           f"{_did_you_mean(group, groups)}", at_key=True)
                self.mapping(gpath, ("variance_scale",))
                per_group[group] = self.within(
                    gpath + ("variance_scale",),
                    self.number(gpath + ("variance_scale",), minimum=0.0),
                    maximum=MAX_VARIANCE_SCALE)
            kw["group_variance_scale"] = per_group
        return Exploration(**kw)

    def models(self, attributes: dict, features: dict, context: dict,
               groups: tuple[str, ...]) -> Models:
        path = ("models",)
        spec = self.mapping(path, (), ("predictors", "prior", "groups", "posterior", "value"))
        predictors, inputs = [], 0
        if "predictors" in spec:
            declared = len(self.sequence(path + ("predictors",)))
            if declared > MAX_PREDICTORS:
                raise self.fail(path + ("predictors",),
                                f"at most {MAX_PREDICTORS} predictors (the kernel's models "
                                f"hold {MAX_PREDICTORS + 1} inputs with the intercept), got "
                                f"{declared}")
            seen: dict[tuple, int] = {}
            for i in range(declared):
                predictor = self.predictor(path + ("predictors", i), attributes, features,
                                           context)
                same = (predictor.key, predictor.transform, predictor.scale)
                if same in seen:
                    raise self.fail(path + ("predictors", i),
                                    f"repeats predictor {predictor.key} (position "
                                    f"{seen[same]})")
                seen[same] = i
                predictors.append(predictor)
            inputs = sum(context[p.name].size if p.source == "context" else 1
                         for p in predictors)
            if inputs > MAX_PREDICTORS:
                raise self.fail(path + ("predictors",),
                                f"at most {MAX_PREDICTORS} predictor inputs (a vector counts "
                                f"its size), got {inputs}")
        posterior = "auto"
        if "posterior" in spec:
            posterior = self.choice(path + ("posterior",), POSTERIORS)
            if posterior == "full" and inputs + 1 > FULL_POSTERIOR_MAX_INPUTS:
                raise self.fail(path + ("posterior",),
                                f"a full posterior takes at most "
                                f"{FULL_POSTERIOR_MAX_INPUTS - 1} predictor inputs, got "
                                f"{inputs}: use 'diagonal' (or 'auto')")
        prior = self.prior(path + ("prior",)) if "prior" in spec else Prior()
        group_priors = {}
        if "groups" in spec:
            for group in self.mapping(path + ("groups",), open_keys=True):
                if group not in groups:
                    raise self.fail(path + ("groups", group), f"unknown action group '{group}'"
                                                              f"{_did_you_mean(group, groups)}",
                                    at_key=True)
                group_priors[group] = self.prior(path + ("groups", group), prior)
        value = ValueLearning()
        if "value" in spec:
            vspec = self.mapping(path + ("value",), (), ("learn", "prior_weight", "max_ratio"))
            value = ValueLearning(
                self.boolean(path + ("value", "learn")) if "learn" in vspec else True,
                self.number(path + ("value", "prior_weight"), minimum=0.0, maximum=MAX_NUMBER)
                if "prior_weight" in vspec else DEFAULT_VALUE_PRIOR_WEIGHT,
                self.number(path + ("value", "max_ratio"), minimum=1.0, maximum=MAX_NUMBER)
                if "max_ratio" in vspec else DEFAULT_VALUE_MAX_RATIO)
        return Models(tuple(predictors), prior, group_priors, posterior, value, inputs)

    def prior(self, path: Path, base: Prior = Prior()) -> Prior:
        spec = self.mapping(path, (), ("base_rate", "precision", "predictor_precision"))
        rate = base.base_rate
        if "base_rate" in spec:
            rate = self.number(path + ("base_rate",), positive=True)
            if rate >= 1.0:
                raise self.fail(path + ("base_rate",), f"must be below 1, got {rate:g}")
        precision, predictor_precision = (
            self.number(path + (key,), minimum=MIN_PRECISION, maximum=MAX_NUMBER)
            if key in spec else getattr(base, key) for key in ("precision", "predictor_precision"))
        return Prior(rate, precision, predictor_precision)

    def predictor(self, path: Path, attributes: dict, features: dict,
                  context: dict) -> Predictor:
        spec = self.mapping(path, ("name",), ("source", "transform", "scale", "equals"))
        source = self.choice(path + ("source",), ("profile", "context")) if "source" in spec \
            else "profile"
        known = context if source == "context" else {**attributes, **features}
        name = self.reference(path + ("name",), known,
                              "context key" if source == "context" else "attribute or feature")
        vtype, values = _predictor_type(known[name], source)
        if "equals" in spec:
            if vtype == "vector":
                raise self.fail(path + ("equals",), f"'{name}' is a vector: no indicator of it")
            if "transform" in spec or "scale" in spec:
                raise self.fail(path, "an indicator ('equals') takes no transform or scale")
            equals = self.typed_value(path + ("equals",), vtype, values)
            return Predictor(name, source, "equals", equals=equals, path=path)
        if vtype not in NUMERIC_TYPES + ("vector",):
            raise self.fail(path + ("name",), f"'{name}' is {vtype}: use 'equals' to make an "
                                              f"indicator of it")
        transform = self.choice(path + ("transform",), TRANSFORMS) if "transform" in spec \
            else "identity"
        scale = 1.0
        if transform in ("scale", "recency"):
            if "scale" not in spec:
                raise self.fail(path, f"the {transform} transform needs 'scale'")
            scale = self.duration(path + ("scale",))
        elif "scale" in spec:
            raise self.fail(path + ("scale",), f"the {transform} transform takes no scale")
        return Predictor(name, source, transform, scale, path=path)

    def fallbacks(self, channels: dict[str, Channel], actions: tuple[Action, ...],
                  consent: dict[str, str | None]) -> dict[str, tuple[str, ...]]:
        path = ("fallbacks",)
        spec = self.mapping(path, open_keys=True)
        by_id = {a.id: a for a in actions}
        out = {}
        for ch_name in spec:
            if ch_name not in channels:
                raise self.fail(path + (ch_name,), f"unknown channel '{ch_name}'", at_key=True)
            ids = self.names(path + (ch_name,), by_id, "action")
            for i, action_id in enumerate(ids):
                offer = next((o for o in by_id[action_id].offers if o.channel == ch_name), None)
                if offer is None:
                    raise self.fail(path + (ch_name, i), f"action '{action_id}' is not offered "
                                                         f"on {ch_name}")
                self.fallback_fits(path + (ch_name, i), by_id[action_id], channels[ch_name],
                                   consent)
            out[ch_name] = ids
        for ch_name in channels:
            if ch_name not in out:
                raise self.fail(path, f"channel '{ch_name}' has no fallback (an empty list "
                                      f"means no action)")
        return out

    def fallback_fits(self, path: Path, action: Action, channel: Channel,
                      consent: dict[str, str | None]) -> None:
        """A refusal (a check added since catalogs could be saved) for a fallback that could
        show what a decision would not: the gateway serves fallbacks without rules or a
        profile, so to every customer, at any time (at the placements where each is offered,
        at most their top_k: core/request.py fallback_decision)."""
        where = f"fallback on {channel.name}: action '{action.id}'"
        if consent.get(action.purpose) is not None or action.purpose in channel.consent:
            reason = f"its purpose '{action.purpose}' needs consent, which a fallback cannot check"
        elif math.isfinite(action.valid_from) or math.isfinite(action.valid_until):
            reason = "it has a validity window, which a fallback cannot check"
        else:
            return
        self.refusals.append(self.src.error(path, f"{where}: {reason}",
                                            action_id=action.id))

    def timer(self, path: Path, events: dict[str, EventType]) -> Timer:
        spec = self.mapping(path, ("start", "after", "fire"), ("cancel",))
        start = self.events_named(path + ("start",), events)
        cancel = self.events_named(path + ("cancel",), events) if "cancel" in spec else ()
        fire = self.reference(path + ("fire",), events, "event type")
        required = [f.name for f in events[fire].fields if f.required]
        if required:
            raise self.fail(path + ("fire",), f"a timer fires '{fire}' without attributes, but "
                                              f"it requires {', '.join(required)}")
        if fire in start:
            raise self.fail(path + ("fire",), f"'{fire}' also starts the timer, so it would "
                                              f"re-arm itself forever")
        return Timer(path[-1], start, self.duration(path + ("after",)), cancel, fire)

    def no_timer_cycle(self, timers: tuple[Timer, ...]) -> None:
        """Refuse timers that arm each other in a loop (one firing an event that starts the
        next, the last's starting the first): they would fire forever, and a customer with a
        timer armed is never passivated. A timer that re-arms itself is refused in `timer`."""
        started_by: dict[str, list[int]] = {}
        for j, t in enumerate(timers):
            for event in t.start:
                started_by.setdefault(event, []).append(j)
        arms = [started_by.get(t.fire, []) for t in timers]
        done = [False] * len(timers)
        for first in range(len(timers)):
            if done[first]:
                continue
            # depth first, without recursion: `trail` is the path of timers being explored,
            # each with the next of the timers it arms to look at
            trail, on_trail = [[first, 0]], {first}
            while trail:
                i, nxt = trail[-1]
                if nxt == len(arms[i]):
                    trail.pop()
                    on_trail.discard(i)
                    done[i] = True
                    continue
                trail[-1][1] += 1
                j = arms[i][nxt]
                if j in on_trail:
                    path = [k for k, _ in trail]
                    names = " -> ".join(timers[k].name for k in path[path.index(j):] + [j])
                    self.refusals.append(self.fail(
                        ("timers", timers[i].name, "fire"),
                        f"'{timers[i].fire}' starts timer '{timers[j].name}': timers {names} "
                        f"arm each other, so they would fire forever"))
                    return
                if not done[j]:
                    trail.append([j, 0])
                    on_trail.add(j)

    def events_named(self, path: Path, events: dict[str, EventType]) -> tuple[str, ...]:
        """One event type or a list of them."""
        if isinstance(self.get(path), str):
            return (self.reference(path, events, "event type"),)
        names = self.names(path, events, "event type")
        if not names:
            raise self.fail(path, "must not be empty")
        return names


def _offered(channels: tuple[Channel, ...], actions: tuple[Action, ...]) -> dict[str, int]:
    """The actions offered on each channel."""
    offered = {c.name: 0 for c in channels}
    for action in actions:
        for offer in action.offers:
            offered[offer.channel] += 1
    return offered


def _most(weights: list[ContextWeight], depth: int = 0) -> float:
    """The most that context weights can multiply to on one request. Two whose `when` names
    different values of one context field never match together (a request holds one value):
    of such alternatives only the largest counts, the rest multiply as if they all matched.
    An upper bound, exact for one weight per value of a field; past _MAX_WEIGHT_SPLITS fields
    split in turn the weights left are multiplied (looser, still a bound)."""
    values: dict[str, set] = {}
    naming: Counter[str] = Counter()  # how many weights name each field
    for w in weights:
        naming.update(w.when.keys())
        for key, value in w.when.items():
            values.setdefault(key, set()).add(value)
    split = [key for key, seen in values.items() if len(seen) > 1]
    if not split or depth == _MAX_WEIGHT_SPLITS:
        return math.prod(w.weight for w in weights)
    key = max(split, key=naming.__getitem__)  # the most weights apart
    alternatives: dict[Any, list[ContextWeight]] = {}
    for w in weights:
        if key in w.when:
            alternatives.setdefault(w.when[key], []).append(w)
    return _most([w for w in weights if key not in w.when], depth + 1) * \
        max(_most(alike, depth + 1) for alike in alternatives.values())


def _to_float(number: int | float) -> float:
    """A YAML number as a float: an int beyond float range is infinite, not an OverflowError."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _written(value: Any) -> str:
    """A YAML scalar as the catalog's author wrote it: dates and times unquoted."""
    return value.isoformat() if isinstance(value, date) else repr(value)


def _predictor_type(decl: Any, source: str) -> tuple[str, tuple[str, ...] | None]:
    return decl.type, decl.values


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}",
            bool: f"{value!r}"}.get(type(value), repr(value))


def _did_you_mean(value: str, known: Any) -> str:
    import difflib
    close = difflib.get_close_matches(value, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
