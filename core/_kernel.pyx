# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The scoring core: apply events, re-evaluate profiles, record outcomes. Same API as reference.py.

The `def` functions take the views and arrays, release the GIL and run `nogil` loops over typed
memoryviews; no Python object is touched inside them. Semantics are defined by reference.py,
which the property tests hold this module to.
"""
from libc.math cimport erfc, exp, fabs, floor, isfinite, log, log1p, pow, sqrt, \
    INFINITY, NAN, M_PI
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint64_t

import numpy as np

from .sampling import ZIGGURAT, ZIGGURAT_R as _ZIGGURAT_R

IMPLEMENTATION = "cython"
cdef double HISTORY_EPOCH_S = 1577836800.0  # state.HISTORY_EPOCH_S
cdef double PROBIT_SCALE2 = M_PI / 8.0  # models.PROBIT_SCALE2
cdef double MILLS_ASYMPTOTIC = -35.0  # models.MILLS_ASYMPTOTIC
cdef double SELECTION_TAIL = 6.0  # reference.SELECTION_TAIL
cdef double MIN_RELATIVE_VARIANCE = 1e-12  # models.MIN_RELATIVE_VARIANCE
cdef double STANDARDIZE_WARMUP = 32.0  # models.STANDARDIZE_WARMUP
cdef double STANDARDIZE_CLIP_SDS = 3.0  # models.STANDARDIZE_CLIP_SDS
cdef double STANDARDIZE_MIN_SPREAD2 = 1e-6  # models.STANDARDIZE_MIN_SPREAD2
cdef double STANDARDIZE_MAX_COUNT = 10000.0  # models.STANDARDIZE_MAX_COUNT
cdef double STANDARDIZE_CLIPPED_SHARE = 0.1  # models.STANDARDIZE_CLIPPED_SHARE
cdef double ZIGGURAT_R = _ZIGGURAT_R

OPCODES = {name: value for name, value in dict(
    CONST=OP_CONST, PROFILE=OP_PROFILE, CONTEXT=OP_CONTEXT, ACTION=OP_ACTION, NOW=OP_NOW,
    ADD=OP_ADD, SUB=OP_SUB, MUL=OP_MUL, DIV=OP_DIV, NEG=OP_NEG, EQ=OP_EQ, NE=OP_NE, LT=OP_LT,
    LE=OP_LE, GT=OP_GT, GE=OP_GE, AND=OP_AND, OR=OP_OR, NOT=OP_NOT, IN=OP_IN, NOT_IN=OP_NOT_IN,
    BETWEEN=OP_BETWEEN, SINCE=OP_SINCE, KNOWN=OP_KNOWN, COALESCE=OP_COALESCE, MIN=OP_MIN,
    MAX=OP_MAX, ABS=OP_ABS, LOG1P=OP_LOG1P).items()}
REASONS = {name: value for name, value in dict(
    SELECTED=R_SELECTED, NOT_IN_CHANNEL=R_NOT_IN_CHANNEL, OUTSIDE_VALIDITY=R_OUTSIDE_VALIDITY,
    NO_CONSENT=R_NO_CONSENT, ELIGIBILITY=R_ELIGIBILITY, APPLICABILITY=R_APPLICABILITY,
    SUITABILITY=R_SUITABILITY, IMPRESSION_CAP=R_IMPRESSION_CAP,
    REJECT_SUPPRESSION=R_REJECT_SUPPRESSION, ACCEPT_COOLDOWN=R_ACCEPT_COOLDOWN,
    INVALID_VALUE=R_INVALID_VALUE, RESTRAINT=R_RESTRAINT, GROUP_LIMIT=R_GROUP_LIMIT,
    TOP_K=R_TOP_K).items()}
MAX_PREDICTORS_SUPPORTED = MAX_PREDICTORS
MAX_STACK_SUPPORTED = MAX_STACK  # rules.py's bound on what a rule holds at once
ONE_EXAMPLE = {"probit_scale2": PROBIT_SCALE2, "mills_asymptotic": MILLS_ASYMPTOTIC}
INPUT_CLIP = {"warmup": STANDARDIZE_WARMUP, "sds": STANDARDIZE_CLIP_SDS,
              "min_spread2": STANDARDIZE_MIN_SPREAD2, "max_count": STANDARDIZE_MAX_COUNT,
              "clipped_share": STANDARDIZE_CLIPPED_SHARE}


cdef class CatalogView:
    """The compiled catalog's arrays as typed memoryviews, bound once per catalog version."""

    cdef public object c
    cdef int n_actions, n_channels, n_groups, n_predictors, history_size, exploration
    cdef int n_decayed, n_weights
    cdef double restraint, ucb_alpha, trial_rate, value_prior_weight, value_limit
    cdef bint optimistic
    cdef int selection_samples
    cdef const int8_t[::1] view_kind
    cdef const double[::1] view_inv_hl
    cdef const int32_t[::1] update_start, update_kind, update_slot, update_field
    cdef const int32_t[::1] update_when_field, update_when_start, update_when_end
    cdef const double[::1] update_inv_hl, when_values, decayed_inv_hl
    cdef const int32_t[::1] decayed_slots
    cdef const int32_t[:, ::1] placement_top_k, channel_consent_slot
    cdef const int32_t[::1] purpose_slot
    cdef const int64_t[:, ::1] offered
    cdef const int32_t[::1] action_group, action_purpose, max_impressions, reject_count
    cdef const double[::1] valid_from, valid_until, lever, impression_window, reject_within
    cdef const double[::1] reject_suppress, accept_cooldown, explore_scale
    cdef const double[:, ::1] action_attributes
    cdef const int32_t[::1] code
    cdef const double[::1] consts, sets
    cdef const int32_t[:, ::1] set_ranges
    cdef const int32_t[:, :, ::1] rule_range
    cdef const uint8_t[::1] group_multiple
    cdef const int32_t[::1] weight_channel, weight_group, weight_cond_start, weight_cond_key
    cdef const double[::1] weight_value, weight_cond_value
    cdef const int8_t[::1] predictor_source, predictor_transform
    cdef const int32_t[::1] predictor_index
    cdef const double[::1] predictor_param
    cdef const uint8_t[::1] predictor_clip
    cdef double predictor_limit
    cdef const double[::1] control_share

    def __init__(self, compiled):
        c = compiled
        self.c = c
        self.n_actions = len(c.action_ids)
        self.n_channels = len(c.channel_names)
        self.n_groups = len(c.group_names)
        self.n_predictors = c.n_predictors
        if self.n_predictors > MAX_PREDICTORS:
            raise ValueError(f"at most {MAX_PREDICTORS - 1} predictors, got "
                             f"{self.n_predictors - 1}")
        self.history_size = c.history_size
        self.n_decayed = len(c.decayed_slots)
        self.n_weights = len(c.weight_value)
        self.exploration = int(c.exploration)
        self.restraint = c.restraint_threshold
        self.optimistic = c.optimistic
        self.ucb_alpha = c.ucb_alpha
        self.trial_rate = c.trial_rate
        self.value_prior_weight = c.value_prior_weight
        self.value_limit = c.value_limit
        self.selection_samples = c.selection_samples
        self.view_kind = c.layout.view_kind
        self.view_inv_hl = c.layout.view_inv_half_life
        self.update_start = c.update_start
        self.update_kind = c.update_kind
        self.update_slot = c.update_slot
        self.update_field = c.update_field
        self.update_when_field = c.update_when_field
        self.update_when_start = c.update_when_start
        self.update_when_end = c.update_when_end
        self.update_inv_hl = c.update_inv_half_life
        self.when_values = _nonempty(c.when_values, np.float64)
        self.decayed_slots = _nonempty(c.decayed_slots, np.int32)
        self.decayed_inv_hl = _nonempty(c.decayed_inv_half_life, np.float64)
        self.placement_top_k = c.placement_top_k
        self.channel_consent_slot = c.channel_consent_slot
        self.purpose_slot = c.purpose_slot
        self.offered = c.offered
        self.action_group = c.action_group
        self.action_purpose = c.action_purpose
        self.max_impressions = c.max_impressions
        self.reject_count = c.reject_count
        self.valid_from = c.valid_from
        self.valid_until = c.valid_until
        self.lever = c.lever
        self.impression_window = c.impression_window
        self.reject_within = c.reject_within
        self.reject_suppress = c.reject_suppress
        self.accept_cooldown = c.accept_cooldown
        self.explore_scale = c.explore_scale
        self.action_attributes = c.action_attributes
        self.code = _nonempty(c.code, np.int32)
        self.consts = c.consts
        self.sets = c.sets
        self.set_ranges = c.set_ranges
        self.rule_range = c.rule_range
        self.group_multiple = c.group_multiple
        self.weight_channel = _nonempty(c.weight_channel, np.int32)
        self.weight_group = _nonempty(c.weight_group, np.int32)
        self.weight_value = _nonempty(c.weight_value, np.float64)
        self.weight_cond_start = c.weight_cond_start
        self.weight_cond_key = _nonempty(c.weight_cond_key, np.int32)
        self.weight_cond_value = _nonempty(c.weight_cond_value, np.float64)
        self.predictor_source = _nonempty(c.predictor_source, np.int8)
        self.predictor_transform = _nonempty(c.predictor_transform, np.int8)
        self.predictor_index = _nonempty(c.predictor_index, np.int32)
        self.predictor_param = _nonempty(c.predictor_param, np.float64)
        self.predictor_clip = _nonempty(c.predictor_clip, np.uint8)
        self.predictor_limit = c.predictor_limit
        self.control_share = c.control_share


def _nonempty(array, dtype):
    """A zero-length array cannot back a typed memoryview on every NumPy; pad it (unread)."""
    array = np.ascontiguousarray(array, dtype)
    return array if len(array) else np.zeros(1, dtype)


cdef class StateView:
    """A ProfileTable's arrays; rebind after the table grows (its `generation` changes)."""

    cdef double[:, ::1] values
    cdef int16_t[:, ::1] ring_action
    cdef int8_t[:, ::1] ring_channel, ring_outcome
    cdef int32_t[:, ::1] ring_time
    cdef int32_t[::1] ring_head

    def __init__(self, values, ring_action, ring_channel, ring_outcome, ring_time, ring_head):
        self.values = values
        self.ring_action = ring_action
        self.ring_channel = ring_channel
        self.ring_outcome = ring_outcome
        self.ring_time = ring_time
        self.ring_head = ring_head


cdef class ModelView:
    """ModelTable.kernel_arrays(): with a covariance the posterior is full, and `precision`
    is a matrix per model; `inputs` holds the count, sum and sum of squares of each input
    that is standardised."""

    cdef double[:, ::1] mean, precision, inputs, inputs_added, input_clips
    cdef double[:, :, ::1] matrix, covariance
    cdef double[::1] positives, negatives, value_count, value_sum
    cdef double[::1] _mean, _precision, _covariance, _u  # one update's scratch
    cdef bint full

    def __init__(self, mean, precision, positives, negatives, value_count, value_sum, inputs,
                 inputs_added, input_clips, covariance=None):
        # the loops index these by model and predictor unchecked: arrays that disagree with
        # each other are refused here, once per table bound (ModelTable refuses a published
        # table that does not fit the catalog)
        n, d = np.shape(mean)
        matrix = (n, d, d) if covariance is not None else (n, d)
        for array, shape in ((precision, matrix), (covariance, matrix), (positives, (n,)),
                             (negatives, (n,)), (value_count, (n,)), (value_sum, (n,)),
                             (inputs, (3, d)), (inputs_added, (3, d)), (input_clips, (2, d))):
            if array is not None and np.shape(array) != shape:
                raise ValueError(f"model arrays of shape {np.shape(array)}, not {shape}, "
                                 f"beside a mean of {n} models of {d} inputs")
        self.mean = mean
        self.positives = positives
        self.negatives = negatives
        self.value_count = value_count
        self.value_sum = value_sum
        self.inputs = inputs
        self.inputs_added = inputs_added
        self.input_clips = input_clips
        self.full = covariance is not None
        if self.full:
            self.matrix = precision
            self.covariance = covariance
            self.precision = np.ones((1, 1))  # unread
        else:
            self.precision = precision
            self.matrix = self.covariance = np.zeros((1, 1, 1))  # unread
        d = max(self.mean.shape[1], 1)
        self._mean = np.empty(d)
        self._u = np.empty(d)
        self._precision = np.empty(d * d if self.full else d)
        self._covariance = np.empty(d * d if self.full else 1)


cdef class Workspace:
    """Output buffers for up to `capacity` decisions, scratch space and the random stream."""

    cdef readonly int capacity
    cdef public object out_action, out_factors, out_count, out_selection, reasons, factors
    cdef public object predictors, out_control, catalog_values
    cdef int32_t[:, ::1] _out_action
    cdef double[:, :, ::1] _out_factors
    cdef double[:, ::1] _out_selection
    cdef double[::1] _logit, _spread, _sampled  # Thompson's logit and spread; a sample's priorities
    cdef double[::1] _top, _group_low  # the selection's pruning bound
    cdef uint8_t[::1] _active
    cdef int32_t[::1] _active_list
    cdef int32_t[::1] _sample_slots, _hits
    cdef int32_t[::1] _out_count
    cdef uint8_t[::1] _out_control
    cdef int8_t[:, ::1] _reasons
    cdef double[:, :, ::1] _factors
    cdef double[:, ::1] _predictors, _catalog_values
    cdef double[::1] _view, _weights, _last_reject, _last_accept
    cdef int32_t[::1] _impressions, _rejects, _candidates
    cdef int64_t[::1] _stamp
    cdef uint8_t[::1] _blocked
    cdef int64_t _clock
    cdef uint64_t _rng

    def __init__(self, compiled, int capacity, uint64_t seed):
        n_actions, k = len(compiled.action_ids), max(compiled.max_top_k, 1)
        self.capacity = capacity
        self.out_action = np.zeros((capacity, k), np.int32)
        self.out_factors = np.zeros((capacity, k, N_FACTORS))
        self.out_selection = np.zeros((capacity, k))  # out_count 0: slot 0 holds P(nothing)
        self.out_count = np.zeros(capacity, np.int32)
        self.out_control = np.zeros(capacity, np.uint8)  # 1: held back as control
        self.reasons = np.zeros((capacity, n_actions), np.int8)
        self.factors = np.zeros((capacity, n_actions, N_FACTORS))
        self.predictors = np.zeros((capacity, compiled.n_predictors))
        self.catalog_values = np.zeros((capacity, n_actions))
        self._out_action = self.out_action
        self._out_factors = self.out_factors
        self._out_selection = self.out_selection
        self._logit = np.zeros(n_actions)
        self._spread = np.zeros(n_actions)
        self._sampled = np.zeros(n_actions)
        self._sample_slots = np.zeros(k, np.int32)
        self._top = np.zeros(k + 1)
        self._group_low = np.zeros(max(len(compiled.group_names), 1))
        self._active = np.zeros(n_actions, np.uint8)
        self._active_list = np.zeros(n_actions, np.int32)
        self._hits = np.zeros(k, np.int32)
        self._out_count = self.out_count
        self._out_control = self.out_control
        self._reasons = self.reasons
        self._factors = self.factors
        self._predictors = self.predictors
        self._catalog_values = self.catalog_values
        self._view = np.zeros(compiled.layout.size)
        self._weights = np.zeros(max(len(compiled.group_names), 1))
        self._blocked = np.zeros(max(len(compiled.group_names), 1), np.uint8)
        self._last_reject = np.zeros(n_actions)
        self._last_accept = np.zeros(n_actions)
        self._impressions = np.zeros(n_actions, np.int32)
        self._rejects = np.zeros(n_actions, np.int32)
        self._candidates = np.zeros(n_actions, np.int32)
        self._stamp = np.full(n_actions, -1, np.int64)
        self._clock = 0
        self._rng = seed

    @property
    def rng_state(self):
        return self._rng

    @rng_state.setter
    def rng_state(self, uint64_t state):
        self._rng = state


# -------------------------------------------------------------------------------------------
# Random numbers: splitmix64 and the ziggurat's normals, as sampling.SplitMix64 draws them, from
# its tables (sampling.ZIGGURAT), copied here once.

cdef uint64_t _zig_k[256]
cdef double _zig_w[256]
cdef double _zig_f[256]


cdef void _load_ziggurat(tables):
    cdef Py_ssize_t i
    if len(tables.k) != 256:
        raise ValueError(f"a ziggurat of {len(tables.k)} layers; the kernel draws from 256")
    for i in range(256):
        _zig_k[i] = tables.k[i]
        _zig_w[i] = tables.w[i]
        _zig_f[i] = tables.f[i]


_load_ziggurat(ZIGGURAT)


cdef inline uint64_t _next_u64(uint64_t* state) noexcept nogil:
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline double _uniform(uint64_t* state) noexcept nogil:
    return <double>(_next_u64(state) >> 11) * (1.0 / 9007199254740992.0)


cdef inline double _density(double x) noexcept nogil:
    return exp(-0.5 * x * x)


cdef inline double _normal(uint64_t* state) noexcept nogil:
    cdef uint64_t r, bits
    cdef int layer
    cdef bint negative
    cdef double x
    while True:
        r = _next_u64(state)
        layer = <int>(r & 0xFF)
        negative = (r >> 8) & 1
        bits = (r >> 9) & <uint64_t>0x000FFFFFFFFFFFFF
        x = <double>bits * _zig_w[layer]
        if negative:
            x = -x
        if bits < _zig_k[layer]:
            return x
        if layer == 0:
            return _tail(state, negative)
        if (_zig_f[layer - 1] - _zig_f[layer]) * _uniform(state) + _zig_f[layer] < _density(x):
            return x


cdef double _tail(uint64_t* state, bint negative) noexcept nogil:
    cdef double xx, yy
    while True:
        xx = -(1.0 / ZIGGURAT_R) * log(1.0 - _uniform(state))
        yy = -log(1.0 - _uniform(state))
        if yy + yy > xx * xx:
            return -(ZIGGURAT_R + xx) if negative else ZIGGURAT_R + xx


cdef inline double _sigmoid(double z) noexcept nogil:
    if z > -700.0:
        return 1.0 / (1.0 + exp(-z))
    return 0.0


cdef inline void _mills_moments(double u, double* v, double* h, double* rest) noexcept nogil:
    """models.mills_moments, operation for operation: v, h and 1 - h through the pointers."""
    cdef double a, b, gap
    if u > MILLS_ASYMPTOTIC:
        v[0] = 0.3989422804014327 * exp(-0.5 * u * u) / (0.5 * erfc(-u * 0.7071067811865476))
        h[0] = v[0] * (v[0] + u)
        rest[0] = 1.0 - h[0]
        if rest[0] < 0.0:
            rest[0] = 0.0
        return
    a = -u
    b = 1.0 / (a * a)
    gap = (1.0 - b * (2.0 - b * (10.0 - 74.0 * b))) / a
    rest[0] = b * (1.0 - b * (6.0 - b * (50.0 - 518.0 * b)))
    v[0] = a + gap
    h[0] = 1.0 - rest[0]


cdef inline void _one_example_step(double z0, double s, double y, double* r,
                                   double* w) noexcept nogil:
    """models.one_example_step, operation for operation: r and w through the pointers."""
    cdef double t = 1.0 if y != 0.0 else -1.0
    cdef double c = t * sqrt(PROBIT_SCALE2 / (1.0 + PROBIT_SCALE2 * s))
    cdef double v, h, rest
    _mills_moments(c * z0, &v, &h, &rest)
    r[0] = c * v
    w[0] = PROBIT_SCALE2 * h / (1.0 + PROBIT_SCALE2 * s * rest)


cdef inline bint _truth(double x) noexcept nogil:
    return x == x and x != 0.0


# -------------------------------------------------------------------------------------------
# Events

def apply_events(CatalogView cat, StateView st, const int64_t[::1] rows,
                 const int32_t[::1] event_types, const double[::1] times,
                 const double[:, ::1] fields):
    cdef Py_ssize_t i, n = rows.shape[0]
    with nogil:
        for i in range(n):
            _apply_one(cat, &st.values[rows[i], 0], event_types[i], times[i], &fields[i, 0])


cdef inline bint _when_matches(CatalogView cat, Py_ssize_t u, const double* f) noexcept nogil:
    cdef int field = cat.update_when_field[u]
    cdef Py_ssize_t w
    if field < 0:
        return True
    for w in range(cat.update_when_start[u], cat.update_when_end[u]):
        if f[field] == cat.when_values[w]:
            return True
    return False


cdef void _apply_one(CatalogView cat, double* row, int etype, double t,
                     const double* f) noexcept nogil:
    cdef double clock = row[0], x
    cdef Py_ssize_t d, u
    cdef int kind, slot
    if clock != clock or t > clock:
        if clock == clock:
            for d in range(cat.n_decayed):
                row[cat.decayed_slots[d]] *= pow(2.0, -(t - clock) * cat.decayed_inv_hl[d])
        row[0] = t
        clock = t
    for u in range(cat.update_start[etype], cat.update_start[etype + 1]):
        if not _when_matches(cat, u, f):
            continue
        kind = cat.update_kind[u]
        slot = cat.update_slot[u]
        x = f[cat.update_field[u]] if cat.update_field[u] >= 0 else NAN
        if kind == UPD_COUNT:
            row[slot] += 1.0
        elif kind == UPD_DECAYED_COUNT:
            row[slot] += pow(2.0, -(clock - t) * cat.update_inv_hl[u])
        elif kind == UPD_TIME_SINCE:
            if not row[slot] >= t:
                row[slot] = t
        elif x != x:
            continue
        elif kind == UPD_SUM:
            row[slot] += x
        elif kind == UPD_DECAYED_SUM:
            row[slot] += x * pow(2.0, -(clock - t) * cat.update_inv_hl[u])
        elif kind == UPD_LAST:  # `last` features, `from` attributes: a late, older event
            if not row[slot + 1] > t:  # changes nothing (NaN: no time, older than any)
                row[slot] = x
                row[slot + 1] = t
        elif kind == UPD_MIN:
            if not row[slot] <= x:
                row[slot] = x
        elif kind == UPD_MAX:
            if not row[slot] >= x:
                row[slot] = x


# -------------------------------------------------------------------------------------------
# The rule VM

cdef double _run(CatalogView cat, Py_ssize_t start, Py_ssize_t end, const double* view,
                 const double* ctx, Py_ssize_t action, double now) noexcept nogil:
    cdef double stack[MAX_STACK]
    cdef int sp = -1, op, arg
    cdef Py_ssize_t pc = start, k
    cdef double a, b, lo
    cdef bint found
    while pc < end:
        op = cat.code[pc]
        arg = cat.code[pc + 1]
        pc += 2
        if op == OP_CONST:
            sp += 1
            stack[sp] = cat.consts[arg]
        elif op == OP_PROFILE:
            sp += 1
            stack[sp] = view[arg]
        elif op == OP_CONTEXT:
            sp += 1
            stack[sp] = ctx[arg]
        elif op == OP_ACTION:
            sp += 1
            stack[sp] = cat.action_attributes[action, arg]
        elif op == OP_NOW:
            sp += 1
            stack[sp] = now
        elif op == OP_NEG:
            stack[sp] = -stack[sp]
        elif op == OP_NOT:
            stack[sp] = 0.0 if _truth(stack[sp]) else 1.0
        elif op == OP_KNOWN:
            stack[sp] = 1.0 if stack[sp] == stack[sp] else 0.0
        elif op == OP_ABS:
            stack[sp] = fabs(stack[sp])
        elif op == OP_LOG1P:
            stack[sp] = log1p(stack[sp])
        elif op == OP_SINCE:
            stack[sp] = (now - stack[sp]) / cat.consts[arg]
        elif op == OP_IN or op == OP_NOT_IN:
            a = stack[sp]
            if a != a:
                stack[sp] = 0.0
            else:
                found = False
                for k in range(cat.set_ranges[arg, 0], cat.set_ranges[arg, 1]):
                    if a == cat.sets[k]:
                        found = True
                        break
                stack[sp] = 1.0 if found != (op == OP_NOT_IN) else 0.0
        elif op == OP_BETWEEN:
            b = stack[sp]
            lo = stack[sp - 1]
            a = stack[sp - 2]
            sp -= 2
            stack[sp] = 1.0 if (lo <= a and a <= b) else 0.0
        else:
            b = stack[sp]
            sp -= 1
            a = stack[sp]
            if op == OP_ADD:
                stack[sp] = a + b
            elif op == OP_SUB:
                stack[sp] = a - b
            elif op == OP_MUL:
                stack[sp] = a * b
            elif op == OP_DIV:
                stack[sp] = a / b
            elif op == OP_EQ:
                stack[sp] = 1.0 if a == b else 0.0
            elif op == OP_NE:
                stack[sp] = 1.0 if (a == a and b == b and a != b) else 0.0
            elif op == OP_LT:
                stack[sp] = 1.0 if a < b else 0.0
            elif op == OP_LE:
                stack[sp] = 1.0 if a <= b else 0.0
            elif op == OP_GT:
                stack[sp] = 1.0 if a > b else 0.0
            elif op == OP_GE:
                stack[sp] = 1.0 if a >= b else 0.0
            elif op == OP_AND:
                stack[sp] = 1.0 if (_truth(a) and _truth(b)) else 0.0
            elif op == OP_OR:
                stack[sp] = 1.0 if (_truth(a) or _truth(b)) else 0.0
            elif op == OP_COALESCE:
                stack[sp] = a if a == a else b
            elif op == OP_MIN:
                stack[sp] = NAN if (a != a or b != b) else (a if a <= b else b)
            elif op == OP_MAX:
                stack[sp] = NAN if (a != a or b != b) else (a if a >= b else b)
    return stack[0]


cdef inline bint _passes(CatalogView cat, Py_ssize_t a, int stage, const double* view,
                         const double* ctx, double now) noexcept nogil:
    cdef int start = cat.rule_range[a, stage, 0], end = cat.rule_range[a, stage, 1]
    if start == end:
        return True
    return _truth(_run(cat, start, end, view, ctx, a, now))


# -------------------------------------------------------------------------------------------
# Decisions

cdef void _profile_view(CatalogView cat, const double* row, Py_ssize_t width, double now,
                        double* view) noexcept nogil:
    cdef double clock = row[0]
    cdef double dt = now - clock if (clock == clock and now > clock) else 0.0
    cdef Py_ssize_t s
    cdef int kind
    for s in range(width):
        kind = cat.view_kind[s]
        if kind == VIEW_DECAYED:
            view[s] = row[s] * pow(2.0, -dt * cat.view_inv_hl[s])
        elif kind == VIEW_SINCE:
            view[s] = now - row[s]
        else:
            view[s] = row[s]


cdef inline double _input(CatalogView cat, Py_ssize_t j, const double* view,
                          const double* ctx) noexcept nogil:
    return ctx[cat.predictor_index[j]] if cat.predictor_source[j] else view[cat.predictor_index[j]]


cdef void _predictor_vector(CatalogView cat, ModelView mv, const double* view, const double* ctx,
                            double* x) noexcept nogil:
    cdef Py_ssize_t j
    cdef double v, param, out, n, mean, var
    cdef int tf
    x[0] = 1.0
    for j in range(cat.n_predictors - 1):
        v = _input(cat, j, view, ctx)
        tf = cat.predictor_transform[j]
        param = cat.predictor_param[j]
        if tf == TF_EQUALS:
            out = 1.0 if v == param else 0.0
        elif v != v:
            out = 0.0
        elif tf == TF_LOG1P:
            out = log1p(v) if v > 0.0 else 0.0
        elif tf == TF_SCALE:
            out = v / param
        elif tf == TF_RECENCY:
            out = exp(-v / param) if v > 0.0 else 1.0
        elif tf == TF_STANDARDIZE:
            n = mv.inputs[0, j + 1]
            out = v
            if n > 0.0:
                mean = mv.inputs[1, j + 1] / n
                var = mv.inputs[2, j + 1] / n - mean * mean
                out = v - mean
                if n >= 2.0 and var > MIN_RELATIVE_VARIANCE * (1.0 + mean * mean):
                    out = out / sqrt(var)
        else:
            out = v
        if out > cat.predictor_limit:
            out = cat.predictor_limit
        elif out < -cat.predictor_limit:
            out = -cat.predictor_limit
        x[j + 1] = out


cdef void _observe_inputs(CatalogView cat, ModelView mv, const double* view,
                          const double* ctx) noexcept nogil:
    """A decision's standardised inputs join their running statistics (after it used them),
    clipped as models.observed clips them (at models.clipped_weight's weight) unless their
    field declares both bounds (`predictor_clip`), and forgotten down to
    STANDARDIZE_MAX_COUNT as models.forget does; `inputs_added` sums them as they joined (the
    learner's delta)."""
    cdef Py_ssize_t j
    cdef double v, c, r, w
    for j in range(cat.n_predictors - 1):
        if cat.predictor_transform[j] == TF_STANDARDIZE:
            v = _input(cat, j, view, ctx)
            if isfinite(v * v):
                c = v
                if cat.predictor_clip[j]:
                    c = _observed(v, mv.inputs[0, j + 1], mv.inputs[1, j + 1],
                                  mv.inputs[2, j + 1])
                mv.input_clips[0, j + 1] += 1.0
                if c != v:
                    mv.input_clips[1, j + 1] += 1.0
                if mv.input_clips[0, j + 1] > STANDARDIZE_MAX_COUNT:
                    r = STANDARDIZE_MAX_COUNT / mv.input_clips[0, j + 1]
                    mv.input_clips[0, j + 1] = STANDARDIZE_MAX_COUNT
                    mv.input_clips[1, j + 1] *= r
                w = 1.0
                if c != v and mv.input_clips[1, j + 1] > \
                        STANDARDIZE_CLIPPED_SHARE * mv.input_clips[0, j + 1]:
                    w = STANDARDIZE_CLIPPED_SHARE * mv.input_clips[0, j + 1] / \
                        mv.input_clips[1, j + 1]
                mv.inputs[0, j + 1] += w
                mv.inputs[1, j + 1] += w * c
                mv.inputs[2, j + 1] += w * c * c
                mv.inputs_added[0, j + 1] += w
                mv.inputs_added[1, j + 1] += w * c
                mv.inputs_added[2, j + 1] += w * c * c
                if mv.inputs[0, j + 1] > STANDARDIZE_MAX_COUNT:
                    r = STANDARDIZE_MAX_COUNT / mv.inputs[0, j + 1]
                    mv.inputs[0, j + 1] = STANDARDIZE_MAX_COUNT
                    mv.inputs[1, j + 1] *= r
                    mv.inputs[2, j + 1] *= r


cdef inline double _observed(double v, double count, double total,
                             double squares) noexcept nogil:
    """models.observed, operation for operation."""
    cdef double mean, var, floor, half
    if not count >= STANDARDIZE_WARMUP:
        return v
    mean = total / count
    var = squares / count - mean * mean
    floor = STANDARDIZE_MIN_SPREAD2 * (1.0 + mean * mean)
    half = STANDARDIZE_CLIP_SDS * sqrt(var if var > floor else floor)
    if v < mean - half:
        return mean - half
    if v > mean + half:
        return mean + half
    return v


cdef void _context_weights(CatalogView cat, int channel, const double* ctx,
                           double* weights) noexcept nogil:
    cdef Py_ssize_t w, k, g
    cdef bint match
    for g in range(cat.n_groups):
        weights[g] = 1.0
    for w in range(cat.n_weights):
        if cat.weight_channel[w] >= 0 and cat.weight_channel[w] != channel:
            continue
        match = True
        for k in range(cat.weight_cond_start[w], cat.weight_cond_start[w + 1]):
            if not ctx[cat.weight_cond_key[k]] == cat.weight_cond_value[k]:
                match = False
                break
        if not match:
            continue
        for g in range(cat.n_groups):
            if cat.weight_group[w] < 0 or cat.weight_group[w] == g:
                weights[g] *= cat.weight_value[w]


cdef void _scan_history(CatalogView cat, StateView st, Workspace ws, Py_ssize_t row, int channel,
                        double now) noexcept nogil:
    """Per action in the ring: impressions in its window on this channel, the latest reject
    and how many rejects fall within its window before it, the latest accept."""
    # ring_action indexes the per-action arrays unchecked: a block's codes are checked as it
    # loads (block_checks.validate: -1..its actions, mapped onto the catalog's by the import),
    # and the kernel writes only the catalog's, so no guard on this per-decision path
    cdef Py_ssize_t e
    cdef int a, outcome
    cdef double t
    ws._clock += 1
    for e in range(cat.history_size):
        a = st.ring_action[row, e]
        if a < 0:
            continue
        if ws._stamp[a] != ws._clock:
            ws._stamp[a] = ws._clock
            ws._impressions[a] = 0
            ws._rejects[a] = 0
            ws._last_reject[a] = -INFINITY
            ws._last_accept[a] = -INFINITY
        t = <double>st.ring_time[row, e] + HISTORY_EPOCH_S
        outcome = st.ring_outcome[row, e]
        if outcome == OUT_IMPRESSION:
            if st.ring_channel[row, e] == channel and t > now - cat.impression_window[a]:
                ws._impressions[a] += 1
        elif outcome == OUT_REJECT:
            if t > ws._last_reject[a]:
                ws._last_reject[a] = t
        elif outcome == OUT_ACCEPT or outcome == OUT_CONVERT:
            if t > ws._last_accept[a]:
                ws._last_accept[a] = t
    for e in range(cat.history_size):
        a = st.ring_action[row, e]
        if a >= 0 and st.ring_outcome[row, e] == OUT_REJECT:
            t = <double>st.ring_time[row, e] + HISTORY_EPOCH_S
            if t >= ws._last_reject[a] - cat.reject_within[a]:
                ws._rejects[a] += 1


cdef inline int _contact_policy(CatalogView cat, Workspace ws, Py_ssize_t a,
                                double now) noexcept nogil:
    if ws._stamp[a] != ws._clock:
        return -1
    if cat.max_impressions[a] > 0 and ws._impressions[a] >= cat.max_impressions[a]:
        return R_IMPRESSION_CAP
    if cat.reject_count[a] > 0 and ws._rejects[a] >= cat.reject_count[a] and \
            now - ws._last_reject[a] < cat.reject_suppress[a]:
        return R_REJECT_SUPPRESSION
    if cat.accept_cooldown[a] > 0 and now - ws._last_accept[a] < cat.accept_cooldown[a]:
        return R_ACCEPT_COOLDOWN
    return -1


cdef inline int _filter(CatalogView cat, Workspace ws, Py_ssize_t a, int channel, int placement,
                        const double* view, const double* ctx, double now) noexcept nogil:
    cdef int purpose, slot
    if not (cat.offered[a, channel] >> placement) & 1:
        return R_NOT_IN_CHANNEL
    if not (cat.valid_from[a] <= now and now < cat.valid_until[a]):
        return R_OUTSIDE_VALIDITY
    purpose = cat.action_purpose[a]
    slot = cat.purpose_slot[purpose]
    if slot >= 0 and not _truth(view[slot]):
        return R_NO_CONSENT
    slot = cat.channel_consent_slot[channel, purpose]
    if slot >= 0 and not _truth(view[slot]):
        return R_NO_CONSENT
    if not _passes(cat, a, 0, view, ctx, now):
        return R_ELIGIBILITY
    if not _passes(cat, a, 1, view, ctx, now):
        return R_APPLICABILITY
    if not _passes(cat, a, 2, view, ctx, now):
        return R_SUITABILITY
    return _contact_policy(cat, ws, a, now)


cdef inline double _propensity(CatalogView cat, ModelView mv, Workspace ws, Py_ssize_t a,
                               int channel, const double* x) noexcept nogil:
    cdef Py_ssize_t m = a * cat.n_channels + channel, i
    cdef double z = 0.0, var = 0.0, spread
    for i in range(cat.n_predictors):
        z += mv.mean[m, i] * x[i]
    if cat.exploration != EXPLORE_NONE:
        if mv.full:
            var = _quadratic(&mv.covariance[m, 0, 0], x, cat.n_predictors)
            if var < 0.0:  # rounding in a near-singular S
                var = 0.0
        else:
            for i in range(cat.n_predictors):
                var += x[i] * x[i] / mv.precision[m, i]
        spread = sqrt(cat.explore_scale[a] * var)
        if cat.exploration == EXPLORE_THOMPSON:
            ws._logit[a] = z
            ws._spread[a] = spread
            z += spread * _draw(cat, &ws._rng)
        else:
            z += cat.ucb_alpha * spread
    return _sigmoid(z)


cdef inline double _draw(CatalogView cat, uint64_t* state) noexcept nogil:
    """A Thompson draw, in posterior deviations from the mean: a standard normal, or, optimistic
    (catalog `optimistic`), its positive part."""
    cdef double e = _normal(state)
    if not cat.optimistic:
        return e
    return e if e > 0.0 else 0.0


cdef inline double _learned_value(CatalogView cat, ModelView mv, Py_ssize_t m,
                                  double value) noexcept nogil:
    """The catalog's value for this customer, weighed as value_prior_weight conversions,
    blended with the values the model's conversions reported (as is until there are any).
    Weighed by shares, not summed then divided: prior_weight x value may overflow."""
    cdef double total
    if cat.value_prior_weight < 0.0 or mv.value_count[m] == 0.0:
        return value
    total = cat.value_prior_weight + mv.value_count[m]
    return value * (cat.value_prior_weight / total) + mv.value_sum[m] / total


cdef inline double _quadratic(const double* S, const double* x, Py_ssize_t d) noexcept nogil:
    """x' S x, row by row."""
    cdef Py_ssize_t i, j
    cdef double total = 0.0, row
    for i in range(d):
        row = 0.0
        for j in range(d):
            row += S[i * d + j] * x[j]
        total += x[i] * row
    return total


cdef inline bint _ranks(CatalogView cat, double priority) noexcept nogil:
    """Whether an action of this priority may be ranked: above 0 (a lever or context weight
    of 0 switches an action off, though 0 reaches the default threshold of 0) and at or above
    the restraint threshold; NaN never."""
    return priority > 0.0 and priority >= cat.restraint


cdef inline bint _untried(CatalogView cat, ModelView mv, int channel, const int8_t* reasons,
                          const double* factors, Py_ssize_t a) noexcept nogil:
    """Scored (ranked, under the restraint threshold, or, once the selection has run, SELECTED
    or GROUP_LIMIT), worth something, never accepted on the channel."""
    return (_scored(reasons, a)
            and factors[a * N_FACTORS + 1] * factors[a * N_FACTORS + 2] * cat.lever[a] > 0.0
            and mv.positives[a * cat.n_channels + channel] == 0.0)


cdef Py_ssize_t _n_untried(CatalogView cat, ModelView mv, int channel, const int8_t* reasons,
                           const double* factors) noexcept nogil:
    """How many actions a trial may pick: none when trials are off."""
    cdef Py_ssize_t a, n = 0
    if cat.trial_rate <= 0.0:
        return 0
    for a in range(cat.n_actions):
        if _untried(cat, mv, channel, reasons, factors, a):
            n += 1
    return n


cdef Py_ssize_t _trial(CatalogView cat, ModelView mv, int channel, const int8_t* reasons,
                       const double* factors, Py_ssize_t n_untried,
                       uint64_t* rng) noexcept nogil:
    """With probability trial_rate, when there is one (n_untried of them), an untried action
    drawn uniformly from rng; else -1. Draws nothing when there is none."""
    cdef Py_ssize_t a, pick
    if n_untried == 0 or not _uniform(rng) < cat.trial_rate:
        return -1
    pick = <Py_ssize_t>(_uniform(rng) * n_untried)
    for a in range(cat.n_actions):
        if _untried(cat, mv, channel, reasons, factors, a):
            if pick == 0:
                return a
            pick -= 1
    return -1


cdef void _decide_one(CatalogView cat, StateView st, ModelView mv, Workspace ws, Py_ssize_t row,
                      int channel, int placement, const double* ctx, double now, int k_req,
                      Py_ssize_t out) noexcept nogil:
    cdef double* view = &ws._view[0]
    cdef double* x = &ws._predictors[out, 0]
    cdef int8_t* reasons = &ws._reasons[out, 0]
    cdef double* factors = &ws._factors[out, 0, 0]
    cdef double* weights = &ws._weights[0]
    cdef Py_ssize_t a, n_cand = 0, n, best, j, first, n_control
    cdef int reason, k, g
    cdef double value, propensity, weight, priority, best_p
    _profile_view(cat, &st.values[row, 0], st.values.shape[1], now, view)
    _predictor_vector(cat, mv, view, ctx, x)
    _observe_inputs(cat, mv, view, ctx)
    _context_weights(cat, channel, ctx, weights)
    _scan_history(cat, st, ws, row, channel, now)
    for a in range(cat.n_actions):
        reason = _filter(cat, ws, a, channel, placement, view, ctx, now)
        if reason >= 0:
            reasons[a] = reason
            continue
        value = _run(cat, cat.rule_range[a, 3, 0], cat.rule_range[a, 3, 1], view, ctx, a, now)
        if not fabs(value) <= cat.value_limit:  # NaN and inf too
            reasons[a] = R_INVALID_VALUE
            continue
        ws._catalog_values[out, a] = value
        value = _learned_value(cat, mv, a * cat.n_channels + channel, value)
        propensity = _propensity(cat, mv, ws, a, channel, x)
        weight = weights[cat.action_group[a]]
        priority = propensity * weight * value * cat.lever[a]
        factors[a * N_FACTORS] = propensity
        factors[a * N_FACTORS + 1] = weight
        factors[a * N_FACTORS + 2] = value
        factors[a * N_FACTORS + 3] = priority
        if not _ranks(cat, priority):
            reasons[a] = R_RESTRAINT
            continue
        reasons[a] = R_TOP_K
        ws._candidates[n_cand] = a
        n_cand += 1
    # Selection: maybe a trial first, then k rounds of "best remaining candidate whose group
    # is still open".
    k = cat.placement_top_k[channel, placement]
    if 0 < k_req < k:
        k = k_req
    for g in range(cat.n_groups):
        ws._blocked[g] = 0
    n = 0
    best = _trial(cat, mv, channel, reasons, factors,
                  _n_untried(cat, mv, channel, reasons, factors), &ws._rng) if k > 0 else -1
    if best >= 0:
        reasons[best] = R_SELECTED
        ws._out_action[out, 0] = <int32_t>best
        for j in range(N_FACTORS):
            ws._out_factors[out, 0, j] = factors[best * N_FACTORS + j]
        n = 1
        g = cat.action_group[best]
        if not cat.group_multiple[g]:
            ws._blocked[g] = 1
    while n < k:
        best = -1
        best_p = 0.0
        for j in range(n_cand):
            a = ws._candidates[j]
            if reasons[a] != R_TOP_K or ws._blocked[cat.action_group[a]]:
                continue
            if best < 0 or factors[a * N_FACTORS + 3] > best_p:
                best = a
                best_p = factors[a * N_FACTORS + 3]
        if best < 0:
            break
        reasons[best] = R_SELECTED
        ws._out_action[out, n] = <int32_t>best
        for j in range(N_FACTORS):
            ws._out_factors[out, n, j] = factors[best * N_FACTORS + j]
        n += 1
        g = cat.action_group[best]
        if not cat.group_multiple[g]:
            ws._blocked[g] = 1
    ws._out_count[out] = <int32_t>n
    for j in range(n_cand):
        a = ws._candidates[j]
        if reasons[a] == R_TOP_K and ws._blocked[cat.action_group[a]]:
            reasons[a] = R_GROUP_LIMIT
    first = ws._out_action[out, 0] if n > 0 else -1
    n_control = _control(cat, ws, out, channel, reasons, factors, k)
    _selection(cat, mv, ws, channel, reasons, factors, k, out, n_control, first)


cdef inline bint _control_eligible(CatalogView cat, const int8_t* reasons, const double* factors,
                                   Py_ssize_t a) noexcept nogil:
    """Whether a control decision may show `a`: it passed rules, validity, consent and
    contact policies and is worth something on this channel, whatever the models think."""
    return (_scored(reasons, a)
            and factors[a * N_FACTORS + 1] * factors[a * N_FACTORS + 2] * cat.lever[a] > 0.0)


cdef Py_ssize_t _control(CatalogView cat, Workspace ws, Py_ssize_t out, int channel,
                         int8_t* reasons, const double* factors, int k) noexcept nogil:
    """With the channel's control share, hold the decision back: it shows one action drawn
    uniformly from the control-eligible ones instead of the models' choice, or nothing when
    none is. The coin is tossed for every decision: tossed only when something was eligible,
    the decisions nothing could be shown in would all fall in the models' group, and the two
    groups would differ by more than what the models add. How many actions control could
    have drawn from."""
    cdef Py_ssize_t a, b, n_eligible = 0, pick
    cdef int j
    ws._out_control[out] = 0
    if k <= 0 or not cat.control_share[channel] > 0.0:
        return 0
    for a in range(cat.n_actions):
        if _control_eligible(cat, reasons, factors, a):
            n_eligible += 1
    if not _uniform(&ws._rng) < cat.control_share[channel]:
        return n_eligible
    for b in range(cat.n_actions):
        if reasons[b] == R_SELECTED or reasons[b] == R_GROUP_LIMIT:
            reasons[b] = R_TOP_K
    ws._out_control[out] = 1
    if n_eligible == 0:
        ws._out_count[out] = 0
        return 0
    pick = <Py_ssize_t>(_uniform(&ws._rng) * n_eligible)
    for a in range(cat.n_actions):
        if _control_eligible(cat, reasons, factors, a):
            if pick == 0:
                break
            pick -= 1
    reasons[a] = R_SELECTED
    ws._out_action[out, 0] = <int32_t>a
    for j in range(N_FACTORS):
        ws._out_factors[out, 0, j] = factors[a * N_FACTORS + j]
    ws._out_count[out] = 1
    return n_eligible


cdef inline bint _scored(const int8_t* reasons, Py_ssize_t a) noexcept nogil:
    return (reasons[a] == R_RESTRAINT or reasons[a] == R_TOP_K or reasons[a] == R_SELECTED
            or reasons[a] == R_GROUP_LIMIT)


cdef inline void _bound(CatalogView cat, Workspace ws, const double* factors, Py_ssize_t a,
                        double* low, double* high) noexcept nogil:
    """The priorities between which a's re-runs fall but for SELECTION_TAIL-sigma draws."""
    cdef double w = factors[a * N_FACTORS + 1] * factors[a * N_FACTORS + 2] * cat.lever[a]
    cdef double below = 0.0 if cat.optimistic else SELECTION_TAIL  # optimistic: never below
    if cat.exploration == EXPLORE_THOMPSON:
        low[0] = _sigmoid(ws._logit[a] - below * ws._spread[a]) * w
        high[0] = _sigmoid(ws._logit[a] + SELECTION_TAIL * ws._spread[a]) * w
    else:
        low[0] = high[0] = factors[a * N_FACTORS + 3]


cdef void _prune(CatalogView cat, Workspace ws, const int8_t* reasons, const double* factors,
                 int k, Py_ssize_t out) noexcept nogil:
    """Marks the scored actions a re-run can rank (`_active`): those whose highest priority
    ranks (`_ranks`) and reaches the (k+1)-th highest lowest priority among the groups (each
    action of a group that allows several, whose low ranks too), as k+1 such rivals leave
    one ahead of it whatever the trial takes; and those the decision showed. (Below the
    threshold, or at 0, a re-run never ranks an action: left out, a decision that shows
    nothing re-draws only the actions that might have crossed it.)"""
    cdef Py_ssize_t a, j, n_top = 0
    cdef double low, high, bar = cat.restraint, v  # the rivals' lows all reach it
    cdef int g
    for g in range(cat.n_groups):
        ws._group_low[g] = NAN
    for a in range(cat.n_actions):
        ws._active[a] = 0
        if not _scored(reasons, a):
            continue
        _bound(cat, ws, factors, a, &low, &high)
        if not _ranks(cat, low):
            continue
        g = cat.action_group[a]
        if cat.group_multiple[g]:
            v = low
        elif not ws._group_low[g] >= low:  # the group's best (NaN: none yet)
            ws._group_low[g] = low
            continue
        else:
            continue
        n_top = _keep_top(ws, n_top, k + 1, v)
    for g in range(cat.n_groups):
        if ws._group_low[g] == ws._group_low[g]:
            n_top = _keep_top(ws, n_top, k + 1, ws._group_low[g])
    if n_top == k + 1:
        bar = ws._top[k]
    for a in range(cat.n_actions):
        if _scored(reasons, a):
            _bound(cat, ws, factors, a, &low, &high)
            ws._active[a] = _ranks(cat, high) and high >= bar
    for j in range(ws._out_count[out]):
        ws._active[ws._out_action[out, j]] = 1


cdef inline Py_ssize_t _keep_top(Workspace ws, Py_ssize_t n, Py_ssize_t size,
                                 double v) noexcept nogil:
    """Inserts v into the descending list ws._top of at most `size`; its new length."""
    cdef Py_ssize_t i
    if n == size and not v > ws._top[n - 1]:
        return n
    if n < size:
        n += 1
    i = n - 1
    while i > 0 and v > ws._top[i - 1]:
        ws._top[i] = ws._top[i - 1]
        i -= 1
    ws._top[i] = v
    return n


cdef void _selection(CatalogView cat, ModelView mv, Workspace ws, int channel,
                     const int8_t* reasons, const double* factors, int k, Py_ssize_t out,
                     Py_ssize_t n_control, Py_ssize_t first) noexcept nogil:
    """For each slot the decision filled, the probability that the policy shows that action
    there. The models' part: 1 when nothing was drawn at random, else the share of runs of
    the draws (Thompson's logits, the trial) that show it there: the decision's own (whose
    first pick was `first`) and `selection_samples` re-runs. The re-runs draw from a stream
    of their own, seeded by the decision's, so the decision's own draws are as before. With
    a control share s over n_control actions, the policy is the mixture: (1 - s) x the
    models' part, plus s / n_control at the first slot. A decision that shows nothing puts
    in slot 0 the probability that the policy shows nothing (`_nothing`)."""
    cdef Py_ssize_t a, i, j, runs = 1
    cdef Py_ssize_t n_untried = _n_untried(cat, mv, channel, reasons, factors)
    cdef int n = ws._out_count[out]
    cdef bint held = ws._out_control[out]
    cdef bint random = n_untried > 0
    cdef double p, share = cat.control_share[channel]
    for a in range(cat.n_actions):
        if _scored(reasons, a) and cat.exploration == EXPLORE_THOMPSON and ws._spread[a] > 0.0:
            random = True
    if n == 0:
        _nothing(cat, mv, ws, channel, reasons, factors, k, out, n_control, first,
                 random, n_untried)
        return
    for j in range(n):
        # the decision's own draws are one run of the models: no models' estimate is 0
        # unless control showed what they did not choose
        ws._hits[j] = 1 if not held or (j == 0 and first == ws._out_action[out, 0]) else 0
    if random:
        runs += cat.selection_samples
        _rerun(cat, mv, ws, channel, reasons, factors, k, out, n, n_untried)
    for j in range(n):
        p = <double>ws._hits[j] / runs
        if share > 0.0:
            p = (1.0 - share) * p
            if j == 0 and _control_eligible(cat, reasons, factors, ws._out_action[out, 0]):
                p += share / n_control
        ws._out_selection[out, j] = p


cdef void _nothing(CatalogView cat, ModelView mv, Workspace ws, int channel,
                   const int8_t* reasons, const double* factors, int k, Py_ssize_t out,
                   Py_ssize_t n_control, Py_ssize_t first, bint random,
                   Py_ssize_t n_untried) noexcept nogil:
    """For a decision that shows nothing, the probability that the policy shows nothing, in
    slot 0 of its selection: off-policy estimators weigh such a decision by it like any
    other. The models' part is the share of runs that leave the first slot empty (exact when
    nothing was drawn at random or no slot was asked for); control shows nothing only when
    no action is control-eligible (n_control 0), so the mixture adds s then."""
    cdef Py_ssize_t runs = 1
    cdef double p, share = cat.control_share[channel]
    # the decision's own run, unless control held back what the models showed
    ws._hits[0] = 1 if first < 0 else 0
    if random and k > 0:
        runs += cat.selection_samples
        _rerun(cat, mv, ws, channel, reasons, factors, k, out, 0, n_untried)
    p = <double>ws._hits[0] / runs
    if share > 0.0:
        p = (1.0 - share) * p + (share if n_control == 0 else 0.0)
    ws._out_selection[out, 0] = p


cdef void _rerun(CatalogView cat, ModelView mv, Workspace ws, int channel,
                 const int8_t* reasons, const double* factors, int k, Py_ssize_t out, int n,
                 Py_ssize_t n_untried) noexcept nogil:
    """Adds to ws._hits[j] the re-runs of the models' draws that show the decision's j-th
    action at slot j; for a decision that showed nothing (n 0), to ws._hits[0] those that
    show nothing."""
    cdef Py_ssize_t a, i, j, s, best, n_active = 0
    cdef int g, filled
    cdef double best_p
    cdef uint64_t rng = ws._rng ^ <uint64_t>0xD1B54A32D192ED03
    _prune(cat, ws, reasons, factors, k, out)
    for a in range(cat.n_actions):
        if ws._active[a]:
            ws._active_list[n_active] = <int32_t>a
            n_active += 1
    for s in range(cat.selection_samples):
        for i in range(n_active):
            a = ws._active_list[i]
            if cat.exploration == EXPLORE_THOMPSON:
                ws._sampled[a] = _sigmoid(ws._logit[a] + ws._spread[a] * _draw(cat, &rng)) * \
                    factors[a * N_FACTORS + 1] * factors[a * N_FACTORS + 2] * cat.lever[a]
            else:
                ws._sampled[a] = factors[a * N_FACTORS + 3]
        for g in range(cat.n_groups):
            ws._blocked[g] = 0
        filled = 0
        a = _trial(cat, mv, channel, reasons, factors, n_untried, &rng)
        if a >= 0:
            ws._sample_slots[0] = <int32_t>a
            ws._sampled[a] = NAN  # shown: out of the ranking (and never drawn when inactive)
            filled = 1
            if not cat.group_multiple[cat.action_group[a]]:
                ws._blocked[cat.action_group[a]] = 1
        while filled < k:
            best = -1
            best_p = 0.0
            for i in range(n_active):
                a = ws._active_list[i]
                if ws._blocked[cat.action_group[a]] or not _ranks(cat, ws._sampled[a]):
                    continue
                if best < 0 or ws._sampled[a] > best_p:
                    best = a
                    best_p = ws._sampled[a]
            if best < 0:
                break
            ws._sample_slots[filled] = <int32_t>best
            ws._sampled[best] = NAN
            filled += 1
            if not cat.group_multiple[cat.action_group[best]]:
                ws._blocked[cat.action_group[best]] = 1
        for j in range(min(n, filled)):
            if ws._sample_slots[j] == ws._out_action[out, j]:
                ws._hits[j] += 1
        if n == 0 and filled == 0:
            ws._hits[0] += 1


def decide(CatalogView cat, StateView st, ModelView mv, Workspace ws, const int64_t[::1] rows,
           const int32_t[::1] channels, const int32_t[::1] placements, const double[:, ::1] ctx,
           const double[::1] now, const int32_t[::1] k_req):
    """Re-evaluate rows[i] for channels[i]/placements[i]; results land in ws, row i."""
    cdef Py_ssize_t i, n = rows.shape[0]
    if n > ws.capacity:
        raise ValueError(f"{n} decisions do not fit a workspace of {ws.capacity}")
    with nogil:
        for i in range(n):
            _decide_one(cat, st, mv, ws, rows[i], channels[i], placements[i], &ctx[i, 0],
                        now[i], k_req[i], i)


def normals(uint64_t seed, Py_ssize_t n):
    """The first n standard normals the kernel draws from seed, as the twin's `normals`."""
    out = np.empty(n)
    cdef double[::1] view = out
    cdef uint64_t state = seed
    cdef Py_ssize_t i
    with nogil:
        for i in range(n):
            view[i] = _normal(&state)
    return out


def decide_one(CatalogView cat, StateView st, ModelView mv, Workspace ws, int64_t row,
               int channel, int placement, const double[::1] ctx, double now, int k_req,
               Py_ssize_t out=0):
    with nogil:
        _decide_one(cat, st, mv, ws, row, channel, placement, &ctx[0], now, k_req, out)


# -------------------------------------------------------------------------------------------
# Outcomes

def predictors(CatalogView cat, StateView st, ModelView mv, const int64_t[::1] rows,
               const double[:, ::1] ctx, const double[::1] now, double[:, ::1] out):
    cdef Py_ssize_t i
    cdef double[::1] view = np.zeros(st.values.shape[1])
    with nogil:
        for i in range(rows.shape[0]):
            _profile_view(cat, &st.values[rows[i], 0], st.values.shape[1], now[i], &view[0])
            _predictor_vector(cat, mv, &view[0], &ctx[i, 0], &out[i, 0])


def record_outcomes(CatalogView cat, StateView st, ModelView mv, const int64_t[::1] rows,
                    const int32_t[::1] actions, const int32_t[::1] channels,
                    const int8_t[::1] outcomes, const double[::1] times, const double[:, ::1] x,
                    const double[::1] values, const int8_t[::1] teach, int8_t[::1] refused_at):
    """History for every outcome, learning for those that are not impressions, as far as
    `teach` (compiler.Teach's bits) lets it: the label, and for a conversion with a value, not
    NaN, the value; the number of updates refused because they would leave a model not
    finite (the model is left as is, and the value not learned), each marked 1 in
    `refused_at` (0 for the others). The engine bounds a value before (engine.py's
    `_bounded_value` says why)."""
    cdef Py_ssize_t i, m, row, d = cat.n_predictors, refused = 0
    cdef int head, outcome
    cdef double y
    # a model's new statistics go to the view's scratch, and back only when all are finite
    cdef double* mean = &mv._mean[0]
    cdef double* precision = &mv._precision[0]
    with nogil:
        for i in range(rows.shape[0]):
            row = rows[i]
            outcome = outcomes[i]
            refused_at[i] = 0
            head = st.ring_head[row]
            # a head outside the ring (only a damaged block could bring one: blocks.validate
            # refuses them) writes entry 0, never past the row: one unsigned compare, which
            # costs nothing measurable beside the ring's four writes (issue 18's probe)
            if <unsigned int>head >= <unsigned int>cat.history_size:
                head = 0
            st.ring_action[row, head] = <int16_t>actions[i]
            st.ring_channel[row, head] = <int8_t>channels[i]
            st.ring_outcome[row, head] = <int8_t>outcome
            st.ring_time[row, head] = <int32_t>floor(times[i] - HISTORY_EPOCH_S)
            st.ring_head[row] = (head + 1) % cat.history_size
            if outcome == OUT_IMPRESSION:
                continue
            y = 1.0 if (outcome == OUT_ACCEPT or outcome == OUT_CONVERT) else 0.0
            m = actions[i] * cat.n_channels + channels[i]
            if teach[i] & TEACH_LABEL:
                if mv.full:
                    if not _learn_full(mv, m, &x[i, 0], d, y, mean, precision,
                                       &mv._covariance[0], &mv._u[0]):
                        refused_at[i] = 1
                        refused += 1
                        continue
                elif not _learn_diagonal(mv, m, &x[i, 0], d, y, mean, precision):
                    refused_at[i] = 1
                    refused += 1
                    continue
                if y != 0.0:
                    mv.positives[m] += 1.0
                else:
                    mv.negatives[m] += 1.0
            if outcome == OUT_CONVERT and teach[i] & TEACH_VALUE and isfinite(values[i]):
                mv.value_count[m] += 1.0
                mv.value_sum[m] += values[i]
    return refused


cdef bint _learn_diagonal(ModelView mv, Py_ssize_t m, const double* x, Py_ssize_t d, double y,
                          double* mean, double* precision) noexcept nogil:
    """The one-example moment match under a diagonal posterior; False (model untouched) when
    the result would not be finite."""
    cdef Py_ssize_t j
    cdef double z = 0.0, s = 0.0, r = NAN, w = NAN, check = 0.0
    for j in range(d):
        z += mv.mean[m, j] * x[j]
        s += x[j] * x[j] / mv.precision[m, j]
    if isfinite(z + s):
        _one_example_step(z, s, y, &r, &w)
    # x*0 is 0 for a finite x and NaN for inf or NaN: one branch-free sum tells whether
    # every new value is finite (measured half the cost of isfinite per value)
    for j in range(d):
        mean[j] = mv.mean[m, j] + r * x[j] / mv.precision[m, j]
        precision[j] = mv.precision[m, j] + x[j] * x[j] * w
        check += precision[j] * 0.0 + mean[j] * 0.0
    if check != 0.0:
        return False
    for j in range(d):
        mv.precision[m, j] = precision[j]
        mv.mean[m, j] = mean[j]
    return True


cdef bint _learn_full(ModelView mv, Py_ssize_t m, const double* x, Py_ssize_t d, double y,
                      double* mean, double* precision, double* cov, double* u) noexcept nogil:
    """The one-example moment match under a full posterior: the mean moves by r along u = S x,
    P gains w x x' and S loses w u u' / (1 + w s) (Sherman-Morrison)."""
    cdef Py_ssize_t i, j
    cdef double* S = &mv.covariance[m, 0, 0]
    cdef double* P = &mv.matrix[m, 0, 0]
    cdef double z = 0.0, s = 0.0, r = NAN, w = NAN, shrink, check = 0.0
    for i in range(d):
        z += mv.mean[m, i] * x[i]
        u[i] = 0.0
        for j in range(d):
            u[i] += S[i * d + j] * x[j]
        s += x[i] * u[i]
    if s < 0.0:  # rounding in a near-singular S
        s = 0.0
    if isfinite(z + s):
        _one_example_step(z, s, y, &r, &w)
    shrink = w / (1.0 + w * s)
    for i in range(d):
        mean[i] = mv.mean[m, i] + r * u[i]
        check += mean[i] * 0.0
        for j in range(d):
            precision[i * d + j] = P[i * d + j] + w * x[i] * x[j]
            cov[i * d + j] = S[i * d + j] - shrink * u[i] * u[j]
            check += precision[i * d + j] * 0.0 + cov[i * d + j] * 0.0
    if check != 0.0:
        return False
    for i in range(d):
        mv.mean[m, i] = mean[i]
    for i in range(d * d):
        P[i] = precision[i]
        S[i] = cov[i]
    return True
