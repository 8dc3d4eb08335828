"""The simulator's world: customers, the hidden truth of how they answer, and its catalogs.

Customers have a segment (a, b or c) and a score (0 to 2), which a CRM sends as one `profile`
event each; every visit comes on web (WEB_SHARE) or the app, from a mobile or a desktop device
(the decision's context). Each action has a hidden true acceptance probability, logistic in
[1, score, segment is b, segment is c, device is mobile], and a conversion value; what a
decision is worth is acceptance × value. Kairos's catalog declares exactly those inputs as its
predictors, so its models can learn the truth, but it starts from uninformed priors.

The truth moves twice (`Phase`): at DRIFT the discount stops working for the customers it
worked best for (a competitor matched it) and content gains on mobile; at LAUNCH a new action,
`bundle`, comes with the next catalog version. It is truly best for about a third of the
contexts (`launch_share` says exactly how many of this population's: high scorers of segments
a and b, more on desktops), and its truth holds from the start: only its eligibility changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import yaml

CHANNELS = {"web": "hero", "app": "home"}  # one placement of one slot each
WEB_SHARE = 0.6
MOBILE_SHARE = 0.5
SEGMENTS = ("a", "b", "c")
SCORE_MAX = 2.0
NEW_ACTION = "bundle"
CATALOG_NAME = "simulated-retailer"
FIRST_VERSION, LAUNCH_VERSION = "sim-1", "sim-2"  # the run's catalog, then the launch's


class Phase(IntEnum):
    START = 0
    DRIFT = 1  # the truth of discount and content changed
    LAUNCH = 2  # the drifted truth; bundle is in the catalog


@dataclass(frozen=True)
class Truth:
    """One action's hidden truth: logit coefficients on FEATURES, before and after the drift,
    the value of a conversion, and the channels it is offered on."""

    before: tuple[float, float, float, float, float]
    after: tuple[float, float, float, float, float]
    value: float
    channels: tuple[str, ...]


FEATURES = ("1", "score", "segment=b", "segment=c", "device=mobile")
WORLD: dict[str, Truth] = {
    "discount": Truth((-1.5, 1.0, 0.5, -0.5, 0.3), (-2.2, 0.8, 0.5, -0.5, 0.3), 5.0,
                      ("web", "app")),
    "upgrade": Truth((-2.0, 1.2, -0.5, 0.8, -0.4), (-2.0, 1.2, -0.5, 0.8, -0.4), 6.0,
                     ("web", "app")),
    "content": Truth((-0.5, -0.5, 0.2, 0.0, 0.6), (-0.5, -0.5, 0.2, 0.0, 1.3), 3.0,
                     ("web", "app")),
    "care": Truth((-1.0, 0.0, -0.3, 0.5, 0.0), (-1.0, 0.0, -0.3, 0.5, 0.0), 4.0, ("web",)),
    NEW_ACTION: Truth((-2.8, 1.6, 1.4, -1.0, -0.6), (-2.8, 1.6, 1.4, -1.0, -0.6), 7.0,
                      ("web", "app")),
}
DRIFT_SUMMARY = ("discount's acceptance falls (intercept -1.5 to -2.2, score 1.0 to 0.8), "
                 "content's rises on mobile (0.6 to 1.3)")
ACTIONS = tuple(WORLD)  # the index of an action in every array below
BASE_ACTIONS = tuple(a for a in ACTIONS if a != NEW_ACTION)


@dataclass(frozen=True)
class Population:
    """N customers' profiles, as arrays."""

    segment: np.ndarray  # index into SEGMENTS
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def draw(n: int, seed: int) -> "Population":
        rng = np.random.default_rng([seed, 0])
        return Population(rng.integers(0, len(SEGMENTS), n),
                          np.round(rng.uniform(0.0, SCORE_MAX, n), 2))

    def profile(self, i: int) -> dict[str, Any]:
        """The CRM's `profile` event attributes of customer i."""
        return {"segment": SEGMENTS[int(self.segment[i])], "score": float(self.score[i])}


def customer_id(i: int) -> str:
    return f"sim{i:06d}"


def features(population: Population, customers: np.ndarray, mobile: np.ndarray) -> np.ndarray:
    """The truth's inputs, one row per (customer index, device is mobile)."""
    seg = population.segment[customers]
    return np.column_stack([np.ones(len(customers)), population.score[customers], seg == 1,
                            seg == 2, mobile]).astype(float)


def expected_rewards(population: Population, customers: np.ndarray, web: np.ndarray,
                     mobile: np.ndarray, drifted: np.ndarray) -> np.ndarray:
    """True acceptance × value of every action (columns in ACTIONS order) for each decision;
    0 where the action is not offered on the decision's channel."""
    x = features(population, customers, mobile)
    out = np.empty((len(customers), len(ACTIONS)))
    for j, truth in enumerate(WORLD.values()):
        logit = np.where(drifted, x @ np.array(truth.after), x @ np.array(truth.before))
        offered = np.where(web, "web" in truth.channels, "app" in truth.channels)
        out[:, j] = np.where(offered, truth.value / (1.0 + np.exp(-logit)), 0.0)
    return out


def acceptance(action: str, population: Population, i: int, web: bool, mobile: bool,
               drifted: bool) -> float:
    """The true probability that customer i accepts `action` (0 where it is not offered)."""
    reward = expected_rewards(population, np.array([i]), np.array([web]), np.array([mobile]),
                              np.array([drifted]))[0, ACTIONS.index(action)]
    return float(reward / WORLD[action].value)


def launch_share(population: Population) -> float:
    """The share of this population's contexts (customer × channel × device, weighted as
    visits are drawn) for which the new action is truly best after the launch."""
    n = len(population)
    customers = np.tile(np.arange(n), 4)
    web = np.repeat([True, True, False, False], n)
    mobile = np.repeat([True, False, True, False], n)
    weight = np.where(web, WEB_SHARE, 1 - WEB_SHARE) * np.where(mobile, MOBILE_SHARE,
                                                                  1 - MOBILE_SHARE)
    rewards = expected_rewards(population, customers, web, mobile, np.ones(len(web), bool))
    best = rewards.argmax(axis=1) == ACTIONS.index(NEW_ACTION)
    return float((weight * best).sum() / weight.sum())


# -- catalogs ---------------------------------------------------------------------------------


def catalog(version: str, actions: tuple[str, ...], control: float = 0.0,
            exploration: dict[str, Any] | None = None,
            prior: dict[str, float] | None = None, levers: dict[str, float] | None = None,
            eligibility: dict[str, str] | None = None) -> str:
    """A catalog of the world's actions: the predictors the truth uses, uninformed priors
    (base rate 0.15, precision 1), Thompson sampling unless `exploration` says otherwise,
    `control` of each channel's decisions held back."""
    levers, eligibility = levers or {}, eligibility or {}
    specs = []
    for action in actions:
        truth = WORLD[action]
        spec: dict[str, Any] = {"id": action, "group": action, "purpose": "service",
                                "value": truth.value,
                                "channels": {ch: {"treatment": f"{action}_{ch}"}
                                             for ch in truth.channels}}
        if action in levers:
            spec["lever"] = levers[action]
        if action in eligibility:
            spec["eligibility"] = eligibility[action]
        specs.append(spec)
    channel = {"control": control} if control else {}
    doc = {
        "kairos_catalog": 1, "name": CATALOG_NAME, "version": version,
        "channels": {ch: {"placements": {pl: {"top_k": 1}}, **channel}
                     for ch, pl in CHANNELS.items()},
        "context": {"device": {"type": "string", "values": ["desktop", "mobile"]}},
        "events": {"profile": {"fields": {
            "segment": {"type": "string", "values": list(SEGMENTS)},
            "score": {"type": "float", "min": 0, "max": SCORE_MAX}}}},
        "attributes": {
            "segment": {"type": "string", "values": list(SEGMENTS), "default": "a",
                        "from": {"event": "profile", "field": "segment"}},
            "score": {"type": "float", "default": 0,
                      "from": {"event": "profile", "field": "score"}}},
        "consent": {"service": True},
        "actions": specs,
        "arbitration": {"exploration": exploration or {"method": "thompson"}},
        "models": {"predictors": [{"name": "score"},
                                  {"name": "segment", "equals": "b"},
                                  {"name": "segment", "equals": "c"},
                                  {"name": "device", "source": "context", "equals": "mobile"}],
                   "prior": prior or {"base_rate": 0.15, "precision": 1.0,
                                      "predictor_precision": 1.0}},
        "fallbacks": {ch: [] for ch in CHANNELS}}
    return yaml.safe_dump(doc, sort_keys=False)


def running_catalogs(control: float) -> tuple[str, str]:
    """The catalog the run starts on, and the launch's next version (with the new action)."""
    return (catalog(FIRST_VERSION, BASE_ACTIONS, control),
            catalog(LAUNCH_VERSION, ACTIONS, control))


def candidate_catalog() -> str:
    """A policy to evaluate off-policy against the run's log: a fixed rule, no exploration and
    no learning (replay decides with a catalog's priors, equal for every action here, so
    value × lever ranks): upgrade for segment c, discount for b, and for a care on web and
    content on the app. Only the base actions, which every logged decision could show (the
    control group and Thompson's draws give each a chance), so its value is identified from
    the log."""
    return catalog("sim-candidate", BASE_ACTIONS, exploration={"method": "none"},
                   prior={"base_rate": 0.15, "precision": 50.0, "predictor_precision": 50.0},
                   levers={"content": 1.5, "care": 1.2},
                   eligibility={"upgrade": "segment == 'c'", "discount": "segment != 'a'"})
