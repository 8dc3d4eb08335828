"""A quarantined batch whose CRC fails and whose damage reads as a newer format is damage, not a
batch to keep whole for an upgrade: erasure treats it as bytes it cannot read, so the erased
customer's records do not stay in it (review rev41 d-store2, finding 1)."""
from __future__ import annotations

import msgpack
import pytest

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.storage.frames import frame, pack_batch, seal_batch, unseal_batch
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.redis_store import RedisStore

ANA, BOB = ["event", 1, "ana", "x"], ["event", 1, "bob", "y"]


def ana(record) -> bool:
    return record[2] == "ana"


def format_flipped(payload: bytes) -> bytes:
    """One damaged byte: the batch's format (its last byte) reads one newer."""
    assert payload[-1] == JOURNAL_FORMAT
    return payload[:-1] + bytes([JOURNAL_FORMAT + 1])


def test_a_damaged_frame_reading_as_a_newer_format_loses_the_erased_records(tmp_path):
    d = tmp_path / "j"
    j = Journal(d)
    j.append([["event", 1, "zed", 0]])
    j.close()
    (d / "quarantine").mkdir()
    torn = d / "quarantine" / f"{2:020d}.torn"
    torn.write_bytes(format_flipped(frame(2, [ANA, BOB])))
    Journal(d).compact(ana)
    assert b"ana" not in torn.read_bytes()


def test_a_damaged_redis_batch_reading_as_a_newer_format_loses_the_erased_records(
        redis_server):
    store = RedisStore(f"{redis_server.url}?prefix=qdf")
    j = store.journal("s0", "os")
    j.append([["event", 1, "zed", 0]])
    first, payload, mark, crc = msgpack.unpackb(seal_batch(2, [ANA, BOB]), raw=False)
    member = msgpack.packb([first, format_flipped(payload), mark, crc], use_bin_type=True)
    store.r.zadd(f"{j.key}:quarantine", {member: 3})
    j.compact(ana)
    (left,) = store.r.zrange(f"{j.key}:quarantine", 0, -1, withscores=True)
    assert b"ana" not in left[0]
    assert left[1] == 3 and unseal_batch(left[0])[:2] == (4, [])


@pytest.mark.parametrize("sealed", [False, True])
def test_an_intact_batch_of_a_newer_format_is_still_kept_whole(redis_server, sealed):
    store = RedisStore(f"{redis_server.url}?prefix=qdk{int(sealed)}")
    j = store.journal("s0", "os")
    j.append([["event", 1, "zed", 0]])
    newer = (seal_batch if sealed else pack_batch)(2, [ANA, BOB], JOURNAL_FORMAT + 1)
    store.r.zadd(f"{j.key}:quarantine", {newer: 3})
    j.compact(ana)
    assert store.r.zrange(f"{j.key}:quarantine", 0, -1) == [newer]
