"""The pure-Python/NumPy twin of `_kernel.pyx`: same API, same semantics, the tests' oracle.

It is written to be read, not to be fast: rules are evaluated by walking their syntax trees
(not the bytecode), so the compiler is checked too. Random draws come from the same
splitmix64 stream as the kernel's, so Thompson sampling agrees draw for draw.
"""
from __future__ import annotations

import math

import numpy as np

from . import rules
from .compiler import (CLOCK_SLOT, N_FACTORS, STAGE_VALUE, CompiledCatalog, Exploration,
                       Outcome, Reason, Teach, Transform, Update)
from .models import (clipped_weight, forget, observed, one_example_step, sigmoid,
                     standardized)
from .sampling import SplitMix64
from .state import EMPTY, HISTORY_EPOCH_S, profile_view

IMPLEMENTATION = "reference"


class CatalogView:
    def __init__(self, compiled: CompiledCatalog):
        self.c = compiled


class StateView:
    def __init__(self, values, ring_action, ring_channel, ring_outcome, ring_time, ring_head):
        self.values, self.ring_action, self.ring_channel = values, ring_action, ring_channel
        self.ring_outcome, self.ring_time, self.ring_head = ring_outcome, ring_time, ring_head


class ModelView:
    def __init__(self, mean, precision, positives, negatives, value_count, value_sum, inputs,
                 inputs_added, input_clips, covariance=None):
        self.mean, self.precision = mean, precision
        self.positives, self.negatives = positives, negatives
        self.value_count, self.value_sum = value_count, value_sum  # conversions' values
        self.inputs = inputs  # count, sum, sum of squares of each standardised input
        self.inputs_added = inputs_added  # what joined them, not forgotten: the delta's
        self.input_clips = input_clips  # inputs let in and clipped, forgotten (this shard's)
        self.covariance = covariance  # a full posterior's S (then `precision` is P)


class Workspace:
    """Output buffers for up to `capacity` decisions, and the random stream."""

    def __init__(self, compiled: CompiledCatalog, capacity: int, seed: int):
        n_actions, k = len(compiled.action_ids), max(compiled.max_top_k, 1)
        self.capacity = capacity
        self.out_action = np.zeros((capacity, k), np.int32)
        self.out_factors = np.zeros((capacity, k, N_FACTORS))
        self.out_selection = np.zeros((capacity, k))  # out_count 0: slot 0 holds P(nothing)
        self._logit = np.zeros(n_actions)  # Thompson's mean logit and spread per action
        self._spread = np.zeros(n_actions)
        self.out_count = np.zeros(capacity, np.int32)
        self.out_control = np.zeros(capacity, np.uint8)  # 1: held back as control
        self.reasons = np.zeros((capacity, n_actions), np.int8)
        self.factors = np.zeros((capacity, n_actions, N_FACTORS))
        self.predictors = np.zeros((capacity, compiled.n_predictors))
        # per action, its value rule's value before learning (for the decision memo)
        self.catalog_values = np.zeros((capacity, n_actions))
        self._rng = SplitMix64(seed)

    @property
    def rng_state(self) -> int:
        return self._rng.state

    @rng_state.setter
    def rng_state(self, state: int) -> None:
        self._rng.state = state


# -------------------------------------------------------------------------------------------
# Events


def apply_events(cat: CatalogView, st: StateView, rows, event_types, times, fields) -> None:
    c = cat.c
    for i in range(len(rows)):
        _apply_one(c, st.values[rows[i]], int(event_types[i]), float(times[i]), fields[i])


def _apply_one(c: CompiledCatalog, row: np.ndarray, etype: int, t: float, f) -> None:
    clock = row[CLOCK_SLOT]
    if clock != clock or t > clock:
        if clock == clock:
            for slot, inv_hl in zip(c.decayed_slots, c.decayed_inv_half_life):
                row[slot] *= 2.0 ** (-(t - clock) * inv_hl)
        row[CLOCK_SLOT] = clock = t
    for u in range(c.update_start[etype], c.update_start[etype + 1]):
        if not _when_matches(c, u, f):
            continue
        kind, slot = c.update_kind[u], c.update_slot[u]
        x = f[c.update_field[u]] if c.update_field[u] >= 0 else math.nan
        if kind == Update.COUNT:
            row[slot] += 1.0
        elif kind == Update.DECAYED_COUNT:
            row[slot] += 2.0 ** (-(clock - t) * c.update_inv_half_life[u])
        elif kind == Update.TIME_SINCE:
            if not row[slot] >= t:
                row[slot] = t
        elif x != x:  # the rest need a value; an absent optional field changes nothing
            continue
        elif kind == Update.SUM:
            row[slot] += x
        elif kind == Update.DECAYED_SUM:
            row[slot] += x * 2.0 ** (-(clock - t) * c.update_inv_half_life[u])
        elif kind == Update.LAST:
            if not row[slot + 1] > t:
                row[slot], row[slot + 1] = x, t
        elif kind == Update.MIN:
            if not row[slot] <= x:
                row[slot] = x
        elif kind == Update.MAX:
            if not row[slot] >= x:
                row[slot] = x


def _when_matches(c: CompiledCatalog, u: int, f) -> bool:
    if c.update_when_field[u] < 0:
        return True
    v = f[c.update_when_field[u]]
    return any(v == w for w in c.when_values[c.update_when_start[u]:c.update_when_end[u]])


# -------------------------------------------------------------------------------------------
# Decisions


def _input(c: CompiledCatalog, j: int, view: np.ndarray, ctx) -> float:
    return ctx[c.predictor_index[j]] if c.predictor_source[j] else view[c.predictor_index[j]]


def predictor_vector(c: CompiledCatalog, mv: ModelView, view: np.ndarray, ctx) -> np.ndarray:
    x = np.zeros(c.n_predictors)
    x[0] = 1.0
    for j in range(c.n_predictors - 1):
        v = _input(c, j, view, ctx)
        tf, param = c.predictor_transform[j], c.predictor_param[j]
        if tf == Transform.EQUALS:
            out = 1.0 if v == param else 0.0
        elif v != v:
            out = 0.0
        elif tf == Transform.LOG1P:
            out = math.log1p(v) if v > 0.0 else 0.0
        elif tf == Transform.SCALE:
            out = v / param
        elif tf == Transform.RECENCY:
            out = math.exp(-v / param) if v > 0.0 else 1.0
        elif tf == Transform.STANDARDIZE:
            out = standardized(v, *mv.inputs[:, j + 1])
        else:
            out = v
        # the kernel's comparisons, not min/max, so both clip the same way
        if out > c.predictor_limit:
            out = c.predictor_limit
        elif out < -c.predictor_limit:
            out = -c.predictor_limit
        x[j + 1] = out
    return x


def observe_inputs(c: CompiledCatalog, mv: ModelView, view: np.ndarray, ctx) -> None:
    """A decision's standardised inputs join their running statistics (after it used them),
    clipped by `observed` (at `clipped_weight`'s weight) unless their field declares both
    bounds (`predictor_clip`), and forgotten by `forget`; `inputs_added` sums them as they
    joined (the learner's delta)."""
    for j in range(c.n_predictors - 1):
        if c.predictor_transform[j] == Transform.STANDARDIZE:
            v = float(_input(c, j, view, ctx))
            if math.isfinite(v * v):
                joined = observed(v, *mv.inputs[:, j + 1]) if c.predictor_clip[j] else v
                w, seen, clips = clipped_weight(joined != v, *mv.input_clips[:, j + 1])
                mv.input_clips[:, j + 1] = seen, clips
                added = (w, w * joined, w * joined * joined)
                for row in range(3):
                    mv.inputs[row, j + 1] += added[row]
                    mv.inputs_added[row, j + 1] += added[row]
                mv.inputs[:, j + 1] = forget(*mv.inputs[:, j + 1])


def context_weights(c: CompiledCatalog, channel: int, ctx) -> np.ndarray:
    weights = np.ones(len(c.group_names))
    for w in range(len(c.weight_value)):
        if c.weight_channel[w] >= 0 and c.weight_channel[w] != channel:
            continue
        conds = range(c.weight_cond_start[w], c.weight_cond_start[w + 1])
        if not all(ctx[c.weight_cond_key[k]] == c.weight_cond_value[k] for k in conds):
            continue
        for g in range(len(weights)):
            if c.weight_group[w] < 0 or c.weight_group[w] == g:
                weights[g] *= c.weight_value[w]
    return weights


class _History:
    """What the contact policies need from the ring, per action."""

    def __init__(self, c: CompiledCatalog, st: StateView, row: int, channel: int, now: float):
        self.impressions: dict[int, int] = {}
        self.rejects: dict[int, list[float]] = {}
        self.last_accept: dict[int, float] = {}
        for e in range(c.history_size):
            a = int(st.ring_action[row, e])
            if a == EMPTY:
                continue
            t = float(st.ring_time[row, e]) + HISTORY_EPOCH_S
            outcome = st.ring_outcome[row, e]
            if outcome == Outcome.IMPRESSION:
                if st.ring_channel[row, e] == channel and t > now - c.impression_window[a]:
                    self.impressions[a] = self.impressions.get(a, 0) + 1
            elif outcome == Outcome.REJECT:
                self.rejects.setdefault(a, []).append(t)
            elif outcome in (Outcome.ACCEPT, Outcome.CONVERT):
                self.last_accept[a] = max(self.last_accept.get(a, -math.inf), t)

    def blocks(self, c: CompiledCatalog, a: int, now: float) -> Reason | None:
        if c.max_impressions[a] > 0 and self.impressions.get(a, 0) >= c.max_impressions[a]:
            return Reason.IMPRESSION_CAP
        if c.reject_count[a] > 0 and a in self.rejects:
            latest = max(self.rejects[a])
            recent = sum(1 for t in self.rejects[a] if t >= latest - c.reject_within[a])
            if recent >= c.reject_count[a] and now - latest < c.reject_suppress[a]:
                return Reason.REJECT_SUPPRESSION
        if c.accept_cooldown[a] > 0 and now - self.last_accept.get(a, -math.inf) < \
                c.accept_cooldown[a]:
            return Reason.ACCEPT_COOLDOWN
        return None


def decide(cat: CatalogView, st: StateView, mv: ModelView, ws: Workspace, rows, channels,
           placements, ctx, now, k_req) -> None:
    """Re-evaluate rows[i] for channels[i]/placements[i]; results land in ws, row i."""
    if len(rows) > ws.capacity:
        raise ValueError(f"{len(rows)} decisions do not fit a workspace of {ws.capacity}")
    for i in range(len(rows)):
        decide_one(cat, st, mv, ws, int(rows[i]), int(channels[i]), int(placements[i]), ctx[i],
                   float(now[i]), int(k_req[i]), i)


def normals(seed: int, n: int) -> np.ndarray:
    """The first n standard normals a kernel draws from seed."""
    rng = SplitMix64(seed)
    return np.array([rng.normal() for _ in range(n)], dtype=float)


def decide_one(cat: CatalogView, st: StateView, mv: ModelView, ws: Workspace, row: int,
               channel: int, placement: int, ctx, now: float, k_req: int, out: int = 0) -> None:
    c = cat.c
    view = profile_view(c, st.values[row], now)
    x = predictor_vector(c, mv, view, ctx)
    observe_inputs(c, mv, view, ctx)
    ws.predictors[out] = x
    weights = context_weights(c, channel, ctx)
    history = _History(c, st, row, channel, now)
    reasons = ws.reasons[out]
    factors = ws.factors[out]
    candidates: list[int] = []
    for a in range(len(c.action_ids)):
        frame = rules.Frame(view, ctx, c.action_attributes[a], now)
        reason = _filter(c, a, channel, placement, view, frame, history, now)
        if reason is not None:
            reasons[a] = reason
            continue
        value = rules.evaluate(c.rule_ast[a][STAGE_VALUE], frame, c.strings.intern)
        if not abs(value) <= c.value_limit:  # NaN and inf too
            reasons[a] = Reason.INVALID_VALUE
            continue
        ws.catalog_values[out, a] = value
        value = _learned_value(c, mv, c.model_index(a, channel), value)
        propensity = _propensity(c, mv, ws, a, channel, x)
        weight = weights[c.action_group[a]]
        priority = propensity * weight * value * c.lever[a]
        factors[a] = (propensity, weight, value, priority)
        if not _ranks(c, priority):
            reasons[a] = Reason.RESTRAINT
            continue
        reasons[a] = Reason.TOP_K
        candidates.append(a)
    k = _top_k(c, channel, placement, k_req)
    trial = _trial(c, _untried(c, mv, channel, reasons, factors), ws._rng) if k > 0 else None
    _select(c, ws, out, candidates, factors, k, trial)
    first = int(ws.out_action[out, 0]) if ws.out_count[out] else -1
    n_control = _control(c, ws, out, channel, reasons, factors, k)
    _selection(c, mv, ws, channel, reasons, factors, k, out, n_control, first)


# plain ints: numpy compares an int8 with an IntEnum member through slow attribute look-ups
SCORED = frozenset(int(r) for r in (Reason.RESTRAINT, Reason.TOP_K, Reason.SELECTED,
                                    Reason.GROUP_LIMIT))
SELECTION_TAIL = 6.0  # sigmas of a Thompson draw the selection's pruning allows for


def _ranks(c: CompiledCatalog, priority: float) -> bool:
    """Whether an action of this priority may be ranked: above 0 (a lever or context weight
    of 0 switches an action off, though 0 reaches the default threshold of 0) and at or above
    the restraint threshold; NaN never (the kernel's `_ranks`)."""
    return priority > 0.0 and priority >= c.restraint_threshold


def _bounds(c: CompiledCatalog, ws: Workspace, factors, a: int) -> tuple[float, float]:
    """The priorities between which a's re-runs fall but for SELECTION_TAIL-sigma draws."""
    if c.exploration != Exploration.THOMPSON:
        return factors[a, 3], factors[a, 3]
    w = factors[a, 1] * factors[a, 2] * c.lever[a]
    below = 0.0 if c.optimistic else SELECTION_TAIL  # an optimistic draw is never below
    return (sigmoid(ws._logit[a] - below * ws._spread[a]) * w,
            sigmoid(ws._logit[a] + SELECTION_TAIL * ws._spread[a]) * w)


def _active(c: CompiledCatalog, ws: Workspace, scored: list[int], factors, k: int,
            shown: list[int]) -> list[int]:
    """The scored actions a re-run can rank: those whose highest priority ranks (`_ranks`)
    and reaches the (k+1)-th highest lowest priority among the groups (each action of a group
    that allows several, whose low ranks too), as k+1 such rivals leave one ahead of it
    whatever the trial takes; and those the decision showed (the kernel's `_prune`)."""
    best_of_group: dict[int, float] = {}
    lows = []
    for a in scored:
        low = _bounds(c, ws, factors, a)[0]
        if not _ranks(c, low):
            continue
        g = int(c.action_group[a])
        if c.group_multiple[g]:
            lows.append(low)
        elif not best_of_group.get(g, math.nan) >= low:
            best_of_group[g] = low
    lows += best_of_group.values()
    lows.sort(reverse=True)
    bar = lows[k] if len(lows) >= k + 1 else c.restraint_threshold  # the lows all reach it
    highs = {a: _bounds(c, ws, factors, a)[1] for a in scored}
    return [a for a in scored if (_ranks(c, highs[a]) and highs[a] >= bar) or a in shown]
SELECTION_STREAM = 0xD1B54A32D192ED03  # xor'ed into the decision's stream for the re-runs


def _control_eligible(c: CompiledCatalog, reasons, factors, a: int) -> bool:
    """Whether a control decision may show `a`: it passed rules, validity, consent and
    contact policies and is worth something on this channel, whatever the models think."""
    return int(reasons[a]) in SCORED and factors[a, 1] * factors[a, 2] * c.lever[a] > 0.0


def _control(c: CompiledCatalog, ws: Workspace, out: int, channel: int, reasons, factors,
             k: int) -> int:
    """With the channel's control share, hold the decision back: it shows one action drawn
    uniformly from the control-eligible ones instead of the models' choice, or nothing when
    none is; the coin is tossed for every decision (the kernel's draws, in its order). How
    many actions control could have drawn from."""
    ws.out_control[out] = 0
    if k <= 0 or not c.control_share[channel] > 0.0:
        return 0
    eligible = [a for a in range(len(c.action_ids)) if _control_eligible(c, reasons, factors, a)]
    if not ws._rng.uniform() < c.control_share[channel]:
        return len(eligible)
    for b in range(len(c.action_ids)):
        if int(reasons[b]) in (int(Reason.SELECTED), int(Reason.GROUP_LIMIT)):
            reasons[b] = Reason.TOP_K
    ws.out_control[out] = 1
    if not eligible:
        ws.out_count[out] = 0
        return 0
    a = eligible[int(ws._rng.uniform() * len(eligible))]
    reasons[a] = Reason.SELECTED
    ws.out_action[out, 0] = a
    ws.out_factors[out, 0] = factors[a]
    ws.out_count[out] = 1
    return len(eligible)


def _selection(c: CompiledCatalog, mv: ModelView, ws: Workspace, channel: int, reasons,
               factors, k: int, out: int, n_control: int, first: int) -> None:
    """For each slot the decision filled, the probability that the policy shows that action
    there. The models' part: 1 when nothing was drawn at random, else the share of runs of
    the draws (Thompson's logits, the trial) that show it there: the decision's own (whose
    first pick was `first`) and `selection_samples` re-runs, from a stream of their own (the
    kernel's draws, in its order). With a control share s over n_control actions, the policy
    is the mixture: (1 - s) x the models' part, plus s / n_control at the first slot. A
    decision that shows nothing puts in slot 0 the probability that the policy shows nothing:
    off-policy estimators weigh it by that like any other. Its models' part is the share of
    runs that leave the first slot empty (exact when nothing was drawn at random or no slot
    was asked for); control shows nothing only when no action is control-eligible
    (n_control 0), so the mixture adds s then."""
    n = int(ws.out_count[out])
    held = bool(ws.out_control[out])
    # the decision's own draws are one run of the models: no models' estimate is 0 unless
    # control showed what they did not choose (for nothing: unless the models showed any)
    hits = [int(not held or (j == 0 and first == ws.out_action[out, 0])) for j in range(n)] \
        if n else [int(first < 0)]
    runs = 1
    thompson = c.exploration == Exploration.THOMPSON
    scored = [a for a, reason in enumerate(reasons.tolist()) if reason in SCORED]
    untried = _untried(c, mv, channel, reasons, factors)
    if k > 0 and (untried or (thompson and any(ws._spread[a] > 0.0 for a in scored))):
        runs += c.selection_samples
        _rerun(c, ws, scored, untried, factors, k, out, n, hits)
    share = c.control_share[channel]
    if n == 0:
        p = hits[0] / runs
        if share > 0.0:
            p = (1.0 - share) * p + (share if n_control == 0 else 0.0)
        ws.out_selection[out, 0] = p
        return
    for j in range(n):
        p = hits[j] / runs
        if share > 0.0:
            p = (1.0 - share) * p
            if j == 0 and _control_eligible(c, reasons, factors, int(ws.out_action[out, 0])):
                p += share / n_control
        ws.out_selection[out, j] = p


def _rerun(c: CompiledCatalog, ws: Workspace, scored: list[int], untried: list[int], factors,
           k: int, out: int, n: int, hits: list[int]) -> None:
    """Adds to `hits[j]` the re-runs of the models' draws that show the decision's j-th action
    at slot j; for a decision that showed nothing (n 0), to `hits[0]` those that show
    nothing."""
    thompson = c.exploration == Exploration.THOMPSON
    rng = SplitMix64(ws._rng.state ^ SELECTION_STREAM)
    active = _active(c, ws, scored, factors, k, ws.out_action[out, :n].tolist())
    for _ in range(c.selection_samples):
        sampled = {a: sigmoid(ws._logit[a] + ws._spread[a] * _draw(c, rng)) * factors[a, 1]
                   * factors[a, 2] * c.lever[a] if thompson else factors[a, 3] for a in active}
        slots: list[int] = []
        blocked: set[int] = set()

        def show(a: int) -> None:
            slots.append(a)
            sampled[a] = math.nan  # out of the ranking
            if not c.group_multiple[c.action_group[a]]:
                blocked.add(c.action_group[a])
        trial = _trial(c, untried, rng)
        if trial is not None:
            show(trial)
        while len(slots) < k:
            best = None
            for a in active:
                if c.action_group[a] not in blocked and _ranks(c, sampled[a]) \
                        and (best is None or sampled[a] > sampled[best]):
                    best = a
            if best is None:
                break
            show(best)
        for j in range(min(n, len(slots))):
            hits[j] += slots[j] == ws.out_action[out, j]
        if n == 0 and not slots:
            hits[0] += 1


def _untried(c: CompiledCatalog, mv: ModelView, channel: int, reasons, factors) -> list[int]:
    """The actions a trial may pick, none when trials are off: scored (ranked, under the
    restraint threshold, or, once the selection has run, SELECTED or GROUP_LIMIT), worth
    something and never accepted on the channel."""
    if c.trial_rate <= 0.0:
        return []
    return [a for a, reason in enumerate(reasons.tolist()) if reason in SCORED
            and factors[a, 1] * factors[a, 2] * c.lever[a] > 0.0
            and mv.positives[c.model_index(a, channel)] == 0.0]


def _trial(c: CompiledCatalog, untried: list[int], rng: SplitMix64) -> int | None:
    """With probability trial_rate, when there is one, an untried action drawn uniformly from
    rng (the kernel's draws, in its order)."""
    if not untried or not rng.uniform() < c.trial_rate:
        return None
    return untried[int(rng.uniform() * len(untried))]


def _filter(c: CompiledCatalog, a: int, channel: int, placement: int, view, frame,
            history: _History, now: float) -> Reason | None:
    if not (int(c.offered[a, channel]) >> placement) & 1:
        return Reason.NOT_IN_CHANNEL
    if not c.valid_from[a] <= now < c.valid_until[a]:
        return Reason.OUTSIDE_VALIDITY
    purpose = c.action_purpose[a]
    for slot in (c.purpose_slot[purpose], c.channel_consent_slot[channel, purpose]):
        if slot >= 0 and not rules.truth(view[slot]):
            return Reason.NO_CONSENT
    for stage, reason in enumerate((Reason.ELIGIBILITY, Reason.APPLICABILITY,
                                    Reason.SUITABILITY)):
        node = c.rule_ast[a][stage]
        if node is not None and not rules.truth(rules.evaluate(node, frame, c.strings.intern)):
            return reason
    return history.blocks(c, a, now)


def _propensity(c: CompiledCatalog, mv: ModelView, ws: Workspace, a: int, channel: int,
                x: np.ndarray) -> float:
    m = c.model_index(a, channel)
    z = var = 0.0
    for i in range(len(x)):  # in order, as the kernel adds (sum() may compensate)
        z += mv.mean[m, i] * x[i]
    if c.exploration != Exploration.NONE:
        if mv.covariance is not None:
            var = max(_quadratic(mv.covariance[m], x), 0.0)  # NaN stays NaN, as in the kernel
        else:
            for i in range(len(x)):
                var += x[i] * x[i] / mv.precision[m, i]
        spread = math.sqrt(c.explore_scale[a] * var)
        if c.exploration == Exploration.THOMPSON:
            ws._logit[a], ws._spread[a] = z, spread
            z += spread * _draw(c, ws._rng)
        else:
            z += c.ucb_alpha * spread
    return sigmoid(z)


def _draw(c: CompiledCatalog, rng: SplitMix64) -> float:
    """A Thompson draw, in posterior deviations from the mean: a standard normal, or, optimistic
    (catalog `optimistic`), its positive part (the kernel's `_draw`)."""
    e = rng.normal()
    if not c.optimistic:
        return e
    return e if e > 0.0 else 0.0


def _learned_value(c: CompiledCatalog, mv: ModelView, m: int, value: float) -> float:
    """The catalog's value for this customer, weighed as value_prior_weight conversions,
    blended with the values the model's conversions reported (as is until there are any).
    Weighed by shares, not summed then divided: prior_weight x value may overflow."""
    k = c.value_prior_weight
    if k < 0.0 or mv.value_count[m] == 0.0:
        return value
    total = k + mv.value_count[m]
    return value * (k / total) + mv.value_sum[m] / total


def _quadratic(S: np.ndarray, x: np.ndarray) -> float:
    """x' S x, row by row as the kernel adds."""
    total = 0.0
    for i in range(len(x)):
        row = 0.0
        for j in range(len(x)):
            row += S[i, j] * x[j]
        total += x[i] * row
    return total


def _top_k(c: CompiledCatalog, channel: int, placement: int, k_req: int) -> int:
    k = int(c.placement_top_k[channel, placement])
    return k_req if 0 < k_req < k else k


def _select(c: CompiledCatalog, ws: Workspace, out: int, candidates: list[int], factors,
            k: int, trial: int | None) -> None:
    """The trial first if any, then highest priority first (ties: catalog order), at most one
    per group unless allowed."""
    ranked = sorted((a for a in candidates if a != trial), key=lambda a: (-factors[a, 3], a))
    blocked: set[int] = set()
    n = 0
    for a in ([trial] if trial is not None else []) + ranked:
        g = c.action_group[a]
        if g in blocked:
            ws.reasons[out, a] = Reason.GROUP_LIMIT
            continue
        if n == k:
            continue  # stays TOP_K
        ws.reasons[out, a] = Reason.SELECTED
        ws.out_action[out, n] = a
        ws.out_factors[out, n] = factors[a]
        n += 1
        if not c.group_multiple[g]:
            blocked.add(g)
    ws.out_count[out] = n


# -------------------------------------------------------------------------------------------
# Outcomes


def predictors(cat: CatalogView, st: StateView, mv: ModelView, rows, ctx, now, out) -> None:
    """Model inputs for customers as they are now (for outcomes without a cached decision)."""
    for i in range(len(rows)):
        view = profile_view(cat.c, st.values[rows[i]], float(now[i]))
        out[i] = predictor_vector(cat.c, mv, view, ctx[i])


def record_outcomes(cat: CatalogView, st: StateView, mv: ModelView, rows, actions, channels,
                    outcomes, times, x, values, teach, refused_at) -> int:
    """History for every outcome, learning for those that are not impressions, as far as
    `teach` (Teach's bits) lets it: the label, and for a conversion with a value, not NaN,
    the value; the number of updates refused because they would leave a model not finite
    (the model is left as is, and the value not learned), each marked 1 in `refused_at` (0
    for the others). The engine bounds a value before (engine.py's `_bounded_value` says
    why)."""
    c = cat.c
    refused = 0
    for i in range(len(rows)):
        refused_at[i] = 0
        row, a, ch, outcome = int(rows[i]), int(actions[i]), int(channels[i]), int(outcomes[i])
        head = st.ring_head[row]
        if not 0 <= head < c.history_size:  # as the kernel: a damaged head writes entry 0
            head = 0
        st.ring_action[row, head] = a
        st.ring_channel[row, head] = ch
        st.ring_outcome[row, head] = outcome
        st.ring_time[row, head] = int(math.floor(times[i] - HISTORY_EPOCH_S))
        st.ring_head[row] = (head + 1) % c.history_size
        if outcome == Outcome.IMPRESSION:
            continue
        y = 1.0 if outcome in (Outcome.ACCEPT, Outcome.CONVERT) else 0.0
        m = c.model_index(a, ch)
        if teach[i] & Teach.LABEL:
            learn = _learn_diagonal if mv.covariance is None else _learn_full
            with np.errstate(all="ignore"):  # overflow is what the check in `learn` is for
                if not learn(mv, m, x[i], y):
                    refused_at[i] = 1
                    refused += 1
                    continue
            if y:
                mv.positives[m] += 1.0
            else:
                mv.negatives[m] += 1.0
        if outcome == Outcome.CONVERT and teach[i] & Teach.VALUE and math.isfinite(values[i]):
            mv.value_count[m] += 1.0
            mv.value_sum[m] += values[i]
    return refused


def _learn_diagonal(mv: ModelView, m: int, x: np.ndarray, y: float) -> bool:
    """The one-example moment match under a diagonal posterior (models.py); False, the model
    untouched, when the result would not be finite."""
    z0 = s = 0.0
    for j in range(len(x)):
        z0 += mv.mean[m, j] * x[j]
        s += x[j] * x[j] / mv.precision[m, j]
    r, w = one_example_step(z0, s, y) if math.isfinite(z0 + s) else (math.nan, math.nan)
    precision, mean = np.empty(len(x)), np.empty(len(x))
    for j in range(len(x)):
        mean[j] = mv.mean[m, j] + r * x[j] / mv.precision[m, j]
        precision[j] = mv.precision[m, j] + x[j] * x[j] * w
    if not (np.isfinite(precision).all() and np.isfinite(mean).all()):
        return False
    mv.precision[m], mv.mean[m] = precision, mean
    return True


def _learn_full(mv: ModelView, m: int, x: np.ndarray, y: float) -> bool:
    """The one-example moment match under a full posterior (models.py): the mean moves by r
    along u = S x, P gains w x x' and S loses w u u' / (1 + w s) (Sherman-Morrison)."""
    d = len(x)
    S, P = mv.covariance[m], mv.precision[m]
    z0 = s = 0.0
    u = np.empty(d)
    for i in range(d):
        z0 += mv.mean[m, i] * x[i]
        u[i] = 0.0
        for j in range(d):
            u[i] += S[i, j] * x[j]
        s += x[i] * u[i]
    if s < 0.0:  # rounding in a near-singular S
        s = 0.0
    r, w = one_example_step(z0, s, y) if math.isfinite(z0 + s) else (math.nan, math.nan)
    shrink = w / (1.0 + w * s)
    mean, precision, cov = np.empty(d), np.empty((d, d)), np.empty((d, d))
    for i in range(d):
        mean[i] = mv.mean[m, i] + r * u[i]
        for j in range(d):
            precision[i, j] = P[i, j] + w * x[i] * x[j]
            cov[i, j] = S[i, j] - shrink * u[i] * u[j]
    if not (np.isfinite(mean).all() and np.isfinite(precision).all()
            and np.isfinite(cov).all()):
        return False
    mv.mean[m], P[:], S[:] = mean, precision, cov
    return True
