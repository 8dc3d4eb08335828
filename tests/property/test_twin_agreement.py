"""Property tests: the Cython kernel agrees with the NumPy twin on random catalogs and input.

Stated tolerance: floats agree to a relative 1e-12 (both sides use the same libm functions in
the same order, so in practice they are bit-identical); codes, rankings, history and random
streams agree exactly.

Numbers and times reach for the extremes (huge, tiny, negative, signed zeros, the input bounds
and past them, as a profile written before the bounds may hold; 1970 to the history ring's
last second), and some models start poisoned, so that clipping and refusals are held too.
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.workload import yaml_text
from kairos.core import _kernel, reference
from kairos.core.catalog import MAX_NUMBER, load_catalog
from kairos.core.compiler import Outcome, compile_catalog
from kairos.core.engine import LATEST_TIME_S
from kairos.core.models import ModelTable
from kairos.core.state import ProfileTable

DATA = Path(__file__).resolve().parents[1] / "unit" / "core" / "data"

RTOL = 1e-12
T0 = 1_800_000_000.0
LONGEST_JOURNEY_S = 40 * 86400.0
STARTS = [1e4, 1e9, T0, 3e9, LATEST_TIME_S - LONGEST_JOURNEY_S - 1]  # 1970 .. 2088
EXTREMES = [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e-12, -1e-12, 1 - 2 ** -53, 2 ** 53,
            MAX_NUMBER, -MAX_NUMBER, MAX_NUMBER * (1 - 2 ** -52), 1e300, -1e300, 1.7e308]
BASE = yaml.safe_load((DATA / "small.yaml").read_text())

NUM_NAMES = ["views_7d", "spend_30d", "orders", "lifetime_spend", "since_cart",
             "since_purchase", "max_order", "min_price", "late_deliveries",
             "context.basket_value", "action.margin"]
STR_NAMES = {"tier": ["none", "silver", "gold"], "last_category": ["shoes", "bags", "hats"],
             "context.device": ["desktop", "mobile"]}
BOOL_NAMES = ["marketing_opt_in", "email_opt_in"]

# 1e12, MAX_NUMBER: a value rule's result past it is INVALID_VALUE in both
numbers = st.sampled_from(["0", "1", "2.5", "10", "100", "-3", "30m", "2h", "7d", "0.001",
                           "1e12"])


# the expression strategies are built once: built anew at each action drawn, their recursive
# strategies and lambdas (which Hypothesis inspects) were a third of the test's time
@functools.cache
def num_expr():
    leaves = st.one_of(numbers, st.sampled_from(NUM_NAMES),
                       st.just("days_since(member_since)"), st.just("hours_since(now - 1d)"))

    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"-{e}"),
            st.tuples(st.sampled_from(["min", "max", "coalesce"]), inner, inner).map(
                lambda t: f"{t[0]}({t[1]}, {t[2]})"),
            st.tuples(st.sampled_from(["abs", "log1p"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
        )
    return st.recursive(leaves, extend, max_leaves=6)


@functools.cache
def bool_expr():
    num = num_expr()
    string_test = st.sampled_from(sorted(STR_NAMES)).flatmap(lambda name: st.one_of(
        st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(STR_NAMES[name])).map(
            lambda t: f"{name} {t[0]} '{t[1]}'"),
        st.tuples(st.sampled_from(["in", "not in"]),
                  st.lists(st.sampled_from(STR_NAMES[name]), min_size=1, max_size=3)).map(
            lambda t: f"{name} {t[0]} [{', '.join(repr(v) for v in t[1])}]")))
    leaves = st.one_of(
        st.tuples(num, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(num, num, num).map(lambda t: f"{t[0]} between {t[1]} and {t[2]}"),
        st.sampled_from(NUM_NAMES + sorted(STR_NAMES)).map(lambda n: f"known({n})"),
        string_test, st.sampled_from(BOOL_NAMES + ["true", "false"]),
        st.tuples(st.sampled_from(NUM_NAMES[:9]), st.sampled_from(["in", "not in"]),
                  st.lists(numbers.filter(lambda n: n[-1].isdigit()), min_size=1, max_size=3))
        .map(lambda t: f"{t[0]} {t[1]} [{', '.join(t[2])}]"),
    )

    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"not {e}"))
    return st.recursive(leaves, extend, max_leaves=4)


durations = st.sampled_from(["30m", "2h", "1d", "3d", "7d"])


@st.composite
def actions(draw, index: int):
    channels = draw(st.sets(st.sampled_from(["web", "email"]), min_size=1))
    offers = {}
    for ch in sorted(channels):
        offer = {"treatment": f"t{index}_{ch}"}
        if ch == "web" and draw(st.booleans()):
            offer["placements"] = draw(st.lists(st.sampled_from(["hero", "sidebar"]),
                                                min_size=1, max_size=2, unique=True))
        offers[ch] = offer
    action = {"id": f"a{index}", "group": draw(st.sampled_from(["sell", "serve", "retain"])),
              "purpose": draw(st.sampled_from(["marketing", "service"])), "channels": offers,
              "value": draw(st.one_of(st.floats(0.1, 50), num_expr())),
              # 0: switched off, never ranked however the draws fall
              "lever": draw(st.one_of(st.just(0.0), st.floats(0.1, 3))),
              "attributes": {"margin": draw(st.floats(-1, 1))}}
    for stage in ("eligibility", "applicability", "suitability"):
        if draw(st.booleans()):
            action[stage] = draw(bool_expr())
    policy = {}
    if draw(st.booleans()):
        policy["max_impressions"] = {"count": draw(st.integers(1, 3)), "window": draw(durations)}
    if draw(st.booleans()):
        policy["suppress_after_rejects"] = {"count": draw(st.integers(1, 3)),
                                            "within": draw(durations), "for": draw(durations)}
    if draw(st.booleans()):
        policy["cooldown_after_accept"] = draw(durations)
    if policy:
        action["contact_policy"] = policy
    if draw(st.integers(0, 5)) == 0:
        action["valid"] = {"from": "2027-01-01T00:00:00Z"}
    return action


@st.composite
def catalogs(draw):
    doc = copy.deepcopy(BASE)
    doc["actions"] = [draw(actions(i)) for i in range(draw(st.integers(1, 12)))]
    doc["fallbacks"] = {"web": [], "email": []}
    groups = sorted({a["group"] for a in doc["actions"]})
    arb = doc["arbitration"]
    # the higher thresholds leave decisions that show nothing only by their draws
    arb["restraint_threshold"] = draw(st.sampled_from([0.0, 0.01, 0.5, 2.0, 5.0]))
    arb["one_per_group"] = draw(st.booleans())
    arb["allow_multiple"] = draw(st.lists(st.sampled_from(groups), unique=True))
    arb["context_weights"] = [w for w in draw(st.lists(st.fixed_dictionaries(
        {"weight": st.floats(0, 3)},
        optional={"channel": st.sampled_from(["web", "email"]), "group": st.sampled_from(groups),
                  "when": st.sampled_from([{"device": "mobile"}, {"device": "desktop"}])}),
        max_size=3))]
    method = draw(st.sampled_from(["none", "thompson", "ucb"]))
    arb["exploration"] = {"method": method, "variance_scale": draw(st.sampled_from([0.1, 1.0])),
                          "optimistic": draw(st.booleans()), "ucb_alpha": 1.5,
                          "trial_rate": draw(st.sampled_from([0.0, 0.3, 1.0])),
                          "selection_samples": draw(st.sampled_from([1, 16]))}
    doc["models"]["groups"] = {}
    doc["models"]["posterior"] = draw(st.sampled_from(["full", "diagonal"]))
    # max_ratio 1: a convert's value counts no more than the catalog's value
    doc["models"]["value"] = draw(st.sampled_from([{"learn": False}, {"prior_weight": 0},
                                                   {"prior_weight": 10},
                                                   {"prior_weight": 2, "max_ratio": 1}]))
    doc["models"]["predictors"] = doc["models"]["predictors"] + draw(st.lists(st.sampled_from([
        {"name": "lifetime_spend"}, {"name": "spend_30d", "transform": "scale", "scale": 10},
        {"name": "max_order", "transform": "log1p"}, {"name": "min_price"},
        {"name": "late_deliveries", "transform": "standardize"}]), unique_by=str, max_size=3))
    doc["history"] = {"size": draw(st.sampled_from([4, 8, 32]))}
    for channel in doc["channels"].values():
        channel["control"] = draw(st.sampled_from([0.0, 0.0, 0.3, 0.5]))
    return doc


@st.composite
def journeys(draw):
    """Events, decisions and outcomes for a few customers, interleaved."""
    steps = []
    t = draw(st.sampled_from(STARTS))
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.0, 1.0, 60.0, 3600.0, 86400.0, -7200.0]))
        customer = draw(st.sampled_from(["c0", "c1", "c2"]))
        kind = draw(st.sampled_from(["event", "event", "decide", "outcome"]))
        if kind == "event":
            etype = draw(st.sampled_from(["page_view", "add_to_cart", "purchase",
                                          "delivery_update", "profile_updated"]))
            steps.append(("event", customer, etype, t, draw(event_fields(etype))))
        elif kind == "decide":
            channel = draw(st.sampled_from([("web", "hero"), ("web", "sidebar"),
                                            ("email", "weekly")]))
            ctx = draw(st.fixed_dictionaries({}, optional={
                "device": st.sampled_from(["desktop", "mobile"]),
                "basket_value": amounts()}))
            steps.append(("decide", customer, channel, t, ctx, draw(st.integers(0, 3))))
        else:
            steps.append(("outcome", customer, draw(st.integers(0, 11)),
                          draw(st.sampled_from(["impression", "accept", "reject", "ignore",
                                                "convert", "convert"])), t,
                          # past, at and below value_max_ratio x the catalog's value
                          draw(st.sampled_from([math.nan, 0.0, 12.5, 1e4, 1e12])),
                          draw(st.integers(0, 3))))  # Teach's bits: what it may still teach
    return steps


def amounts():
    return st.one_of(st.floats(0, 1000), st.sampled_from(EXTREMES).flatmap(
        lambda x: st.sampled_from([x, -x])), st.floats(-MAX_NUMBER, MAX_NUMBER))


def event_fields(etype):
    cats = st.sampled_from(["shoes", "bags", "hats"])
    amount = amounts()
    return {
        "page_view": st.fixed_dictionaries({"category": cats}, optional={"price": amount}),
        "add_to_cart": st.fixed_dictionaries({"amount": amount}),
        "purchase": st.fixed_dictionaries({"amount": amount, "category": cats}),
        "delivery_update": st.fixed_dictionaries(
            {"status": st.sampled_from(["shipped", "delayed", "lost", "delivered"])}),
        "profile_updated": st.fixed_dictionaries(
            {"tier": st.sampled_from(["none", "silver", "gold"])},
            optional={"email_opt_in": st.booleans()}),
    }[etype]


class Side:
    """One implementation's full state, driven through the kernel API."""

    def __init__(self, module, compiled, seed):
        self.k, self.c = module, compiled
        self.table = ProfileTable(compiled, 4)
        self.models = ModelTable(compiled)
        self.cat = module.CatalogView(compiled)
        self.ws = module.Workspace(compiled, 8, seed)

    def views(self):
        t, m = self.table, self.models
        return (self.k.StateView(t.values, t.ring_action, t.ring_channel, t.ring_outcome,
                                 t.ring_time, t.ring_head),
                self.k.ModelView(*m.kernel_arrays()))


def encode(c, fields, etype):
    out = np.full(c.n_fields, math.nan)
    for name, value in fields.items():
        spec = c.catalog.event(etype).field(name)
        out[c.event_fields[etype][name]] = float(c.strings.intern(value)) \
            if spec.type == "string" else float(value)
    return out


def encode_ctx(c, ctx):
    out = np.full(len(c.context_names), math.nan)
    for key, value in ctx.items():
        out[c.context_index[key]] = float(c.strings.intern(value)) if isinstance(value, str) \
            else value
    return out


def assert_close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0, equal_nan=True, err_msg=what)


def input_statistics():
    """A standardised input's statistics as a journey finds them: (count, mean, deviation),
    warming up or past it (31, 32), with no spread and with the widest, so that the clip of
    what joins them is reached from both sides and by its floor, and at the count where they
    forget and just under it (STANDARDIZE_MAX_COUNT, 10,000), so that a decision's input
    makes them forget."""
    return st.tuples(st.sampled_from([0.0, 1.0, 31.0, 32.0, 1000.0, 9999.5, 10_000.0]),
                     st.sampled_from([0.0, 5.0, -3.0, 1e6, -MAX_NUMBER, MAX_NUMBER]),
                     st.sampled_from([0.0, 1e-9, 1.0, 1e3, MAX_NUMBER]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=catalogs(), steps=journeys(), seed=st.integers(0, 2**64 - 1),
       poisoned=st.lists(st.tuples(st.integers(0, 23), st.sampled_from([math.nan, math.inf])),
                         max_size=2), seen=input_statistics(),
       clipped=st.sampled_from([0.0, 0.05, 0.5]), clip=st.booleans())
def test_kernel_matches_twin(doc, steps, seed, poisoned, seen, clipped, clip):
    # what safe_dump writes, by libyaml where PyYAML has it: a tenth of the time
    compiled = compile_catalog(load_catalog(yaml_text(doc, sort_keys=True), "random.yaml"))
    # whether standardised inputs join their statistics clipped (off where the field declares
    # both bounds), drawn here since the drawn catalogs standardise a profile input only
    compiled.predictor_clip = np.full_like(compiled.predictor_clip, clip)
    sides = [Side(_kernel, compiled, seed), Side(reference, compiled, seed)]
    n_actions = len(compiled.action_ids)
    count, mean, sd = seen
    for side in sides:  # models a learner published before non-finite values were refused
        for m, value in poisoned:
            side.models.mean[m % compiled.n_models, 0] = value
        side.models.inputs[:, 1:] = np.array([[count], [count * mean],
                                              [count * (sd * sd + mean * mean)]])
        # the shard's share of clipped inputs, under and over the share that lowers weights
        side.models.input_clips[:, 1:] = np.array([[count], [count * clipped]])
    refused, refused_at = [0, 0], ([], [])  # counts, and which outcomes, per side
    for step in steps:
        for s, side in enumerate(sides):
            row = side.table.row(step[1])
            st_view, mv = side.views()
            rows = np.array([row], np.int64)
            if step[0] == "event":
                _, _, etype, t, fields = step
                side.k.apply_events(side.cat, st_view, rows,
                                    np.array([compiled.event_index[etype]], np.int32),
                                    np.array([t]), encode(compiled, fields, etype)[None, :])
            elif step[0] == "decide":
                _, _, (channel, placement), t, ctx, k_req = step
                ch = compiled.channel_index[channel]
                pl = compiled.placement_index[ch][placement]
                side.k.decide(side.cat, st_view, mv, side.ws, rows, np.array([ch], np.int32),
                              np.array([pl], np.int32), encode_ctx(compiled, ctx)[None, :],
                              np.array([t]), np.array([k_req], np.int32))
            else:
                _, _, a, outcome, t, value, teach = step
                a %= n_actions
                ch = int(np.flatnonzero(compiled.offered[a])[0])
                x = np.empty((1, compiled.n_predictors))
                side.k.predictors(side.cat, st_view, mv, rows,
                                  np.full((1, len(compiled.context_names)), math.nan),
                                  np.array([t]), x)
                flag = np.full(1, -1, np.int8)
                refused[s] += side.k.record_outcomes(
                    side.cat, st_view, mv, rows, np.array([a], np.int32),
                    np.array([ch], np.int32), np.array([Outcome[outcome.upper()]], np.int8),
                    np.array([t]), x, np.array([value]), np.array([teach], np.int8), flag)
                refused_at[s].append(int(flag[0]))
        compiled_side, twin = sides
        assert_close(compiled_side.table.values, twin.table.values, f"profiles after {step}")
        if step[0] == "decide":
            a, b = compiled_side.ws, twin.ws
            np.testing.assert_array_equal(a.reasons[0], b.reasons[0], f"reasons after {step}")
            n = a.out_count[0]
            assert n == b.out_count[0]
            assert a.out_control[0] == b.out_control[0]
            np.testing.assert_array_equal(a.out_action[0, :n], b.out_action[0, :n])
            assert_close(a.out_factors[0, :n], b.out_factors[0, :n], "winner factors")
            # a decision that shows nothing holds the probability of that in slot 0
            shown = max(n, 1)
            assert_close(a.out_selection[0, :shown], b.out_selection[0, :shown], "selection")
            assert ((0.0 <= a.out_selection[0, :shown])
                    & (a.out_selection[0, :shown] <= 1.0)).all()
            assert n or a.out_selection[0, 0] > 0.0  # the policy did show nothing
            scored = a.reasons[0] >= 11  # RESTRAINT, GROUP_LIMIT, TOP_K carry factors
            assert_close(a.factors[0][scored], b.factors[0][scored], "factors")
            assert_close(a.catalog_values[0][scored], b.catalog_values[0][scored],
                         "catalog values")
            assert_close(a.predictors[0], b.predictors[0], "predictors")
            assert a.rng_state == b.rng_state
    for name in ("ring_action", "ring_channel", "ring_outcome", "ring_time", "ring_head"):
        np.testing.assert_array_equal(getattr(sides[0].table, name), getattr(sides[1].table,
                                                                             name), name)
    kept = ("covariance",) if compiled.full_posterior else ()
    for name in ("mean", "precision", "positives", "negatives", "value_count", "value_sum",
                 "inputs", "inputs_added", "input_clips") + kept:
        assert_close(getattr(sides[0].models, name), getattr(sides[1].models, name), name)
    assert refused[0] == refused[1] == sum(refused_at[0]) and refused_at[0] == refused_at[1]
    limit = compiled.predictor_limit
    for side in sides:
        assert (np.abs(side.ws.predictors) <= limit).all()
        healthy = np.isfinite(side.models.mean).all(axis=1)
        assert np.isfinite(side.models.precision[healthy]).all()
        if side.models.full:
            assert np.isfinite(side.models.covariance[healthy]).all()
