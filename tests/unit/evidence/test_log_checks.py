"""What a decision log's reader refuses, and where it says the fault is (records.py)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.evidence.estimators import effective_sample_size
from kairos.cluster.evidence.records import (LogFormatError, ShownAction, read_records,
                                             to_json, write_records)
from tests.unit.evidence.test_record_files import T0, decision


def test_a_bad_parquet_row_past_the_first_batch_is_named_by_its_row_in_the_file(tmp_path):
    """pyarrow reads 65,536 rows a batch: the row's number counts the batches before it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(1)], path)
    # one row taken again and again: concatenated, 65,540 one-row chunks took 6 s to write
    table = pq.read_table(path).take([0] * 65_540)
    ids = table.column("decision_id").to_pylist()
    ids[65_538] = None
    table = table.set_column(0, "decision_id", pa.array(ids, pa.string()))
    pq.write_table(table, path, row_group_size=10_000)  # keeps the schema's metadata
    with pytest.raises(LogFormatError, match=r"row 65538: field 'decision_id'"):
        list(read_records(path))


def shown(**fields) -> dict:
    return {"action_id": "a2", "slot": 0, "selection": 0.75, "propensity": 0.1,
            "priority": 0.2, **fields}


def outcome(**fields) -> dict:
    return {"decision_id": "0-1.6b119032.H_0oRzXZ", "customer_id": "ana", "action_id": "a2",
            "outcome": "convert", "value": 9.5, "time": T0 + 3, **fields}


@pytest.mark.parametrize("fields, says", [
    ('"time": NaN', "field 'time' is nan, not a finite number"),
    ('"time": Infinity', "field 'time' is inf"),
    ('"time": 1e400', "field 'time' is inf"),
    ('"time": 1' + "0" * 400, "field 'time' is 10{400}, not a finite number"),
    ('"time": -1.0', r"field 'time' is -1.0, not a finite number \(0 or more\)"),
    ('"nothing_selection": 2.0', "field 'nothing_selection' is 2.0"),
    ('"shown": [%s]' % json.dumps(shown(selection=1e-200)),
     r"shown\[0\]: field 'selection' is 1e-200, not a finite number \(0 for a fallback, "
     r"else from 1e-09 to 1\)"),
    ('"shown": [%s]' % json.dumps(shown(selection=1.5)), r"shown\[0\]: field 'selection'"),
    ('"outcomes": [%s]' % json.dumps(outcome(value=math.nan)),
     r"outcomes\[0\]: field 'value' is nan"),
    ('"outcomes": [%s]' % json.dumps(outcome(value=-2.0)), r"outcomes\[0\]: field 'value'"),
    # past what the API takes (rules.MAX_NUMBER): one of 1e300 made every value estimate inf
    ('"outcomes": [%s]' % json.dumps(outcome(value=1e300)),
     r"outcomes\[0\]: field 'value' is 1e\+300, not a finite number \(from 0 to 1e\+12\)")])
def test_a_number_out_of_its_range_is_refused_naming_line_and_field(tmp_path, fields, says):
    """A NaN value made every value estimate NaN; a selection of 1e-200 overflowed replay."""
    path = tmp_path / "log.jsonl"
    good = json.dumps(to_json(decision(1)))
    path.write_text(good + "\n" + good[:-1] + ", " + fields + "}\n")
    with pytest.raises(LogFormatError, match=f"log.jsonl:2: {says}"):
        list(read_records(path))


def test_what_the_engine_logs_reads_back(tmp_path):
    """A fallback's selection 0, and a model input the engine saw as missing (NaN)."""
    fallback = dataclasses.replace(decision(1), inputs={"bias": math.nan}, shown=(
        ShownAction("a1", 0, 0.0, 0.0, 0.0),))
    write_records([fallback], tmp_path / "log.jsonl")
    [back] = read_records(tmp_path / "log.jsonl")
    assert back.shown == fallback.shown and math.isnan(back.inputs["bias"])


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_shown_actions_propensity_and_priority_may_be_any_number(tmp_path, suffix):
    """Nothing replay or uplift computes reads them, and the engine can log a priority of inf:
    a whole log was refused for it."""
    odd = dataclasses.replace(decision(1), shown=(ShownAction("a2", 0, 0.75, math.nan,
                                                              math.inf),))
    write_records([decision(0), odd], tmp_path / f"log.{suffix}")
    [_, back] = read_records(tmp_path / f"log.{suffix}")
    assert math.isnan(back.shown[0].propensity) and back.shown[0].priority == math.inf


def test_a_control_draw_over_many_actions_reads_back(tmp_path):
    """A held-back decision logs control share / eligible actions for an action the models
    would not show: 0.005 over 10,000 actions is 5e-7, under the models' least selection
    (records.MIN_SELECTION's comment), and a log holding it is no damaged one."""
    drawn = dataclasses.replace(decision(1), control=True, shown=(
        ShownAction("a2", 0, 0.005 / 10_000, 0.1, 0.2),))
    write_records([drawn], tmp_path / "log.jsonl")
    [back] = read_records(tmp_path / "log.jsonl")
    assert back.shown[0].selection == pytest.approx(5e-7)


def test_a_parquet_row_out_of_range_is_refused_naming_it(tmp_path):
    path = tmp_path / "log.parquet"
    broken = dataclasses.replace(decision(1), shown=(ShownAction("a2", 0, 1e-200, 0.1, 0.2),))
    write_records([decision(0), broken], path)
    with pytest.raises(LogFormatError, match=r"log.parquet: row 1: shown\[0\]: field 'selection'"):
        list(read_records(path))


def test_kairos_replay_refuses_a_tiny_selection_naming_where(tmp_path, capsys):
    files = truth.write_files(tmp_path, truth.log(4, truth.customers(
        np.random.default_rng(4), 6), learn=False))
    lines = (files / "log.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["shown"][0]["selection"] = 1e-200
    lines[2] = json.dumps(record)
    (files / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["replay", "--log", str(files / "log.jsonl"), "--catalog",
                 str(files / "candidate.yaml"), "--samples", "4", "--out",
                 str(tmp_path / "out")]) == 1
    assert f"{files / 'log.jsonl'}:3: shown[0]: field 'selection'" in capsys.readouterr().err


def test_the_effective_sample_size_of_huge_or_tiny_weights():
    """(sum w)^2 overflowed a float at w = 1e200, and sum w^2 vanished at w = 1e-200."""
    assert effective_sample_size(np.array([1e200, 1e200, 0.0])) == pytest.approx(2.0)
    assert effective_sample_size(np.array([1e-200, 3e-200])) == pytest.approx(16 / 10)
    assert effective_sample_size(np.zeros(3)) == 0.0
