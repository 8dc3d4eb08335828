"""What a decision log's reader refuses, and where it says the fault is (records.py)."""
from __future__ import annotations

import pytest

from kairos.cluster.evidence.records import LogFormatError, read_records, write_records
from tests.unit.evidence.test_record_files import decision


def test_a_bad_parquet_row_past_the_first_batch_is_named_by_its_row_in_the_file(tmp_path):
    """pyarrow reads 65,536 rows a batch: the row's number counts the batches before it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "log.parquet"
    write_records([decision(1)], path)
    table = pa.concat_tables([pq.read_table(path)] * 65_540)
    ids = table.column("decision_id").to_pylist()
    ids[65_538] = None
    table = table.set_column(0, "decision_id", pa.array(ids, pa.string()))
    pq.write_table(table, path, row_group_size=10_000)  # keeps the schema's metadata
    with pytest.raises(LogFormatError, match=r"row 65538: field 'decision_id'"):
        list(read_records(path))
