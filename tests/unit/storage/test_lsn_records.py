"""A snapshot's LSN record that does not decode as [journal, LSN] reads as none in both stores
(lsn_records.py: it is a backstop, and the partition's next snapshot writes it anew), rather
than failing every recovery and snapshot of the partition over it (review rev41 d-fence,
finding 3: Redis raised msgpack's error, which recovery logged as a bug and retried forever)."""
from __future__ import annotations

import msgpack
import pytest

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.redis_store import RedisStore

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

DAMAGED = [b"\xc1", msgpack.packb(["s0"]), msgpack.packb([3, "s0"]), msgpack.packb("s0"),
           msgpack.packb(["s0", True])]


def store_and_damage(kind: str, tmp_path, request):
    """A store, and a call that writes `data` as partition 3's LSN record."""
    if kind == "redis":
        prefix = request.node.name
        store = RedisStore(f"{request.getfixturevalue('redis_server').url}?prefix={prefix}")
        return store, lambda data: store.r.set(f"{prefix}:s:3:lsn", data)
    store = DirectoryStore(tmp_path)
    return store, (tmp_path / "snapshots" / "p3.lsn").write_bytes


@pytest.mark.parametrize("kind", ["directory", "redis"])
@pytest.mark.parametrize("data", DAMAGED, ids=["not-msgpack", "short", "swapped", "a-string",
                                                "a-bool"])
def test_an_lsn_record_that_does_not_decode_is_as_none_and_written_anew(
        tmp_path, request, kind, data):
    store, damage = store_and_damage(kind, tmp_path, request)
    store.put_snapshots({3: b"snapshot"}, unless_fenced="s0", lsn=5)
    damage(data)
    assert store.snapshot_lsn(3) is None
    store.put_snapshots({3: b"snapshot"}, unless_fenced="s0", lsn=4)  # nothing to refuse it
    assert store.snapshot_lsn(3) == ("s0", 4)
