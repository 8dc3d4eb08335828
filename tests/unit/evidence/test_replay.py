"""Replay: logged decisions re-decided by a candidate catalog on the core, offline."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import yaml

from bench import truth
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.records import (DecisionRecord, LogFormatError, OutcomeRecord,
                                             ShownAction)
from kairos.cluster.evidence.replay import (NOTHING, Replayed, Replayer, for_replay, replay,
                                            rewards)
from kairos.cluster.storage.blocks import export_block, pack, unpack
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

SAMPLES = 256


def candidate(text: str):
    return for_replay(load_catalog(text, "candidate"))


@pytest.fixture(scope="module")
def still_log():
    """60 decisions of the logging catalog that does not learn: its policy is the same
    throughout, so replaying it through itself must give back its own probabilities."""
    population = truth.customers(np.random.default_rng(4), 60)
    return truth.log(4, population, learn=False)


def test_rewards_read_the_first_slot_and_its_positive_outcomes(still_log):
    record = still_log[0]
    first = record.shown[0].action_id
    other = dataclasses.replace(record, shown=(
        ShownAction("other", 1, 0.5, 0.1, 0.1), *record.shown), outcomes=(
        OutcomeRecord(record.decision_id, record.customer_id, first, "IMPRESSION", 0.0, 1.0),
        OutcomeRecord(record.decision_id, record.customer_id, first, "CONVERT", 7.5, 2.0),
        OutcomeRecord(record.decision_id, record.customer_id, "other", "ACCEPT", 3.0, 2.0)))
    assert rewards(other) == (first, record.shown[0].selection, 1.0, 7.5)
    rejected = dataclasses.replace(other, outcomes=(OutcomeRecord(
        record.decision_id, record.customer_id, first, "REJECT", 0.0, 2.0),))
    assert rewards(rejected)[2:] == (0.0, 0.0)
    assert rewards(dataclasses.replace(record, shown=())) == (NOTHING, 1.0, 0.0, 0.0)


def test_replaying_the_logging_policy_gives_back_its_selection(still_log):
    """pi(logged action | x) of the policy replayed through itself is its logged selection,
    within the Monte Carlo error of both (the log's from its 128 re-runs, replay's from
    SAMPLES re-decisions); the weights stay near 1 (an effective sample size near the log's)
    and every estimate is the logged mean."""
    replayed = list(replay(still_log, candidate(truth.logging_catalog()), SAMPLES, seed=9))
    gaps = []
    for r in replayed:
        mu, pi = r.selection, r.candidate.get(r.logged, 0.0)
        error = math.sqrt(max(mu * (1 - mu), 0.01) * (1 / SAMPLES + 1 / 129))
        assert abs(pi - mu) < 4.5 * error + 1 / 129, (r.decision_id, mu, pi)
        gaps.append(pi - mu)
    assert abs(np.mean(gaps)) < 0.03
    evidence = evaluation.evaluate(replayed)
    for reward in ("accept", "value"):
        logged = evidence["logged"][reward]
        for estimate in evidence["estimates"][reward].values():
            assert abs(estimate["value"] - logged) < 3 * estimate["standard_error"]
    assert evidence["overlap"]["ess"] > 0.8 * len(replayed)


def test_a_deterministic_candidate_decides_as_its_engine_does(still_log):
    """Without exploration the candidate's first action is certain: replay's pi is 1 on what
    the candidate's own engine (public decide, profile rebuilt from the event) shows."""
    doc = yaml.safe_load(truth.candidate_catalog())
    doc["arbitration"]["exploration"] = {"method": "none"}
    text = yaml.safe_dump(doc)
    engine = DecisionEngine(candidate(text))
    population = truth.customers(np.random.default_rng(4), 60)
    for record, customer, r in zip(still_log, population,
                                   replay(still_log, candidate(text), 8)):
        truth._profile(engine, customer, record.time - 1)
        decision = engine.decide(customer.customer_id, record.channel, record.placement,
                                 record.context, now=record.time)
        expected = decision.actions[0].action_id if decision.actions else NOTHING
        assert r.candidate == {expected: 1.0}


def test_a_request_the_candidate_refuses_shows_nothing_and_is_counted(still_log):
    """A candidate without the app channel refuses the app's decisions: they count as
    showing nothing, and the report quotes why."""
    doc = yaml.safe_load(truth.candidate_catalog())
    del doc["channels"]["app"]
    del doc["fallbacks"]["app"]
    for action in doc["actions"]:
        action["channels"].pop("app", None)
    replayed = list(replay(still_log, candidate(yaml.safe_dump(doc)), 4))
    app = [r for r in replayed if r.channel == "app"]
    assert app and all(r.candidate == {NOTHING: 1.0} and "app" in r.refused for r in app)
    evidence = evaluation.evaluate(replayed)
    assert evidence["refused"]["count"] == len(app)
    assert evidence["differs"]["by_channel"]["app/home"]["differs"] == 1.0


def test_a_record_whose_profile_is_no_block_names_the_decision(still_log):
    broken = dataclasses.replace(still_log[0], profile=b"\x93not a block")
    with pytest.raises(LogFormatError, match=still_log[0].decision_id):
        Replayer(candidate(truth.candidate_catalog())).replay(broken)


def test_a_profile_whose_ring_times_are_past_int32_names_the_decision(still_log):
    """A list of Python ints, as another writer's msgpack holds it: the load raised
    OverflowError, which replay does not read as a damaged record."""
    block = unpack(still_log[0].profile)
    block["ring_time"] = np.full(np.shape(block["ring_time"]), 2**40).tolist()
    broken = dataclasses.replace(still_log[0], profile=pack(block))
    with pytest.raises(LogFormatError, match=still_log[0].decision_id):
        Replayer(candidate(truth.candidate_catalog())).replay(broken)


def test_fallback_records_are_left_out_and_counted(still_log):
    fallback = dataclasses.replace(still_log[0], shown=tuple(
        dataclasses.replace(s, selection=0.0) for s in still_log[0].shown))
    replayed = list(replay([fallback, *still_log[1:]], candidate(truth.candidate_catalog()), 4))
    evidence = evaluation.evaluate(replayed)
    assert evidence["excluded_no_selection"] == 1
    assert evidence["evaluated"] == len(still_log) - 1


def test_pushes_to_a_watch_are_left_out_and_counted(still_log):
    """A push was logged because its best action changed: its selection is not the
    probability that the record exists."""
    pushed = [dataclasses.replace(r, pushed=True) for r in still_log[:2]]
    replayed = list(replay([*pushed, *still_log[2:]], candidate(truth.candidate_catalog()), 4))
    evidence = evaluation.evaluate(replayed)
    assert (evidence["excluded_pushes"], evidence["excluded_no_selection"]) == (2, 0)
    assert evidence["evaluated"] == len(still_log) - 2


def test_a_log_with_nothing_to_weigh_reports_so(still_log):
    """Only fallbacks: no estimate, a warning, and a report that still renders."""
    fallbacks = [dataclasses.replace(r, shown=tuple(dataclasses.replace(s, selection=0.0)
                                                    for s in r.shown)) for r in still_log[:3]]
    evidence = evaluation.evaluate(list(replay(fallbacks, candidate(truth.candidate_catalog()),
                                               4)))
    assert evidence["estimates"] == {} and evidence["excluded_no_selection"] == 3
    assert evidence["overlap"]["warnings"] == ["no logged decision with a selection probability"]
    evidence.update(log="log.jsonl", candidate={"name": "c", "version": "1"}, samples=4,
                    candidate_error=0.25, models="priors")
    assert "0 of 3 logged decisions" in report.summary(evidence)
    assert "no logged decision with a selection probability" in report.markdown(evidence, None)
    assert "no estimates" in report.headline(evidence)


def test_samples_are_bounded():
    with pytest.raises(ValueError, match="samples"):
        Replayer(candidate(truth.candidate_catalog()), samples=0)


def test_a_report_with_an_unknown_estimate_reads_back_as_evidence():
    """replay.json writes an unknown estimate as null; PutCatalog's evidence reads it back
    (report.headline) and must not take null for a report that is none."""
    one = Replayed("d1", "v1", "web", "hero", "a0", 0.5, 1.0, 0.0, {}, {"a0": 1.0})
    evidence = {**evaluation.evaluate([one]), "candidate": {"version": "v2", "name": "c"}}
    assert "nan" in report.headline(json.loads(report.json_text(evidence)))


ACCEPT = 0.5  # the true accept rate of the one action, wherever it is shown


def restrained_catalog(control: float) -> str:
    """One action under a restraint threshold its Thompson draws cross about half the time:
    the policy shows nothing in about half its decisions, more or less as its draws fall."""
    return yaml.safe_dump({
        "kairos_catalog": 1, "name": "restrained", "version": "1",
        "channels": {"web": {"placements": {"hero": {"top_k": 1}}, "control": control}},
        "events": {"seen": {"fields": {}}}, "consent": {"service": True},
        "arbitration": {"restraint_threshold": 0.3, "exploration": {
            "method": "thompson", "variance_scale": 1.0, "trial_rate": 0.0}},
        "actions": [{"id": "offer", "group": "sell", "purpose": "service",
                     "channels": {"web": {"treatment": "banner"}}, "value": 1.0}],
        "models": {"predictors": [], "prior": {"base_rate": 0.3, "precision": 1.0}},
        "fallbacks": {"web": []}})


def restrained_log(text: str, n: int, seed: int) -> tuple[list[DecisionRecord], float]:
    """n decisions of one customer, as the decision log records them (the probability of
    nothing included), accepted at ACCEPT when shown; and the policy's true accept rate
    (from 20,000 more of its decisions)."""
    rng = np.random.default_rng(seed)
    engine = DecisionEngine(compiled_from_text(text), seed=seed)
    engine.apply([engine.encode_event("c", "seen", truth.T0 - 1, {})])
    block = pack(export_block(engine, ["c"]))
    records = []
    for i in range(n):
        d = engine.decide("c", "web", "hero", {}, now=truth.T0 + i)
        # each logged as another customer's (of the same profile): the draws are independent,
        # and the intervals, clustered by customer, have none to tell from one customer's
        records.append(DecisionRecord(
            d.decision_id, truth.T0 + i, f"c{i}", "web", "hero", d.catalog_version,
            d.model_version, {}, {}, block, ("offer",),
            tuple(ShownAction(a.action_id, slot, a.selection, a.propensity, a.priority)
                  for slot, a in enumerate(d.actions)), d.control,
            tuple(OutcomeRecord(d.decision_id, f"c{i}", a.action_id, "ACCEPT", 0.0, truth.T0 + i)
                  for a in d.actions if rng.random() < ACCEPT),
            nothing_selection=d.nothing_selection))
    request = engine.encode_request("c", "web", "hero", {}, truth.T0)
    shown = np.mean([bool(d.actions) for d in engine.decide_encoded([request] * 20_000)])
    return records, float(shown) * ACCEPT


@pytest.mark.parametrize("control", [0.0, 0.2])
def test_snips_is_unbiased_where_the_policy_shows_nothing_at_random(control):
    """The policy replayed through itself: SNIPS's interval covers its true accept rate with
    the logged probability of showing nothing, and also when nothing is taken as certain (as
    for a log written before that was kept). Those decisions, which earn 0, weighed about
    P(nothing) instead of 1, and the estimate lay above the interval; now the candidate's
    share of nothing is known mass in every decision (estimators.py), whatever the log says
    of its probability."""
    text = restrained_catalog(control)
    records, true_accept = restrained_log(text, 1000, seed=1)
    assert 0.3 < sum(not r.shown for r in records) / len(records) < 0.7
    assert all(r.nothing_selection is not None for r in records if not r.shown)
    old = [dataclasses.replace(r, nothing_selection=None) for r in records]
    snips = {}
    for name, log in (("logged", records), ("certain", old)):
        evidence = evaluation.evaluate(list(replay(log, candidate(text), 32, seed=2)))
        snips[name] = evidence["estimates"]["accept"]["snips"]
    for name in snips:
        assert snips[name]["low"] <= true_accept <= snips[name]["high"], snips
