"""A snapshot's LSN record (store.py `snapshot_lsn`): msgpack [journal, LSN], which a directory
store keeps in snapshots/p<partition>.lsn and Redis at <prefix>:s:<partition>:lsn.

One that does not decode as such reads as none, in both stores: the record is a backstop
behind the owner fence (store.py, "Owners"), the next snapshot of its partition writes it
anew, and a weaker check is never a false one, where refusing to recover over it would keep
the shard down for a damaged record beside an intact, checksummed snapshot. A directory store
can leave a torn one at a crash (it is written without fsync); Redis writes it whole, so one
there was changed outside Kairos (the Redis store warns).
"""
from __future__ import annotations

import msgpack


def packed(journal: str, lsn: int) -> bytes:
    return msgpack.packb([journal, lsn])


def unpacked(data: bytes | None) -> tuple[str, int] | None:
    """The record's (journal, LSN); None for none, or one that does not decode as such."""
    if data is None:
        return None
    try:
        journal, lsn = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(journal, str) or not isinstance(lsn, int) or isinstance(lsn, bool):
        return None
    return journal, lsn
