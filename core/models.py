"""Adaptive propensity models: Bayesian logistic regression with a diagonal Gaussian posterior.

Chapelle & Li (2011), "An Empirical Evaluation of Thompson Sampling", Algorithm 3, taken
online, one example at a time, by assumed density filtering (Opper 1998; the update of
Graepel et al. 2010's AdPredictor): the new Gaussian has the mean and variance of the exact
posterior, the prior N(m, 1/q) times the example's likelihood. The likelihood depends on the
weights only through the example's logit z = m'.x, so only the logit's distribution changes,
N(z0, s) with z0 = m.x and s = sum(x_i^2 / q_i), and the weights follow it along x/q. With the
probit approximation sigmoid(z) ~ Phi(k z), k^2 = pi/8 (MacKay 1992), its moments have closed
forms; with t = 2y - 1, c = t k / sqrt(1 + k^2 s), u = c z0, v = phi(u) / Phi(u)::

    r = c v,  w = k^2 v (v + u) / (1 + k^2 s (1 - v (v + u)))     # `one_example_step`
    m_i <- m_i + r x_i / q_i                  # the logit's mean moves to z0 + s r
    q_i <- q_i + x_i^2 w                      # the diagonal of P + w x x'

Under a full posterior (precision P, covariance S), the mean moves by r S x and P gains
w x x', and the logit's variance shrinks to s / (1 + w s), the exact posterior's. A diagonal
posterior keeps the diagonal of P + w x x', as the Laplace update did: its logit's variance
is then sum(a_i / (1 + w a_i)), a_i = x_i^2 / q_i, which equals s / (1 + w s) only for one
active input.

Before, the update was the one-example MAP with the Laplace curvature p(1-p) at it (and
before that, one Newton step). The mode and the curvature at it describe a skewed posterior
badly where one example is most informative, when the model is unsure (s large): an accept
on an arm the model thought unlikely moved the logit only to the mode, and a reject at a low
p taught the variance almost nothing. Matching moments keeps the mean and variance the
posterior has, and costs a closed form instead of the mode's root search. Measured on the
bench.learning reduction (5 datasets, 5 shuffles x 4 seeds): the mean online reward rose on
every dataset, at once and 100 rounds late (digits +0.02, wine +0.014, image_segments +0.003).

Exploration samples the logit, which is Gaussian under a diagonal posterior:
m . x + sqrt(s * sum(x_i^2 / q_i)) * N(0, 1), where s is the catalog's variance scale (full
variance, s = 1, over-explores with many features; see catalog.DEFAULT_VARIANCE_SCALE). With
the catalog's `optimistic` (May et al. 2012) the draw is the normal's positive part, never
below the mean.

Statistics merge across shards as natural parameters: precision q and precision-weighted mean
q*m add. A shard keeps its posterior and the published base it started from; `delta()` is what
it learned since, and a learner adds the deltas of every shard to the base: each example adds
x^2 w to q, and q*m moves by what the update moved it.

A catalog can ask for a full-covariance posterior instead (`models.posterior`, for up to
catalog.FULL_POSTERIOR_MAX_INPUTS inputs; "auto" takes it up to FULL_POSTERIOR_AUTO_INPUTS):
the precision is then a matrix P per model, and the same one-example step moves the mean by
r along S x, S = inv(P), with s = x' S x (the logit's moments do not depend on the kind of
posterior). Correlated predictors then share what an example teaught instead of each taking
all of it. The precision still adds across shards (P += w x x');
the kernels keep S current between publishes by Sherman-Morrison, and a merge or adopt
computes it again from P for every model whose P changed, so rounding in the rank-one updates
does not pile up. x' S x can round below zero: it counts as zero (kernel and twin alike).

A posterior that is not finite never heals (q*m of an infinite q is NaN) and a learner would
publish it to every shard, so nothing non-finite gets in: the kernels refuse such an update,
`merge` refuses such rows of a delta, and both count what they refused in `ModelTable.refused`.
Nor does what no outcome can make (a buggy shard's delta): `merge` also refuses the rows of a
delta that take counts or a precision's diagonal back (a precision taken near zero turned its
natural mean into a mean of -7e17), and those whose merged precision matrix is not positive
definite (its inverse has variances below zero), as `sound_rows` says.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .compiler import CompiledCatalog
from .sampling import SplitMix64


PROBIT_SCALE2 = math.pi / 8.0  # k^2 of the probit approximation sigmoid(z) ~ Phi(k z)
# below it phi(u) / Phi(u) takes its asymptotic series (erfc would underflow past u ~ -38)
MILLS_ASYMPTOTIC = -35.0


MIN_RELATIVE_VARIANCE = 1e-12  # below it (times 1 + mean^2) an input has no spread to scale by
# A standardised input's statistics (count, sum, sum of squares) are shared by every shard and
# every customer: one context value of 1e12 (the input bound) among values near 50 set the
# deviation to 1e9 and every later input standardised to about 0, for everyone. Two defences:
# - Once they hold STANDARDIZE_WARMUP inputs, an input joins them clipped to mean +-
#   STANDARDIZE_CLIP_SDS deviations (`observed`, at the shard that saw it). One hostile value
#   then moves the mean by at most 3 deviations / n and widens the variance by a factor of at
#   most about 1 + 8 / n (n the count). Three deviations clip 0.3% of normal inputs (a heavier
#   tail more: the statistics then describe its bulk, which is what scaling needs). The spread
#   the clip allows is floored at 1e-3 x (1 + |mean|), so that an input constant so far can
#   still start to vary. Before the warm-up the values enter as they are: only the catalog's
#   min and max of the field bound them then, as they bound how far a share of hostile values
#   over 10% widens the deviation (below). They are not required (the catalogs the bench and
#   the tests build standardise unbounded context fields, and an author may know no bound):
#   the README asks for them for an input a client sends. An input whose context field
#   declares both is not clipped at all (the compiler's `predictor_clip`): its bounds already
#   bound what a value can do, and the clip lost a sparse input's spread (a flag set in 5% of
#   decisions had every 1 clipped, each narrowing the window, until its deviation was 0.0008).
# - The clip alone does not hold: every clipped value widens the window the next is clipped
#   to, and sums that never forget keep what an attack did. A steady share e of values at the
#   bound settles at a deviation (1 - e) / sqrt(1 - 10 e) times the honest one below e = 10%
#   (1.34 at 5%) and grows without bound past it; a burst of k values widens it by about
#   (1 + k / n)^4 (20,000 after 10,000 honest ones: 10 -> 804), and honest values after it
#   shrank it only as their share grew (still 236 after 500,000 more). So the count is capped
#   at STANDARDIZE_MAX_COUNT (`forget`): past it, the sums are scaled down to that count as a
#   value joins (at the shard) or a delta is merged (at the learner), which makes them an
#   exponentially weighted window of about the cap's last values. An attack's effect then
#   decays by a factor e per cap of honest values after it, and a burst widens the deviation by
#   at most about e^(4 k / cap). 10,000 keeps the sampling error of the deviation near 0.7%
#   (1 / sqrt(2 x cap)), small against the scale a model learns, and a share of hostile
#   values bounded as above, not growing with the history.
# - Forgetting pins the count at the cap, so each clipped value of a burst widens the variance
#   by the same 1 + 8 / cap and a burst grows it exponentially (20,000 at the bound after
#   honest ones: deviation 10 -> 169,244; 40,000: 1.5e11). So a shard counts the share of
#   clipped values among those it let in, forgotten as the statistics are (`clipped_weight`,
#   its `ModelTable.input_clips`, not shared: the clipping happens where it counts), and past
#   STANDARDIZE_CLIPPED_SHARE (10%) a clipped value joins at the weight that holds their
#   total weight to that share: once the first thousand-odd of a burst have joined, it widens
#   the deviation by some 1.7x per cap of values (20,000: 10 -> 82; 40,000: 227), and a
#   steady 20% share settles near 5x instead of growing; a share under 10% joins as before.
#   The price: an honest level shift is a burst too, so an input whose level moves 100x (a
#   new currency) is followed within some 100,000 values (40,000 at full weight). A shard
#   that has seen few values yet (a new one, after a switch) weighs its first clipped ones low.
STANDARDIZE_WARMUP = 32.0
STANDARDIZE_CLIP_SDS = 3.0
STANDARDIZE_MIN_SPREAD2 = 1e-6  # the floor of the clip's variance, times 1 + mean^2
STANDARDIZE_MAX_COUNT = 10_000.0  # past it the statistics forget (see above)
STANDARDIZE_CLIPPED_SHARE = 0.1  # past it clipped values join at a lower weight (see above)


def standardized(v: float, count: float, total: float, squares: float) -> float:
    """v by the running mean and deviation of the inputs seen before it (from their count, sum
    and sum of squares, which add across shards); centred only until it has a spread."""
    if not count > 0.0:
        return v
    mean = total / count
    var = squares / count - mean * mean
    out = v - mean
    if count >= 2.0 and var > MIN_RELATIVE_VARIANCE * (1.0 + mean * mean):
        out = out / math.sqrt(var)
    return out


def observed(v: float, count: float, total: float, squares: float) -> float:
    """What input v adds to a standardised input's statistics (count, sum, sum of squares):
    v itself during the warm-up, then v clipped to the statistics' mean +- STANDARDIZE_CLIP_SDS
    deviations (the kernel's `_observed`, operation for operation)."""
    if not count >= STANDARDIZE_WARMUP:
        return v
    mean, half = _window(count, total, squares)
    if v < mean - half:
        return mean - half
    if v > mean + half:
        return mean + half
    return v


def _window(count: float, total: float, squares: float) -> tuple[float, float]:
    """The mean of the statistics and the half-width of the clip around it."""
    mean = total / count
    var = squares / count - mean * mean
    floor = STANDARDIZE_MIN_SPREAD2 * (1.0 + mean * mean)
    return mean, STANDARDIZE_CLIP_SDS * math.sqrt(var if var > floor else floor)


def forget(count: float, total: float, squares: float) -> tuple[float, float, float]:
    """Statistics holding more than STANDARDIZE_MAX_COUNT inputs scaled down to that count
    (mean and variance kept); the kernel's `_observe_inputs`, operation for operation."""
    if count > STANDARDIZE_MAX_COUNT:
        r = STANDARDIZE_MAX_COUNT / count
        return STANDARDIZE_MAX_COUNT, total * r, squares * r
    return count, total, squares


def clipped_weight(clipped: bool, seen: float, clips: float) -> tuple[float, float, float]:
    """(weight, seen, clips): the weight an input joins the statistics at, and a shard's count
    of the inputs it let in and of those clipped, this one added and forgotten down to
    STANDARDIZE_MAX_COUNT; the kernel's `_observe_inputs`, operation for operation."""
    seen += 1.0
    if clipped:
        clips += 1.0
    if seen > STANDARDIZE_MAX_COUNT:
        r = STANDARDIZE_MAX_COUNT / seen
        seen = STANDARDIZE_MAX_COUNT
        clips *= r
    if clipped and clips > STANDARDIZE_CLIPPED_SHARE * seen:
        return STANDARDIZE_CLIPPED_SHARE * seen / clips, seen, clips
    return 1.0, seen, clips


def merged_inputs(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Standardised inputs' statistics plus a shard's delta of them (the inputs it let in, each
    clipped there), then forgotten down to STANDARDIZE_MAX_COUNT. What one merge can do is
    bounded, not the delta's mean clipped (a shard whose inputs differ from the others', a
    region or a currency, is part of the population): a delta counts at most the cap's inputs
    (its mean and spread kept), and past the warm-up the merged mean and spread at most what
    that many inputs each clipped to the growing window could make them (`_held`), which an
    honest shard's delta is within, and one of a shard that let values in as they are (not on
    the published statistics yet, its own warming up) is held to."""
    n = delta[0]
    share = np.where(n > STANDARDIZE_MAX_COUNT, STANDARDIZE_MAX_COUNT / np.maximum(n, 1.0), 1.0)
    out = base + delta * share
    past = (base[0] >= STANDARDIZE_WARMUP) & (n > 0.0) & np.isfinite(out).all(axis=0)
    for j in np.flatnonzero(past).tolist():
        out[:, j] = _held(*(float(v) for v in base[:, j]), *(float(v) for v in out[:, j]))
    over = out[0] > STANDARDIZE_MAX_COUNT
    out[:, over] *= STANDARDIZE_MAX_COUNT / out[0, over]
    out[0, over] = STANDARDIZE_MAX_COUNT
    return out


def _held(count: float, total: float, squares: float, n: float, s: float, q: float
          ) -> tuple[float, float, float]:
    """Statistics (n, s, q) that add inputs to (count, total, squares), their mean and variance
    held to what those inputs could make them joining one by one, each clipped as `observed`
    clips it: the N-th widens the variance by at most 1 + 8 / N, so all by g = (n / count)^8,
    and moves the mean by at most 3 deviations (at most sqrt(g) times the first) / N, so all by
    3 sqrt(g) deviations x log(n / count)."""
    mean, half = _window(count, total, squares)
    growth = (n / count) ** 8
    shift = half * math.sqrt(growth) * math.log(n / count)
    most = growth * (half / STANDARDIZE_CLIP_SDS) ** 2
    m = s / n
    var = q / n - m * m
    if abs(m - mean) <= shift and 0.0 <= var <= most:  # negative: the delta's rounding
        return n, s, q
    m = min(max(m, mean - shift), mean + shift)
    var = min(max(var, 0.0), most)
    return n, n * m, n * (var + m * m)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -700.0 else 0.0


def mills_moments(u: float) -> tuple[float, float, float]:
    """(v, h, 1 - h): v = phi(u) / Phi(u), the inverse Mills ratio of the standard normal, and
    h = v (v + u), the share of its variance a normal loses when cut at -u (the kernel's
    `_mills_moments`). Below MILLS_ASYMPTOTIC, where erfc underflows, v + u and 1 - h come
    straight from their series in a = -u: as differences of near-equal numbers they lose
    their digits (1 - h was half wrong at u = -1e4, and h went past 1 further out)."""
    if u > MILLS_ASYMPTOTIC:
        v = 0.3989422804014327 * math.exp(-0.5 * u * u) / (0.5 * math.erfc(
            -u * 0.7071067811865476))
        h = v * (v + u)
        rest = 1.0 - h
        if rest < 0.0:  # h < 1 exactly: rounding
            rest = 0.0
        return v, h, rest
    a = -u
    b = 1.0 / (a * a)
    gap = (1.0 - b * (2.0 - b * (10.0 - 74.0 * b))) / a  # v + u
    rest = b * (1.0 - b * (6.0 - b * (50.0 - 518.0 * b)))
    return a + gap, 1.0 - rest, rest


def one_example_step(z0: float, s: float, y: float) -> tuple[float, float]:
    """(r, w): one example's moment-matched update of a logit N(z0, s) (module docstring). The
    logit's mean moves by s r, the precision gains w x x', so that precisions still add
    across shards, and under a full posterior the logit's variance shrinks to s / (1 + w s),
    the exact posterior's; w is in [0, k^2]. The kernel
    (`_one_example_step`) runs the same operations in order."""
    t = 1.0 if y else -1.0
    c = t * math.sqrt(PROBIT_SCALE2 / (1.0 + PROBIT_SCALE2 * s))
    v, h, rest = mills_moments(c * z0)
    return c * v, PROBIT_SCALE2 * h / (1.0 + PROBIT_SCALE2 * s * rest)


class BayesianLogit:
    """One adaptive model, River style: `learn_one(x, y)` and `predict_one(x)`, seeded.

    >>> model = BayesianLogit(n_features=2, prior_mean=[-2.0, 0.0], seed=7)
    >>> for _ in range(200):
    ...     _ = model.learn_one([1.0, 1.0], True).learn_one([1.0, 0.0], False)
    >>> model.predict_one([1.0, 1.0]) > 0.8 > 0.2 > model.predict_one([1.0, 0.0])
    True
    """

    def __init__(self, n_features: int, prior_mean=None, prior_precision: float = 1.0,
                 variance_scale: float = 0.1, seed: int = 0):
        self.n_features = n_features
        self.prior_precision = prior_precision
        self.variance_scale = variance_scale
        self.seed = seed
        self.mean = np.zeros(n_features) if prior_mean is None else \
            np.array(prior_mean, np.float64)
        self.precision = np.full(n_features, float(prior_precision))
        self._rng = SplitMix64(seed)

    def learn_one(self, x, y: bool) -> "BayesianLogit":
        x = np.asarray(x, np.float64)
        r, w = one_example_step(float(self.mean @ x), float((x * x / self.precision).sum()),
                                float(y))
        self.mean += r * x / self.precision
        self.precision += x * x * w
        return self

    def predict_one(self, x) -> float:
        """The posterior-mean probability of a positive outcome."""
        return sigmoid(float(self.mean @ np.asarray(x, np.float64)))

    def sample_one(self, x) -> float:
        """A Thompson draw of the probability."""
        x = np.asarray(x, np.float64)
        sd = math.sqrt(self.variance_scale * float((x * x / self.precision).sum()))
        return sigmoid(float(self.mean @ x) + sd * self._rng.normal())


# Per-model sums that add as they are: outcomes counted, and the values conversions reported.
COUNTS = ("positives", "negatives", "value_count", "value_sum")
# A shard's delta is a later total less an earlier mark, which sums of its own move (a take while
# a sync is in flight: take_synced), each rounded: below zero by that share of the learner's
# total is rounding (a value_sum of -1.1e-13 on a few hundred was seen), not a value taken back.
# Counts of outcomes grow by whole ones, exact in a float: they get no such allowance
ROUNDING_SHARE = 1e-9
ROUNDED = np.array([name == "value_sum" for name in COUNTS])
# A delta's statistics, in the order of ModelDelta's fields
DELTA_STATS = ("precision_mean", "precision", *COUNTS, "inputs")


class DeltaOrigin(NamedTuple):
    """Which shard sent a delta: its name, its model sync's incarnation (random, one a
    process) and the delta's number in that incarnation. A sync that timed out may have been
    merged, so its delta is sent again as itself, and the learner merges each origin once."""

    shard: str
    incarnation: str
    sequence: int


# A delta's statistics that have a row per model
ROW_STATS = ("precision_mean", "precision", *COUNTS)


@dataclass
class ModelDelta:
    """Learning between two points in time, as natural-parameter increments (they add).

    Of every model (`rows` None: the per-model arrays have a row per model), or of the models
    at `rows` (ascending, of `n_models`) only: a shard's sync carries the models it learnt in,
    not the whole table. Pickled, such a delta keeps its per-model arrays under another name
    (`__getstate__`), so that a learner of an older release, which reads every delta as dense,
    raises on it rather than adding its rows to the first models; a dense one pickles as it
    always did, which such a learner takes."""

    precision_mean: np.ndarray  # d(P m), shape (n_models, n_predictors)
    precision: np.ndarray  # d(P): (n_models, n_predictors), or a matrix per model when full
    positives: np.ndarray  # outcomes counted, shape (n_models,)
    negatives: np.ndarray
    value_count: np.ndarray  # conversions that reported a value, shape (n_models,)
    value_sum: np.ndarray  # the values they reported
    inputs: np.ndarray  # standardised inputs seen: count, sum, squares; shape (3, n_predictors)
    # set by the shard that sends it (shard/modelsync.py); a sum or a remap is a new delta
    origin: DeltaOrigin | None = field(default=None, compare=False)
    rows: np.ndarray | None = field(default=None, compare=False)
    n_models: int = field(default=0, compare=False)
    # whether its sender adopts a version published as rows (control/learner.py PublishedRows):
    # an older shard's delta unpickles without it
    takes_rows: bool = field(default=False, compare=False)
    # the learner process (incarnation) whose version its sender holds, set as it is sent:
    # rows changed since a version are answered only to a holder of that process's version
    # (a restarted learner may publish the same number again with other models)
    based_on: str | None = field(default=None, compare=False)

    def __add__(self, other: "ModelDelta") -> "ModelDelta":
        return added(self, other, 1.0)

    def learned(self) -> bool:
        """Whether any outcome, value or standardised input was seen (else nothing to send)."""
        return any(getattr(self, name).any() for name in (*COUNTS, "inputs"))

    def model_rows(self) -> np.ndarray:
        """The models the per-model arrays' rows are."""
        return np.arange(len(self.positives)) if self.rows is None else self.rows

    def dense(self) -> "ModelDelta":
        """The same learning with a row per model (zeros where it has none), origin kept."""
        if self.rows is None:
            return self
        stats = []
        for name in ROW_STATS:
            part = getattr(self, name)
            whole = np.zeros((self.n_models,) + part.shape[1:])
            whole[self.rows] = part
            stats.append(whole)
        return ModelDelta(*stats, self.inputs, origin=self.origin, takes_rows=self.takes_rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.rows is not None:
            state["row_stats"] = tuple(state.pop(name) for name in ROW_STATS)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)  # an older shard's has no rows, n_models or takes_rows: defaults
        state.update(zip(ROW_STATS, state.pop("row_stats", ())))
        self.__dict__.update(state)


def added(a: ModelDelta, b: ModelDelta, sign: float) -> ModelDelta:
    """a + sign * b, over the models either has rows for (dense if both are)."""
    if a.rows is None and b.rows is None:
        return ModelDelta(*(getattr(a, name) + sign * getattr(b, name)
                            for name in DELTA_STATS))
    a_rows, b_rows = a.model_rows(), b.model_rows()
    rows = np.union1d(a_rows, b_rows)
    at_a, at_b = np.searchsorted(rows, a_rows), np.searchsorted(rows, b_rows)
    stats = []
    for name in ROW_STATS:
        part = getattr(a, name)
        out = np.zeros((len(rows),) + part.shape[1:])
        out[at_a] = part
        out[at_b] += sign * getattr(b, name)
        stats.append(out)
    return ModelDelta(*stats, a.inputs + sign * b.inputs, rows=rows,
                      n_models=max(_size(a), _size(b)), takes_rows=a.takes_rows)


def _size(delta: ModelDelta) -> int:
    return len(delta.positives) if delta.rows is None else delta.n_models


def diagonal(precision: np.ndarray) -> np.ndarray:
    """The per-predictor precisions: the array itself, or each matrix's diagonal."""
    return precision if precision.ndim == 2 else np.diagonal(precision, axis1=1, axis2=2)


def natural_mean(mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """P m per model, for a diagonal or a full precision."""
    if precision.ndim == 2:
        return precision * mean
    return np.einsum("nij,nj->ni", precision, mean)


def solve_rows(precision: np.ndarray, natural: np.ndarray) -> np.ndarray:
    """The mean m with P m = natural, per model; NaN for a model whose P is singular."""
    if precision.ndim == 2:
        return natural / precision
    try:
        return np.linalg.solve(precision, natural[..., None])[..., 0]
    except np.linalg.LinAlgError:  # one singular matrix fails the batch: find it
        out = np.full_like(natural, np.nan)
        for i in range(len(natural)):
            try:
                out[i] = np.linalg.solve(precision[i], natural[i])
            except np.linalg.LinAlgError:
                pass
        return out


def inverse(precision: np.ndarray) -> np.ndarray:
    """inv(P) per model (the kernels' S); NaN for a singular P (`merge` refuses those)."""
    try:
        return np.linalg.inv(precision)
    except np.linalg.LinAlgError:
        out = np.full_like(precision, np.nan)
        for i in range(len(precision)):
            try:
                out[i] = np.linalg.inv(precision[i])
            except np.linalg.LinAlgError:
                pass
        return out


def as_matrices(precision: np.ndarray) -> np.ndarray:
    """Per-predictor precisions as diagonal matrices (matrices stay as they are)."""
    if precision.ndim == 3:
        return precision.copy()
    out = np.zeros(precision.shape + precision.shape[-1:])
    idx = np.arange(precision.shape[1])
    out[:, idx, idx] = precision
    return out


def per_model(array: np.ndarray) -> np.ndarray:
    """A model's statistics as one row (its vector, or its matrix flattened)."""
    return array.reshape(array.shape[0], int(np.prod(array.shape[1:])))


def sound_rows(mean: np.ndarray, precision: np.ndarray, *counts: np.ndarray,
               positive: bool = True) -> np.ndarray:
    """Per model, whether its statistics can be a posterior's (`positive`) or a delta's: all
    finite, and nothing below zero that only ever grows. Outcomes and conversions' values (at
    least 0: engine.py's CONVERSION_VALUE) only add to the counts, and nothing decays a model
    (only the standardised inputs' statistics forget, and they are no model's), so no count of
    either is negative. Each example adds x_i^2 w, w >= 0, to the precision's diagonal, so a
    delta's diagonal, a later total less an earlier one, is not negative either (rounding
    keeps that: a sum of terms >= 0 rounds to no less than its first). A posterior's precision
    is above zero (the kernels divide by it) and, a matrix, positive definite: the prior's plus
    sums of w x x' (`positive_definite`), else its inverse has variances below zero."""
    ok = np.isfinite(mean).all(axis=1) & np.isfinite(per_model(precision)).all(axis=1)
    for count in counts:
        ok &= np.isfinite(per_model(count)).all(axis=1) & (per_model(count) >= 0).all(axis=1)
    ok &= (diagonal(precision) > 0 if positive else diagonal(precision) >= 0).all(axis=1)
    if positive and precision.ndim == 3:
        ok[ok] = positive_definite(precision[ok])
    return ok


def _rounded_up(delta: np.ndarray, total: np.ndarray) -> np.ndarray:
    """`delta` with what is below zero by no more than rounding makes (ROUNDING_SHARE of the
    `total` it adds to) read as zero, for `sound_rows`' check alone."""
    drift = (delta < 0) & (delta >= -ROUNDING_SHARE * np.abs(total))
    return np.where(drift, 0.0, delta)


def positive_definite(precision: np.ndarray) -> np.ndarray:
    """Per model, whether its (finite) precision matrix P has a Cholesky factor, i.e. x' P x > 0
    for every x, and so x' S x for its inverse S, the variance Thompson sampling draws with. Its
    symmetric part is factored: Cholesky reads one triangle only, and the rank-one updates keep
    P symmetric only up to rounding (w x_i x_j and w x_j x_i round apart). Rounding can fail a
    sound P only near a condition number of 1 / eps, where its inverse has no digits left."""
    symmetric = 0.5 * (precision + np.swapaxes(precision, 1, 2))
    try:
        np.linalg.cholesky(symmetric)
        return np.ones(len(precision), bool)
    except np.linalg.LinAlgError:  # one that is not fails the batch: find it
        return np.array([_factors(p) for p in symmetric], bool)


def _factors(matrix: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(matrix)
        return True
    except np.linalg.LinAlgError:
        return False


def keep_rows(ok: np.ndarray, new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """`new` for the models where ok, else `old` (arrays of any rank, models first)."""
    return np.where(ok.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


@dataclass
class SyncPoints:
    """Shard side: whether a table's learning waits for a journal sync (ModelTable.written),
    and who waits for one; shared by the tables a catalog switch carries the learning to, as
    the syncs that cover it may be told through the table it was learnt in."""

    settled: bool = True  # every round learnt from is synced: all pending may go
    failed: bool = False  # a sync failed: this shard's learning never goes (it is rebuilt)
    wanted: list[Callable[[], None]] = field(default_factory=list)  # told at the next point
    covering: list[Callable[[], None]] = field(default_factory=list)  # the sync in flight's


class ModelTable:
    """Every (action, channel) model of a shard, as arrays the kernels update in place.

    The shard learns into `mean`/`precision` (and, for a full posterior, `covariance`, the
    inverse the kernels keep current); `take_delta()` hands what was learned since the last
    take to the learner; `adopt()` moves to a published version that includes every taken
    delta, keeping what was learned since (rebased onto the new version).
    """

    def __init__(self, compiled: CompiledCatalog, version: int = 0):
        n_channels = len(compiled.channel_names)
        self.n_channels = n_channels
        self.full = compiled.full_posterior
        self.version = version
        # shard side: the learner process whose `version` this table holds (None: no rows
        # changed since it are taken, the next version adopted is the whole table)
        self.published_by: str | None = None
        # learner side: the models the latest `merge` changed, which it publishes as rows
        self.merged_rows = np.zeros(0, np.int64)
        self.refused = 0  # updates and delta rows refused as not sound (`sound_rows`), ever
        self.mean = np.repeat(compiled.prior_mean, n_channels, axis=0)
        self.precision = self._as_kind(np.repeat(compiled.prior_precision, n_channels, axis=0))
        for name in COUNTS:
            setattr(self, name, np.zeros(len(self.mean)))
        self.inputs = np.zeros((3, compiled.n_predictors))
        # the standardised inputs this table let in, summed as they came, not forgotten: its
        # delta's (forgetting is not additive, and each shard's delta forgetting the shared
        # statistics would forget them as many times as there are shards)
        self.inputs_added = np.zeros((3, compiled.n_predictors))
        # the inputs this shard let in and those it clipped, forgotten (`clipped_weight`)
        self.input_clips = np.zeros((2, compiled.n_predictors))
        self.covariance: np.ndarray | None = None
        self._refresh()
        self._mark()
        # shard side, what the journal made durable (see `written`)
        self._points = SyncPoints()
        self._boundary: ModelDelta | None = None  # pending when the sync in flight started
        self._synced: ModelDelta | None = None  # pending when a sync that succeeded started

    def _as_kind(self, precision: np.ndarray) -> np.ndarray:
        """Per-predictor precisions as this table keeps them (a diagonal matrix when full)."""
        return as_matrices(precision) if self.full else diagonal(precision).copy()

    def converted(self, precision: np.ndarray) -> np.ndarray:
        """A precision saved under the other kind of posterior, as this table keeps it: a
        diagonal becomes a diagonal matrix; a matrix, the marginal precisions 1 / diag(S)."""
        if precision.ndim == 2 and self.full:
            return as_matrices(precision)
        if precision.ndim == 3 and not self.full:
            return 1.0 / np.diagonal(inverse(precision), axis1=1, axis2=2)
        return precision

    def _refresh(self) -> None:
        if self.full:
            self.covariance = inverse(self.precision)

    def kernel_arrays(self) -> tuple:
        """What the kernels' ModelView takes."""
        return (self.mean, self.precision, self.positives, self.negatives, self.value_count,
                self.value_sum, self.inputs, self.inputs_added, self.input_clips,
                self.covariance)

    def warm_start(self, compiled: CompiledCatalog, actions) -> None:
        """Cold start for new actions: begin where their group is, not at zero.

        Each new (action, channel) model takes the average posterior mean of the group's
        models on that channel that have seen outcomes, at the prior's precision, so it
        inherits what the group learned but stays ready to learn its own way.
        """
        new = set(actions)
        n_ch = self.n_channels
        prior = self._as_kind(compiled.prior_precision)
        for a in new:
            peers = [p for p in range(len(compiled.action_ids)) if p not in new and
                     compiled.action_group[p] == compiled.action_group[a]]
            for ch in range(n_ch):
                seen = [p * n_ch + ch for p in peers
                        if self.positives[p * n_ch + ch] + self.negatives[p * n_ch + ch] > 0]
                m = a * n_ch + ch
                if seen:
                    self.mean[m] = self.mean[seen].mean(axis=0)
                self.precision[m] = prior[a]
        self._refresh()
        self._mark()

    def _mark(self) -> None:
        self._taken = ModelDelta(natural_mean(self.mean, self.precision), self.precision.copy(),
                                 *(getattr(self, name).copy() for name in COUNTS),
                                 self.inputs_added.copy())
        self._rebase()

    def _mark_rows(self, rows: np.ndarray) -> None:
        """`_mark` for the models at `rows`, the others' marks being theirs already: the
        kernels count every example a model learns from, so a model whose counts are its
        mark's learnt nothing since (`_learnt`)."""
        taken = self._taken
        taken.precision_mean[rows] = natural_mean(self.mean[rows], self.precision[rows])
        for name in ROW_STATS[1:]:
            getattr(taken, name)[rows] = getattr(self, name)[rows]
        taken.inputs = self.inputs_added.copy()
        self._rebase()

    def _rebase(self) -> None:
        """Take the mark's inputs out of `inputs_added` (in place: the kernels hold it), so
        that it sums only what is pending. As a running total, one early input of 1e12 kept
        1e24 in its sum of squares for the shard's life: every later delta's squares, a
        difference against it, rounded away, and the learner's variance went negative."""
        self.inputs_added -= self._taken.inputs
        self._taken.inputs = np.zeros_like(self.inputs_added)

    def _now(self) -> ModelDelta:
        """The table's statistics in the form of a delta (natural parameters, sums)."""
        return ModelDelta(natural_mean(self.mean, self.precision), self.precision,
                          *(getattr(self, name) for name in COUNTS), self.inputs_added)

    def _learnt(self) -> np.ndarray:
        """The models whose counts moved since their mark: it compares the four count arrays
        of every model (not the means and precisions), so each journal sync someone waits for
        scans them all (about 3 ms at 1.27 M models); what is then copied and sent is the
        models learnt in only."""
        taken = self._taken
        moved = np.zeros(len(self.positives), bool)
        for name in COUNTS:
            moved |= getattr(self, name) != getattr(taken, name)
        return np.flatnonzero(moved)

    def _pending(self) -> ModelDelta:
        """What was learned since the last take, as rows of the models that learnt."""
        rows, taken = self._learnt(), self._taken
        now = (natural_mean(self.mean[rows], self.precision[rows]),
               *(getattr(self, name)[rows] for name in ROW_STATS[1:]))
        return ModelDelta(*(part - getattr(taken, name)[rows]
                            for name, part in zip(ROW_STATS, now)),
                          self.inputs_added - taken.inputs, rows=rows,
                          n_models=len(self.positives), takes_rows=True)

    def pending(self) -> ModelDelta:
        """What was learned since the last take (not yet sent), a row per model."""
        return self._pending().dense()

    def take_delta(self, every_model: bool = True) -> ModelDelta:
        """What was learned since the last take, a row per model or (not `every_model`) of
        the models that learnt only."""
        delta = self._pending()
        self._mark_rows(delta.rows)
        return delta.dense() if every_model else delta

    # A shard learns from a round as it applies it, before the journal sync that lets it
    # answer has finished; should that sync fail, the round was never acknowledged and its
    # client sends it again. So the learner gets only learning a successful sync covers: the
    # host says when a round is written (`written`) and when a sync starts and ends; a sync
    # someone waits for notes the pending learning as it starts (its boundary, a copy of the
    # statistics of the models that learnt: only then), and `take_synced` hands over what the
    # last successful one covered, or everything once nothing written waits for a sync.

    def written(self) -> None:
        """Shard side: a round (and what it taught) is journaled, not synced yet."""
        self._points.settled = False

    def sync_started(self) -> None:
        """Shard side: a journal sync starts; it covers everything learnt so far."""
        points = self._points
        self._boundary = self._pending() if points.wanted else None
        points.covering, points.wanted = points.wanted, []

    def sync_finished(self, ok: bool, idle: bool) -> None:
        """Shard side: the sync ended; `idle`: nothing was written since it started."""
        points = self._points
        if not ok:
            points.failed = True
        elif self._boundary is not None:
            self._synced = self._boundary
        points.settled = points.settled or (ok and idle)
        self._boundary = None
        told, points.covering = points.covering, []
        if points.settled or points.failed:
            told, points.wanted = told + points.wanted, []
        for done in told:
            done()

    def when_synced(self, done: Callable[[], None]) -> None:
        """Shard side: call `done` once a sync covers what was learnt until now (at once if
        nothing waits for one; never if the shard fails first)."""
        if self._points.settled or self._points.failed:
            done()
        else:
            self._points.wanted.append(done)

    def take_synced(self, every_model: bool = True) -> ModelDelta | None:
        """Shard side: take what was learnt up to the latest successful sync point, or
        everything once nothing written waits for a sync; None if no sync covered anything
        since the last take (or one failed: the shard is being rebuilt). A row per model, or
        (not `every_model`) rows of the models that learnt only."""
        if self._points.failed:
            return None
        if self._points.settled:
            self._boundary = self._synced = None
            return self.take_delta(every_model)
        synced, self._synced = self._synced, None
        if synced is not None:
            self._taken_more(synced)
            if self._boundary is not None:  # the sync in flight covers the rest
                self._boundary = added(self._boundary, synced, -1.0)
        return synced if synced is None or not every_model else synced.dense()

    def _taken_more(self, delta: ModelDelta) -> None:
        """Move the mark on by a delta taken (rows of it, in place: the mark is this table's)."""
        rows, taken = delta.model_rows(), self._taken
        for name in ROW_STATS:
            getattr(taken, name)[rows] += getattr(delta, name)
        taken.inputs = taken.inputs + delta.inputs
        self._rebase()

    def merge(self, delta: ModelDelta) -> int:
        """Learner side: add a delta to the natural parameters (the caller bumps versions).

        Models the delta does not touch keep their statistics bit for bit. A model whose
        delta, or whose result, is not sound (`sound_rows`: not finite, counts or a precision's
        diagonal taken back, a precision matrix not positive definite) keeps what it had;
        returns how many models refused their part of the delta (and 1 for refused input
        statistics); the models it changed are left in `merged_rows`. Written in place:
        whoever publishes the arrays copies them (control/learner.py)."""
        counts = np.stack([getattr(delta, name) for name in COUNTS], axis=1)
        at = np.flatnonzero(~((delta.precision_mean == 0).all(axis=1)
                              & (per_model(delta.precision) == 0).all(axis=1)
                              & (counts == 0).all(axis=1)))
        rows = delta.model_rows()[at]
        with np.errstate(all="ignore"):  # what overflows is refused just below
            precision = self.precision[rows] + delta.precision[at]
            mean = solve_rows(precision, natural_mean(self.mean[rows], self.precision[rows]) +
                              delta.precision_mean[at])
            summed = {name: getattr(self, name)[rows] + getattr(delta, name)[at]
                      for name in COUNTS}
        ok = sound_rows(mean, precision, *summed.values()) & \
            sound_rows(delta.precision_mean[at], _rounded_up(delta.precision[at], precision),
                       np.where(ROUNDED, _rounded_up(counts[at], np.stack(
                           list(summed.values()), axis=1)), counts[at]),
                       positive=False)
        good = rows[ok]
        for name, value in (("mean", mean), ("precision", precision), *summed.items()):
            getattr(self, name)[good] = value[ok]
        if self.full:
            self.covariance[good] = inverse(self.precision[good])
        refused = int(len(rows) - ok.sum())
        with np.errstate(all="ignore"):
            inputs = merged_inputs(self.inputs, delta.inputs)
        if np.isfinite(inputs).all():
            self.inputs = inputs
        else:
            refused += 1
        self.refused += refused
        self.merged_rows = good
        self._mark_rows(good)
        return refused

    def adopt(self, published: Any) -> None:
        """Shard side: take a published posterior (anything with the table's statistics as
        attributes, and its `version`), rebasing the pending delta onto it. One with `rows`
        (not None) holds the models at those rows only, all that changed since the version
        this table has: only they are replaced, and a model that learnt since the last take
        and is not among them keeps its statistics and its pending learning as they are (the
        published model is the one this table started from). A whole table is `adopting`'s,
        prepared at once (a shard prepares it on a thread: modelsync.py)."""
        rows = getattr(published, "rows", None)
        if rows is None:
            whole = self.adopting(published)
            whole.prepare()
            self.adopt_prepared(whole)
            return
        self._check_fits(published, rows)
        unsent = self._pending()
        before = self.precision[rows]
        for name in ("mean", "precision", *COUNTS):
            getattr(self, name)[rows] = getattr(published, name)
        if self.full:  # most versions change a few models: invert only theirs
            changed = rows[~per_model(self.precision[rows] == before).all(axis=1)]
            self.covariance[changed] = inverse(self.precision[changed])
        self._mark_rows(rows)
        self._rebased(published, _within(unsent, rows))

    def adopting(self, published: Any) -> Adopting:
        """A whole published table (no `rows`) to `prepare` off the event loop and then take
        with `adopt_prepared`; cheap (it notes the models' counts)."""
        self._check_fits(published, None)
        return Adopting(self, published)

    def _check_fits(self, published: Any, rows: np.ndarray | None) -> None:
        """ValueError unless a published table's statistics have this table's shapes (the
        catalog's models and predictors; `rows`' models only, where given) and types: the
        kernels index them by the catalog's counts unchecked and bind float64 arrays only, so
        one of another catalog, or damaged, is refused here, before anything changes, once per
        adopt, never per decision."""
        models, inputs = len(self.mean), self.mean.shape[1]
        at = np.asarray(rows if rows is not None else [], np.int64)
        count = models if rows is None else len(at)
        wrong = [name for name in ("mean", "precision", *COUNTS, "inputs")
                 if np.shape(getattr(published, name)) != (
                     self.inputs.shape if name == "inputs" else
                     (count, *getattr(self, name).shape[1:])) or
                 getattr(getattr(published, name), "dtype", None) != np.float64]
        if not np.all((at >= 0) & (at < models)):
            wrong.append("rows")
        if wrong:
            raise ValueError(f"a published table whose {', '.join(wrong)} do not fit the "
                             f"catalog's {models} models of {inputs} inputs")

    def adopt_prepared(self, whole: Adopting) -> bool:
        """Take a prepared whole table as `adopt` takes it, unless this table moved on since
        it was made `adopting` (another version adopted, or not this table's): then False,
        and nothing changes. Only the models that learnt meanwhile are compared and inverted
        here; the rest is swapped in."""
        if whole.table is not self or (self.version, self.published_by) != whole.held:
            return False
        unsent = self._pending()
        stats, covariance = whole.stats, whole.covariance
        if self.full:
            moved = np.flatnonzero(whole.learnt_since(self))
            covariance[moved] = self.covariance[moved]
            again = moved[~per_model(stats["precision"][moved] ==
                                     self.precision[moved]).all(axis=1)]
            covariance[again] = inverse(stats["precision"][again])
        for name, value in stats.items():
            setattr(self, name, value)
        self.covariance = covariance
        self._taken = ModelDelta(*whole.taken, self.inputs_added.copy())
        self._rebase()
        self._rebased(whole.published, unsent)
        return True

    def _rebased(self, published: Any, unsent: ModelDelta) -> None:
        """The end of an adopt: the published inputs and version, and the unsent learning
        merged back in and still pending."""
        self.inputs = published.inputs.copy()
        self.version = published.version
        self.published_by = getattr(published, "incarnation", None)
        self.merge(unsent)
        self._mark_as(unsent)

    def removed(self, compiled: CompiledCatalog, rows) -> dict[tuple[str, str], RemovedModel]:
        """The models at `rows` (of `compiled`'s layout) that learnt something, by (action id,
        channel), as a switch that takes them out leaves them."""
        out = {}
        n_ch = self.n_channels
        for m in rows:
            if self.positives[m] + self.negatives[m] + self.value_count[m] > 0:
                spread = self.covariance[m] if self.full else 1.0 / self.precision[m]
                out[compiled.action_ids[m // n_ch], compiled.channel_names[m % n_ch]] = \
                    RemovedModel(tuple(compiled.predictor_names), self.mean[m].copy(),
                                 spread.copy(), tuple(float(getattr(self, name)[m])
                                                      for name in COUNTS))
        return out

    def bring_back(self, compiled: CompiledCatalog, models: dict[int, RemovedModel]) -> None:
        """Models taken out before, at the rows (of `compiled`'s layout) they come back to,
        in place of these: each predictor by name, as a switch carries a posterior (its
        marginal; a predictor new since keeps this row's prior). Not pending: they were
        sent where they were learnt."""
        for m, saved in models.items():
            cols = np.array([saved.predictors.index(name) if name in saved.predictors else -1
                             for name in compiled.predictor_names], np.int64)
            kept = cols >= 0
            self.mean[m, kept] = saved.mean[cols[kept]]
            if self.full:
                old = saved.spread if saved.spread.ndim == 2 else np.diag(saved.spread)
                covariance = self.covariance[m].copy()
                covariance[np.ix_(kept, kept)] = old[np.ix_(cols[kept], cols[kept])]
                self.precision[m] = inverse(covariance[None])[0]
            else:
                variance = 1.0 / self.precision[m]
                variance[kept] = (np.diagonal(saved.spread) if saved.spread.ndim == 2
                                  else saved.spread)[cols[kept]]
                self.precision[m] = 1.0 / variance
            for name, count in zip(COUNTS, saved.counts):
                getattr(self, name)[m] = count
        rows = list(models)
        self._refresh()
        now = self._now()
        for name in DELTA_STATS:
            if name != "inputs":  # per predictor, not per model
                getattr(self._taken, name)[rows] = getattr(now, name)[rows]

    def _mark_as(self, unsent: ModelDelta) -> None:
        """After adopt the unsent learning is still pending: move the mark back before it."""
        self._taken_more(ModelDelta(*(-getattr(unsent, name) for name in DELTA_STATS),
                                    rows=unsent.rows, n_models=unsent.n_models))


def _within(delta: ModelDelta, rows: np.ndarray) -> ModelDelta:
    """A delta of rows (`ModelTable._pending`) cut to the models at `rows` (ascending), the
    input statistics kept."""
    keep = np.isin(delta.rows, rows)
    return ModelDelta(*(getattr(delta, name)[keep] for name in ROW_STATS), delta.inputs,
                      rows=delta.rows[keep], n_models=delta.n_models)


class Adopting:
    """A whole published table on its way into a ModelTable (`ModelTable.adopting`): what
    `adopt` copies and inverts, made by `prepare` (a thread may run it) from the published
    arrays, which nothing writes, and the table's precisions and covariances as they are
    (every model whose precision the version changes gets the inverse of its new one, the
    others keep theirs, as the kernels kept it). The kernels may learn on the event loop
    meanwhile, and `prepare` may read a model half-way through: every example they learn
    counts an outcome of its model, so the models whose counts moved since `adopting` are
    compared and inverted again as it is taken (`learnt_since`)."""

    def __init__(self, table: ModelTable, published: Any):
        self.table, self.published = table, published
        self.held = (table.version, table.published_by)  # taken only onto these
        self._counts = np.stack([getattr(table, name) for name in COUNTS])
        self._precision, self._covariance = table.precision, table.covariance
        self.stats: dict[str, np.ndarray] = {}
        self.taken: tuple[np.ndarray, ...] = ()  # the new mark's, but its inputs
        self.covariance: np.ndarray | None = None

    def prepare(self) -> None:
        """The copies, the mark and the covariance (the heavy part: a thread may run it)."""
        self.stats = {name: getattr(self.published, name).copy()
                      for name in ("mean", "precision", *COUNTS)}
        precision = self.stats["precision"]
        self.taken = (natural_mean(self.stats["mean"], precision), precision.copy(),
                      *(self.stats[name].copy() for name in COUNTS))
        if not self.table.full:
            return
        changed = np.flatnonzero(~per_model(precision == self._precision).all(axis=1))
        self.covariance = self._covariance.copy()
        self.covariance[changed] = inverse(precision[changed])

    def learnt_since(self, table: ModelTable) -> np.ndarray:
        """Per model, whether its counts moved since `adopting` (its statistics may have)."""
        return (np.stack([getattr(table, name) for name in COUNTS]) != self._counts).any(axis=0)


class RemovedModel(NamedTuple):
    """A model a catalog switch took out (`ModelTable.removed`), as it was: its predictors'
    names, mean, covariance (full posterior) or variances (diagonal), and counts."""

    predictors: tuple[str, ...]
    mean: np.ndarray
    spread: np.ndarray
    counts: tuple[float, ...]


class TakenOut:
    """The models the latest `kept` catalog switches took out, by (action id, channel), with
    what they had learnt (the latest removal wins), so that a switch that puts one back (a
    rollback, a seasonal offer) gives it that instead of its group's start. Switched as a
    whole: `switched` returns a new one, and the old stays as it was (a switch undone)."""

    def __init__(self, kept: int):
        self.kept = kept
        self.switches = 0
        self._models: dict[tuple[str, str], tuple[int, RemovedModel]] = {}

    def switched(self, table: ModelTable, old: CompiledCatalog, remap: ModelRemap
                 ) -> TakenOut:
        """After a switch from `old` (its `table`) by `remap`: what it took out added."""
        out = TakenOut(self.kept)
        out.switches = self.switches + 1
        gone = np.setdiff1d(np.arange(len(table.mean)), remap.rows)
        out._models = {key: kept for key, kept in self._models.items()
                       if kept[0] > out.switches - self.kept}
        out._models.update((key, (out.switches, model))
                           for key, model in table.removed(old, gone).items())
        return out

    def bring_back(self, table: ModelTable, new: CompiledCatalog, remap: ModelRemap) -> None:
        """Into the switched `table` (of `new`), the models it gained that were taken out."""
        n_ch = len(new.channel_names)
        back = {}
        for m in np.flatnonzero(remap.rows < 0):
            kept = self._models.pop((new.action_ids[m // n_ch], new.channel_names[m % n_ch]),
                                    None)
            if kept is not None:
                back[int(m)] = kept[1]
        table.bring_back(new, back)


class ModelRemap:
    """Carries model statistics across a catalog switch.

    Rows are matched by (action id, channel name) and columns by predictor name; what the new
    version adds starts at its prior (new actions warm-start from their group). A transform or
    scale change under the same predictor name keeps the weight, which then adapts online.
    A posterior keeps the marginal of the predictors both versions have (the covariance's
    block, or the diagonal of it when the new version's posterior is diagonal); a delta in
    flight keeps its block of d(P), as the natural parameters of dropped predictors cannot be
    marginalised without the posterior they were learned against.
    """

    def __init__(self, old: CompiledCatalog, new: CompiledCatalog):
        old_rows = {(a, ch): i * len(old.channel_names) + j
                    for i, a in enumerate(old.action_ids)
                    for j, ch in enumerate(old.channel_names)}
        self.rows = np.array([old_rows.get((a, ch), -1) for a in new.action_ids
                              for ch in new.channel_names], np.int64)
        old_cols = {name: j for j, name in enumerate(old.predictor_names)}
        self.cols = np.array([old_cols.get(name, -1) for name in new.predictor_names], np.int64)
        self.new = new
        self.new_actions = [a for a, action_id in enumerate(new.action_ids)
                            if action_id not in old.action_index]

    def _carry(self, old: np.ndarray, base: np.ndarray) -> np.ndarray:
        out = base.copy()
        rows, cols = self.rows >= 0, self.cols >= 0
        if out.ndim == 1:
            out[rows] = old[self.rows[rows]]
        elif out.ndim == 2:
            out[np.ix_(rows, cols)] = old[np.ix_(self.rows[rows], self.cols[cols])]
        else:
            out[np.ix_(rows, cols, cols)] = old[np.ix_(self.rows[rows], self.cols[cols],
                                                       self.cols[cols])]
        return out

    def table(self, old: ModelTable) -> ModelTable:
        """The old table's posteriors in the new layout, with the same pending learning."""
        fresh = ModelTable(self.new, old.version)
        fresh.mean = self._carry(old.mean, fresh.mean)
        if fresh.full:
            old_cov = old.covariance if old.full else as_matrices(1.0 / old.precision)
            fresh.precision = inverse(self._carry(old_cov, fresh.covariance))
        else:
            old_var = np.diagonal(old.covariance, axis1=1, axis2=2) if old.full \
                else 1.0 / old.precision
            fresh.precision = 1.0 / self._carry(old_var, 1.0 / fresh.precision)
        for name in COUNTS:
            setattr(fresh, name, self._carry(getattr(old, name), getattr(fresh, name)))
        fresh.inputs = self._carry_inputs(old.inputs)
        fresh.warm_start(self.new, self.new_actions)
        fresh._mark_as(self.delta(old.pending()))
        fresh.refused = old.refused
        # the pending learning came along: the syncs it waits for, and who waits, too
        fresh._points = old._points
        return fresh

    def _carry_inputs(self, old: np.ndarray) -> np.ndarray:
        out = np.zeros((3, len(self.cols)))
        cols = self.cols >= 0
        out[:, cols] = old[:, self.cols[cols]]
        return out

    def delta(self, delta: ModelDelta) -> ModelDelta:
        """A delta learned under the old version, in the new layout (unmatched parts drop)."""
        delta = delta.dense()
        n, d = len(self.rows), len(self.cols)
        zeros1 = np.zeros(n)
        precision = np.zeros((n, d, d) if self.new.full_posterior else (n, d))
        carried = as_matrices(delta.precision) if precision.ndim == 3 \
            else diagonal(delta.precision)
        return ModelDelta(self._carry(delta.precision_mean, np.zeros((n, d))),
                          self._carry(carried, precision),
                          *(self._carry(getattr(delta, name), zeros1) for name in COUNTS),
                          self._carry_inputs(delta.inputs))
