"""The models' uplift over the control group, from decision records."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import yaml

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.evidence.records import DecisionRecord, OutcomeRecord, ShownAction, \
    write_jsonl
from kairos.cluster.evidence.replay import rewards
from kairos.cluster.evidence.uplift import Row, difference, uplift


def record(i: int, action: str, accepted: bool, control: bool, selection: float = 0.5,
           channel: str = "web") -> DecisionRecord:
    outcome = "ACCEPT" if accepted else "REJECT"
    return DecisionRecord(
        f"d{i}", 1.8e9 + i, f"c{i}", channel, "hero", "1", 1, {}, {}, b"", ("a", "b"),
        (ShownAction(action, 0, selection, 0.3, 0.3),), control,
        (OutcomeRecord(f"d{i}", f"c{i}", action, outcome, 2.0 if accepted else 0.0, 1.8e9),))


def test_the_uplift_is_the_difference_of_the_groups_with_its_interval():
    rng = np.random.default_rng(1)
    models = [record(i, "a" if i % 2 else "b", rng.random() < 0.6, False) for i in range(400)]
    control = [record(1000 + i, "a" if i % 2 else "b", rng.random() < 0.3, True)
               for i in range(400)]
    fallback = record(5000, "a", True, False, selection=0.0)
    report = uplift(models + control + [fallback])
    web = report["channels"]["web/hero"]
    assert (web["decisions"], web["control_decisions"]) == (400, 400)
    assert report["fallbacks_left_out"] == 1
    accept = web["accept"]
    assert accept["uplift"] == accept["models"] - accept["control"]
    assert accept["low"] < 0.3 < accept["high"] and accept["low"] > 0.0  # the true uplift 0.3
    assert web["value"]["uplift"] == 2 * accept["uplift"]  # each accept reported a value of 2
    a = web["actions"]["a"]
    assert (a["shown_by_models"], a["drawn_by_control"]) == (200, 200)


def test_too_few_control_decisions_give_no_interval():
    report = uplift([record(i, "a", True, False) for i in range(5)] + [record(9, "a", False,
                                                                              True)])
    accept = report["channels"]["web/hero"]["accept"]
    assert accept["uplift"] == 1.0 and math.isnan(accept["low"]) and math.isnan(accept["high"])


def test_on_a_known_world_the_control_group_measures_what_random_choice_earns():
    """The truth world's logging catalog with a control share of 0.3: about that share is
    held back, and the control's accept rate is within its error of what a uniformly drawn
    action earns under the truth (every action of the channel is eligible there)."""
    doc = yaml.safe_load(truth.logging_catalog())
    for channel in doc["channels"].values():
        channel["control"] = 0.3
    population = truth.customers(np.random.default_rng(7), 1500)
    records = truth.log(7, population, catalog_text=yaml.safe_dump(doc))
    held = [(r, c) for r, c in zip(records, population) if r.control]
    assert abs(len(held) / len(records) - 0.3) < 4 * math.sqrt(0.21 / len(records))
    expected = np.mean([np.mean([truth.true_accept(a, c) for a in truth.ACTIONS
                                 if c.channel in truth.WORLD[a][2]]) for _, c in held])
    report = uplift(records)
    measured = [report["channels"][f"{ch}/{pl}"] for ch, pl in truth.CHANNELS.items()]
    n = sum(m["control_decisions"] for m in measured)
    rate = sum(m["accept"]["control"] * m["control_decisions"] for m in measured) / n
    assert n == len(held)
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_kairos_uplift_prints_the_table_or_says_there_is_no_control(tmp_path, capsys):
    rng = np.random.default_rng(2)
    path = tmp_path / "log.jsonl"
    write_jsonl([record(i, "a", rng.random() < 0.5, i % 3 == 0) for i in range(60)], path)
    assert main(["uplift", "--log", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| web/hero | 40 (20) |" in out and "| web/hero | a | 40 (20) |" in out
    write_jsonl([record(i, "a", True, False) for i in range(5)], path)
    assert main(["uplift", "--log", str(path)]) == 0
    assert "no decision in this log was held back" in capsys.readouterr().out
    path.write_text("not json\n")
    assert main(["uplift", "--log", str(path)]) == 1
    assert f"{path}:1" in capsys.readouterr().err


def rows(rng, n: int, p: float, action: str = "a") -> list[Row]:
    return [(action, float(a), 2.0 * a, None) for a in rng.random(n) < p]


def test_versions_that_hold_back_other_shares_while_rates_move_are_compared_apart():
    """Control 0.1 then 0.5 while the accept rate goes 0.2 -> 0.6, no uplift in either: pooled,
    the control group is mostly from the second version and looks far better."""
    rng = np.random.default_rng(7)
    strata = {"v1": {False: rows(rng, 9000, 0.2), True: rows(rng, 1000, 0.2)},
              "v2": {False: rows(rng, 5000, 0.6), True: rows(rng, 5000, 0.6)}}
    d = difference(strata, 1, binary=True)
    assert d.low < 0.0 < d.high
    pooled = difference({"all": {g: strata["v1"][g] + strata["v2"][g] for g in (False, True)}},
                        1, binary=True)
    assert pooled.high < -0.1  # what the report said before


def test_the_accept_interval_keeps_its_coverage_for_rare_accepts_and_a_small_control_group():
    rng = np.random.default_rng(3)
    covered = sum(
        d.low <= 0.0 <= d.high for d in (
            difference({"1": {False: rows(rng, 2000, 0.02), True: rows(rng, 50, 0.02)}}, 1,
                       binary=True) for _ in range(400)))
    assert covered / 400 >= 0.92  # the normal approximation's was 62 %


def test_a_conversion_reported_twice_is_counted_once():
    twice = record(1, "a", True, False)
    twice = twice.with_outcomes(twice.outcomes * 2)
    assert rewards(twice)[2:] == (1.0, 2.0)


def test_an_unknown_interval_is_null_in_the_json_strict_parsers_read(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    write_jsonl([record(i, "a", True, False) for i in range(5)] + [record(9, "a", False, True)],
                path)
    assert main(["uplift", "--log", str(path), "--json"]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert report["channels"]["web/hero"]["accept"]["low"] is None


def test_pushes_to_a_watch_are_left_out():
    """A watched view is logged when its best action changes, which a held-back one (a random
    action) does far more often: pushes over-represent the control group."""
    held = [dataclasses.replace(record(i, "a", False, True), pushed=True) for i in range(50)]
    report = uplift([record(i, "a", True, i % 2 == 0) for i in range(100, 140)] + held)
    assert report["pushes_left_out"] == 50
    assert report["channels"]["web/hero"]["control_decisions"] == 20


def test_the_accept_interval_stays_within_what_a_difference_of_rates_can_be():
    """Models 4/4 against control 0/2: Agresti and Caffo's normal interval reached 1.102
    (review rev42 learning finding 2); the uplift of a rate is within [-1, 1]."""
    rows = {False: [("a", 1.0, 0.0, None)] * 4, True: [("a", 0.0, 0.0, None)] * 2}
    up = difference({"1": rows}, 1, binary=True)
    assert up.uplift == 1.0 and -1.0 < up.low < 1.0 and up.high == 1.0
    down = difference({"1": {False: rows[True], True: rows[False]}}, 1, binary=True)
    assert down.low == -1.0 and -1.0 < down.high < 1.0
