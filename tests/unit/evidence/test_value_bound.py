"""Replay reads a convert's value as the candidate's models would learn it: at most
models.value.max_ratio times the candidate's value for the logged action in that decision.
One hostile convert of 1e12, which the API takes, moved the value estimates by 1e8 while the
models clipped it (review rev44 learning finding 5)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.evidence import evaluation
from kairos.cluster.evidence.records import write_jsonl
from kairos.cluster.evidence.replay import Replayer, for_replay, replay
from kairos.cluster.evidence.uplift import uplift
from kairos.core.catalog import DEFAULT_VALUE_MAX_RATIO, load_catalog


@pytest.fixture(scope="module")
def poisoned():
    """A still log, and the same log with its first convert reporting 1e12."""
    log = truth.log(4, truth.customers(np.random.default_rng(4), 60), learn=False)
    i = next(i for i, r in enumerate(log) if any(o.value > 0 for o in r.outcomes))
    hostile = dataclasses.replace(log[i], outcomes=tuple(
        dataclasses.replace(o, value=1e12) if o.value > 0 else o for o in log[i].outcomes))
    return log, [*log[:i], hostile, *log[i + 1:]], i


def evaluated(log, text: str):
    replayed = list(replay(log, for_replay(load_catalog(text, "candidate")), 8, seed=1))
    return replayed, evaluation.evaluate(replayed)


def test_a_hostile_convert_is_read_at_the_candidates_bound(poisoned):
    honest, hostile, i = poisoned
    _, before = evaluated(honest, truth.logging_catalog())
    replayed, after = evaluated(hostile, truth.logging_catalog())
    action = replayed[i].logged
    assert replayed[i].value == replayed[i].value_bound == \
        DEFAULT_VALUE_MAX_RATIO * truth.WORLD[action][1]
    assert replayed[i].clipped and sum(r.clipped for r in replayed) == 1
    for name in ("ips", "snips", "dr"):
        assert after["estimates"]["value"][name]["value"] < \
            before["estimates"]["value"][name]["value"] + 2.0
    assert any(w.startswith("1 conversion value(s) above the candidate's bound")
               for w in after["warnings"])


def test_a_value_the_candidate_has_no_bound_for_is_read_as_reported_and_warned_of(poisoned):
    _, hostile, i = poisoned
    doc = yaml.safe_load(truth.logging_catalog())
    logged = hostile[i].shown[0].action_id
    doc["actions"] = [a for a in doc["actions"] if a["id"] != logged]
    replayed, evidence = evaluated(hostile, yaml.safe_dump(doc))
    assert replayed[i].value == 1e12 and not replayed[i].clipped
    assert any("read as reported: the candidate does not value their action" in w
               for w in evidence["warnings"])


def test_the_uplift_reads_values_through_the_bound_of_the_catalogs_given(poisoned):
    honest, hostile, i = poisoned
    held = [dataclasses.replace(r, control=k % 4 == 0) for k, r in enumerate(hostile)]
    logging = {"log-1": Replayer(for_replay(load_catalog(truth.logging_catalog(), "l")), 1)}
    raw = uplift(held)
    assert raw["values_unbounded"] > 0 and raw["values_clipped"] == 0
    bounded = uplift(held, logging)
    assert bounded["values_clipped"] == 1 and bounded["values_unbounded"] == 0
    channel = hostile[i].channel + "/" + hostile[i].placement
    assert abs(raw["channels"][channel]["value"]["uplift"]) > 1e9
    assert abs(bounded["channels"][channel]["value"]["uplift"]) < 10.0


def test_kairos_uplift_takes_the_logs_catalogs(poisoned, tmp_path, capsys):
    _, hostile, _ = poisoned
    held = [dataclasses.replace(r, control=k % 4 == 0) for k, r in enumerate(hostile)]
    write_jsonl(held, tmp_path / "log.jsonl")
    (tmp_path / "logging.yaml").write_text(truth.logging_catalog(), encoding="utf-8")
    assert main(["uplift", "--log", str(tmp_path / "log.jsonl"), "--json", "--catalog",
                 str(tmp_path / "logging.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["values_clipped"] == 1
    assert main(["uplift", "--log", str(tmp_path / "log.jsonl")]) == 0
    assert "conversion value(s) read as reported" in capsys.readouterr().out
