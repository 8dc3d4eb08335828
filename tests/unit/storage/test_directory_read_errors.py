"""L2: a directory store's reads that fail with an OSError other than "no such file" (EACCES,
EIO) raise StoreUnavailable, as store.py's interface says, not the raw OSError. The tests run
as root, where chmod 000 does not stop a read: a directory stands where a file is read
(IsADirectoryError), or a file where a folder is listed (NotADirectoryError)."""
from __future__ import annotations

import pytest

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import StoreUnavailable


def test_meta_that_cannot_be_read_is_unavailable(tmp_path):
    store = DirectoryStore(tmp_path)
    (tmp_path / "meta" / "map").mkdir()
    with pytest.raises(StoreUnavailable, match="reading meta map"):
        store.get_meta("map")
    assert store.get_meta("other") is None


def test_a_partition_whose_home_cannot_be_read_is_not_taken_and_loses_none(tmp_path):
    store = DirectoryStore(tmp_path)
    store.put(3, "ana", b"blob")
    folder = next((tmp_path / "customers").glob("p3"))
    (folder / "zzzz.blk").mkdir()  # read after ana's home (sorted)
    with pytest.raises(StoreUnavailable, match="moving partition 3"):
        store.take_partition(3)
    assert store.get(3, "ana") == b"blob"  # not removed by the take that failed
    (folder / "zzzz.blk").rmdir()
    assert store.take_partition(3) == {"ana": b"blob"}
    assert store.count([3]) == 0


def test_a_partition_that_cannot_be_listed_is_not_counted_as_empty(tmp_path):
    store = DirectoryStore(tmp_path)
    (tmp_path / "customers" / "p5").write_bytes(b"")  # a file where the folder is listed
    with pytest.raises(StoreUnavailable, match="counting customers"):
        store.count([5])
    assert store.count([6]) == 0
