"""A log file damaged or edited by hand is refused naming the file and line (or row), never
with a traceback: bytes that are not UTF-8, JSON nested past the parser's depth, integers past
Python's digit limit or a float's range, lines past MAX_LINE_BYTES, damaged Parquet pages."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.evidence import records
from kairos.cluster.evidence.records import LogFormatError, read_records, write_records
from tests.unit.evidence.test_record_files import decision


def jsonl(tmp_path, second: bytes) -> str:
    """A log of three decisions whose second line is `second`."""
    path = tmp_path / "log.jsonl"
    write_records([decision(0), decision(1), decision(2)], path)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], second, lines[2]]) + b"\n")
    return str(path)


def line_with(**fields) -> bytes:
    data = records.to_json(decision(1))
    data.update(fields)
    return json.dumps(data).encode()


@pytest.mark.parametrize("second, says", [
    (line_with()[:40] + b"\xff\xfe" + line_with()[40:], "not JSON in UTF-8: 'utf-8' codec"),
    (b'{"context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON in UTF-8"),
    (line_with()[:-1] + b', "time": 1' + b"0" * 5000 + b"}", "not JSON in UTF-8"),
    (line_with(inputs={"score": 10 ** 400}), r"inputs\['score'\] is beyond a float's range"),
])
def test_a_damaged_line_is_refused_by_its_number(tmp_path, second, says):
    path = jsonl(tmp_path, second)
    with pytest.raises(LogFormatError, match=rf"log.jsonl:2: .*{says}"):
        list(read_records(path))


def test_a_missing_input_as_nan_or_an_infinity_still_reads(tmp_path):
    path = jsonl(tmp_path, line_with(inputs={"a": float("nan"), "b": float("inf")}))
    assert len(list(read_records(path))) == 3


def test_a_line_past_the_bound_is_refused_without_being_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 4096)
    path = jsonl(tmp_path, line_with(context={"note": "x" * 5000}))
    with pytest.raises(LogFormatError, match="log.jsonl:2: a line longer than 4,096 bytes"):
        list(read_records(path))


def test_a_damaged_parquet_page_is_refused_naming_the_rows(tmp_path):
    path = tmp_path / "log.parquet"
    write_records([decision(n) for n in range(80)], path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 3  # inside the first row group's pages, past the file's magic
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(LogFormatError, match=r"log.parquet: rows from 0: unreadable"):
        list(read_records(path))


def test_a_parquet_context_nested_too_deep_is_refused_naming_its_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(0), decision(1)], path)
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("context"), "context", pa.array(
        ["{}", "[" * 100_000 + "]" * 100_000], pa.string()))
    pq.write_table(table, path)  # keeps the schema's metadata
    with pytest.raises(LogFormatError, match="log.parquet: row 1: context or inputs unreadable"):
        list(read_records(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return truth.write_files(tmp_path_factory.mktemp("logs"), truth.log(
        4, truth.customers(np.random.default_rng(4), 6), learn=False))


@pytest.mark.parametrize("command", ["replay", "uplift"])
def test_the_commands_name_the_line_of_a_log_not_utf_8(files, tmp_path, capsys, command):
    lines = (files / "log.jsonl").read_bytes().splitlines()
    bad = tmp_path / "log.jsonl"
    bad.write_bytes(b"\n".join([lines[0], lines[1] + b"\xff", *lines[2:]]) + b"\n")
    out = ["--out", str(tmp_path / "out")] if command == "replay" else []
    assert main([command, "--log", str(bad), "--catalog", str(files / "candidate.yaml"),
                 *out]) == 1
    assert f"error: {bad}:2: not JSON in UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "uplift"])
def test_the_commands_name_the_log_an_input_output_error_came_from(files, tmp_path, capsys,
                                                                   command):
    """An error reading a file already open names no file (it printed "error: None: ...");
    /proc/self/mem opens, and its first read fails with EIO."""
    out = ["--out", str(tmp_path / "out")] if command == "replay" else []
    assert main([command, "--log", "/proc/self/mem", "--catalog",
                 str(files / "candidate.yaml"), *out]) == 1
    assert "error: /proc/self/mem: Input/output error" in capsys.readouterr().err


def test_a_parquet_string_no_longer_utf_8_is_refused_naming_the_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(0), decision(1)], path)
    table = pq.read_table(path)
    offsets = pa.array([0, 2, 4], pa.int32()).buffers()[1]
    broken = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"\xff\xfe" * 2)])
    pq.write_table(table.set_column(table.schema.get_field_index("customer_id"), "customer_id",
                                    broken), path)
    with pytest.raises(LogFormatError, match="log.parquet: rows from 0: unreadable"):
        list(read_records(path))


def test_a_parquet_column_renamed_under_intact_metadata_is_refused_naming_it(tmp_path):
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(0)], path)
    table = pq.read_table(path)
    renamed = table.rename_columns(["contexx" if n == "context" else n
                                    for n in table.column_names])
    pq.write_table(renamed.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(LogFormatError, match="log.parquet: no column 'context'"):
        list(read_records(path))


def test_uplift_refuses_two_catalogs_of_one_version(files, tmp_path, capsys):
    """The later one stood for the version, unsaid."""
    other = tmp_path / "other.yaml"
    other.write_text((files / "logging.yaml").read_text() + "\n# edited\n")
    assert main(["uplift", "--log", str(files / "log.jsonl"), "--catalog",
                 str(files / "logging.yaml"), "--catalog", str(other)]) == 2
    assert "are both version" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "uplift"])
def test_a_decision_in_the_log_twice_counts_once_and_is_warned_of(files, tmp_path, capsys,
                                                                  command):
    """Exports of overlapping ranges put together held some decisions twice, each weighed
    twice."""
    lines = (files / "log.jsonl").read_bytes().splitlines()
    reports = []
    for name, held in (("twice", lines + lines[:3]), ("once", lines)):
        log = tmp_path / f"{name}.jsonl"
        log.write_bytes(b"\n".join(held) + b"\n")
        if command == "replay":
            assert main(["replay", "--log", str(log), "--catalog", str(files / "candidate.yaml"),
                         "--samples", "4", "--out", str(tmp_path / name)]) == 0
            reports.append(json.loads((tmp_path / name / "replay.json").read_text()))
        else:
            assert main(["uplift", "--log", str(log), "--catalog", str(files / "logging.yaml"),
                         "--json"]) == 0
            reports.append(json.loads(capsys.readouterr().out))
    twice, once = reports
    if command == "replay":
        assert twice["records"] == once["records"] == len(lines)
        assert any("3 decision record(s) named a decision the log held already" in w
                   for w in twice["warnings"])
        assert "held already" in capsys.readouterr().out
    else:
        assert (twice.pop("repeated_records"), once.pop("repeated_records")) == (3, 0)
        assert twice == once
