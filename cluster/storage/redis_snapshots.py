"""Partitions' snapshots on Redis (redis_store.py `put_snapshots`, `get_snapshot`).

A snapshot up to SNAPSHOT_CHUNK_BYTES is one string, `<prefix>:s:<partition>`, as before (an
older Kairos reads it, and this one reads what an older one wrote); a longer one is written in
chunks of that size (redis_chunks.py, family "s": `<prefix>:sc:<partition>:<generation>:<n>`,
its header `<prefix>:sh:<partition>`), as one SET of it past 512 MiB is refused and past some
256 MiB drops a replica's link. Only a snapshot past a chunk is chunked, so an older Kairos
after a rollback reads the others; in place of a chunked one it finds STAND_IN, which its
recovery refuses as a damaged snapshot (its shard serves nothing till this version is back or
the loss is accepted), where none would have it replay a journal truncated past the snapshot,
silently losing what the snapshot held.

The chunks are written first, under a generation no reader knows; then one MULTI/EXEC, under
WATCH of the journal's fence and owner (redis_journal.py `guarded`), of the partitions' `:lsn`
keys, headers and pending generations, switches every snapshot of the write in at once: each
plain value or header set, with its `:lsn` key, and the previous value's header and chunks
deleted. So a reader sees the previous snapshot or this one, never a mix (redis_chunks.py); a
writer killed between chunks leaves the previous one, its own chunks swept later by a later
save of the partition; and a fenced writer (or one whose `:lsn` is older than the partition's)
switches nothing in, and deletes the chunks it wrote. With KAIROS_REDIS_REPLICAS the switch is
WAITed for, and with it the chunks written before it.
"""
from __future__ import annotations

import redis

from kairos.cluster.settings import integer
from kairos.cluster.storage import lsn_records, redis_chunks
from kairos.cluster.storage.redis_chunks import Staged, Value
from kairos.cluster.storage.redis_journal import guarded
from kairos.cluster.storage.store import JournalFenced, StoreCorrupt

# The most bytes of one Redis value a snapshot is written in (KAIROS_REDIS_SNAPSHOT_CHUNK):
# one SET each, so one exchange within the socket timeout, and far below what a replica's
# output buffer holds (its hard limit 256 MiB, its soft one 64 MiB for 60 s).
SNAPSHOT_CHUNK_BYTES = integer("REDIS_SNAPSHOT_CHUNK", 16 << 20, low=1 << 20, high=64 << 20)
STAND_IN = b"kairos: a snapshot in chunks, <prefix>:sh:<partition> (redis_snapshots.py)"


def put(client: redis.Redis, prefix: str, snapshots: list[tuple[int, bytes]],
        journal: str | None, owner: str | None, lsn: int | None) -> None:
    """Switch `snapshots` in at once (the module's text); with `journal`, unless it is fenced
    or another incarnation's (`owner`) or a partition's `:lsn` is newer (JournalFenced); with
    `lsn`, each partition's `:lsn` key written with its snapshot."""
    values = [_value(prefix, p) for p, _ in snapshots]
    lsn_keys = [f"{prefix}:s:{p}:lsn" for p, _ in snapshots] if lsn is not None else []
    heads, pending = [v.key("h") for v in values], [v.key("p") for v in values]
    news = [blob if len(blob) <= SNAPSHOT_CHUNK_BYTES else
            redis_chunks.stage(client, value, blob, SNAPSHOT_CHUNK_BYTES)
            for value, (_, blob) in zip(values, snapshots)]
    listed: list[list[bytes]] = []  # each partition's pending generations, as last read

    def switch(replies: list) -> list[tuple]:
        """The switch's commands, from the `:lsn` keys, headers and pending generations
        read under WATCH."""
        stored, replies = replies[:len(lsn_keys)], replies[len(lsn_keys):]
        for (p, _), value in zip(snapshots, stored):
            written_by, newer = lsn_records.unpacked(value) or (None, 0)
            if written_by == journal and newer > lsn:
                raise JournalFenced.stale(str(journal), p, lsn, newer)
        listed[:] = replies[len(values):]
        commands = [*(command for value, new, head, members in
                      zip(values, news, replies, listed)
                      for command in redis_chunks.switch(value, new, head, members)),
                    *(("SET", key, lsn_records.packed(str(journal), lsn)) for key in lsn_keys)]
        # the SETs as one MSET, as before (no key here is both set and deleted): a SET each
        # took twice as long to write 64 small snapshots (a probe)
        sets = [command for command in commands if command[0] == "SET"]
        return [("MSET", *(x for _, key, blob in sets for x in (key, blob))),
                *(command for command in commands if command[0] != "SET")]
    try:
        guarded(client, None if journal is None else f"{prefix}:j:{journal}", owner, switch,
                [*lsn_keys, *heads, *pending],
                [*(("GET", key) for key in [*lsn_keys, *heads]),
                 *(("ZRANGE", key, 0, -1) for key in pending)])
    except JournalFenced:  # nothing switched in: no reader will know these chunks
        for value, new in zip(values, news):
            if isinstance(new, Staged):
                redis_chunks.discard(client, value, new)
        raise
    for value, new, members in zip(values, news, listed):
        # the generations of saves that were killed; this one's own was just switched in
        redis_chunks.sweep(client, value, [m for m in members if not _own(new, m)])


def get(client: redis.Redis, prefix: str, partition: int) -> bytes | None:
    """The snapshot, reassembled and checked if in chunks; one damaged (a chunk gone or
    changed) is StoreCorrupt, naming the keys whose removal lets the partition recover
    without it, from its journal and homes, as a damaged one-value snapshot's does."""
    value = _value(prefix, partition)
    try:
        return redis_chunks.get(client, value)
    except StoreCorrupt as exc:
        raise StoreCorrupt(f"{exc}; to recover the partition without it, remove it: `DEL "
                           f"{value.key()} {value.key('h')}` (README, \"Corruption\")") from exc


def _value(prefix: str, partition: int) -> Value:
    return Value(prefix, "s", str(partition), STAND_IN)


def _own(new: bytes | Staged, member: bytes) -> bool:
    return isinstance(new, Staged) and member == new.member.encode()
