"""The decision log's files: JSON lines and Parquet hold the same records, outcomes joined
(records.py); a file of another kind is refused, naming it."""
from __future__ import annotations

import dataclasses
import json

import pytest

from kairos.cluster.evidence.records import (DecisionRecord, LogFormatError, OutcomeRecord,
                                             ShownAction, joined, pack_decision, pack_outcome,
                                             read_records, to_json, unpack, write_records)

T0 = 1_795_629_600.0


def decision(k: int, customer: str = "ana") -> DecisionRecord:
    return DecisionRecord(
        f"0-{k:x}.6b119032.H_0oRzXZ", T0 + k, customer, "web", "hero", "v1", 3,
        {"device": "mobile", "embedding": [0.5, 1.5]}, {"bias": 1.0, "orders": 2.0},
        b"\x00\xffprofile", ("a1", "a2", "a3"),
        (ShownAction("a2", 0, 0.75, 0.1, 0.2), ShownAction("a1", 1, 0.5, 0.05, 0.1)))


def nothing(k: int, customer: str = "ana") -> DecisionRecord:
    """A decision that showed nothing, which the policy does with probability 0.25."""
    return dataclasses.replace(decision(k, customer), shown=(), nothing_selection=0.25)


def test_stored_records_unpack_as_they_were_packed():
    outcome = OutcomeRecord("0-1.6b119032.AAAAAAAA", "ana", "a2", "accept", 9.5, T0 + 3)
    assert unpack(pack_decision(decision(1))) == decision(1)
    assert unpack(pack_decision(nothing(1))) == nothing(1)
    assert unpack(pack_outcome(outcome)) == outcome
    # logged before the probability of nothing was kept: none
    assert unpack(pack_decision(nothing(1))[:-1]) == dataclasses.replace(
        nothing(1), nothing_selection=None)


def test_outcomes_join_the_decision_they_name_whichever_tags_they_kept():
    early = OutcomeRecord("0-1.6b119032.H_0o", "ana", "a2", "impression", 0.0, T0 + 2)
    late = OutcomeRecord("0-1.6b119032.RzXZ", "ana", "a2", "accept", 0.0, T0 + 5)
    stray = OutcomeRecord("9-9.6b119032.AAAA", "bob", "a1", "reject", 0.0, T0)
    got = joined([decision(2), decision(1)], [late, stray, early])
    assert [d.decision_id for d in got] == [decision(2).decision_id, decision(1).decision_id]
    assert got[1].outcomes == (early, late) and got[0].outcomes == ()


def test_decisions_of_two_shards_with_the_same_engine_id_keep_their_own_outcomes():
    """Every shard process numbers its engine's decisions from the same start: "0-1" issued
    by two shards (to two customers, or in two seconds) are two decisions."""
    ana, bob = decision(1, "ana"), decision(1, "bob")
    later = DecisionRecord(**{**vars(decision(1, "ana")),
                              "decision_id": "0-1.6b119099.H_0oRzXZ"})
    outcome = OutcomeRecord(bob.decision_id, "bob", "a2", "convert", 5.0, T0 + 3)
    got = {(d.customer_id, d.decision_id): d.outcomes for d in joined([ana, bob, later],
                                                                      [outcome])}
    assert got == {("ana", ana.decision_id): (), ("bob", bob.decision_id): (outcome,),
                   ("ana", later.decision_id): ()}


@pytest.mark.parametrize("name", ["log.jsonl", "log.parquet"])
def test_files_round_trip(tmp_path, name, monkeypatch):
    monkeypatch.setattr("kairos.cluster.evidence.records.PARQUET_ROWS", 2)  # row groups too
    outcome = OutcomeRecord(decision(0).decision_id, "ana", "a2", "convert", 12.5, T0 + 9)
    records = joined([decision(k, f"c{k}") for k in range(4)] + [nothing(4, "c4")], [outcome])
    assert write_records(records, tmp_path / name) == 5
    assert list(read_records(tmp_path / name)) == records
    assert write_records([], tmp_path / f"empty-{name}") == 0
    assert list(read_records(tmp_path / f"empty-{name}")) == []


@pytest.mark.parametrize("name", ["log.jsonl", "log.parquet"])
def test_files_written_before_the_probability_of_nothing_was_kept_read_without_it(tmp_path,
                                                                                  name):
    path = tmp_path / name
    write_records([nothing(0)], path)
    if name.endswith(".jsonl"):
        data = json.loads(path.read_text())
        del data["nothing_selection"]
        path.write_text(json.dumps(data) + "\n")
    else:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["nothing_selection"]), path)  # keeps the metadata
    assert list(read_records(path)) == [dataclasses.replace(nothing(0), nothing_selection=None)]


@pytest.mark.parametrize("name", ["log.jsonl", "log.parquet"])
def test_a_file_that_is_not_a_log_is_refused_naming_it(tmp_path, name):
    (tmp_path / name).write_text('{"hello": 1}\n')
    with pytest.raises(LogFormatError, match=name):
        list(read_records(tmp_path / name))


@pytest.mark.parametrize("line, says", [
    ("null", "not a JSON object"), ("42", "not a JSON object"), ('"x"', "not a JSON object"),
    ({"time": "soon"}, "field 'time' is a str"), ({"control": 1}, "field 'control' is a int"),
    ({"model_version": 3.5}, "field 'model_version'"), ({"shown": [1]}, r"shown\[0\]"),
    ({"shown": [{"action_id": "a", "slot": 0, "selection": "1", "propensity": 0.1,
                 "priority": 0.1}]}, "field 'selection'"),
    ({"eligible": [1]}, "eligible"), ({"inputs": {"bias": "1"}}, "inputs")])
def test_a_line_that_is_json_but_not_a_record_is_refused_naming_where(tmp_path, line, says):
    good = json.loads(json.dumps(to_json(decision(1))))
    path = tmp_path / "log.jsonl"
    path.write_text((line if isinstance(line, str) else json.dumps({**good, **line})) + "\n")
    with pytest.raises(LogFormatError, match=f"log.jsonl:1: .*{says}"):
        list(read_records(path))


def test_a_parquet_row_with_nulls_is_refused_naming_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(1)], path)
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("context"), "context",
                             pa.array([None], pa.string()))
    pq.write_table(table, path)
    with pytest.raises(LogFormatError, match="row 0"):
        list(read_records(path))
