"""Partitions' snapshots on Redis (redis_store.py `put_snapshots`, `get_snapshot`).

A snapshot up to ONE_VALUE_BYTES (redis_chunks.py: 192 MiB) is one string,
`<prefix>:s:<partition>`, as before (an older Kairos reads it, and this one reads what an older
one wrote); a longer one is written in chunks of SNAPSHOT_CHUNK_BYTES (redis_chunks.py, family
"s": `<prefix>:sc:<partition>:<generation>:<n>`, its header `<prefix>:sh:<partition>`), as one
SET of it past 512 MiB is refused and past some 256 MiB drops a replica's link. So an older
Kairos after a rollback reads every snapshot it could itself have written; in place of a
chunked one it finds STAND_IN, which its recovery refuses as a damaged snapshot (its shard
serves nothing till this version is back or the loss is accepted), where none would have it
replay a journal truncated past the snapshot, silently losing what the snapshot held.

A write with chunks to write first sweeps its partitions' dead saves (redis_chunks.py `sweep`);
one of plain values alone sweeps them after its switch, best effort, landed or refused (a server
that dead saves' chunks filled past maxmemory takes the next write), from the pending sets the
switch's first exchange read (no round trip of its own where none is listed). Then the chunks are
written, under a generation no reader knows; then one MULTI/EXEC, under WATCH of the journal's
fence and owner (redis_journal.py `guarded`), of the partitions' `:lsn` keys and headers, and
the pending generations of those in chunks, switches every snapshot of the write in at once:
each plain value or header set, with its `:lsn` key, and the previous value's header and chunks
deleted. So a reader sees the previous snapshot or this one, never a mix (redis_chunks.py); a
writer killed between chunks leaves the previous one, its own chunks swept later by a later
save of the partition; and a writer whose switch is refused (fenced, its `:lsn` older than the
partition's, the server out of memory) switches nothing in, and deletes the chunks it wrote.
With KAIROS_REDIS_REPLICAS the switch is WAITed for, and with it the chunks written before it.
A damaged snapshot in chunks is StoreCorrupt naming every key to delete (`get`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import redis

from kairos.cluster.settings import REDIS_SNAPSHOT_CHUNK
from kairos.cluster.storage import lsn_records, redis_chunks
from kairos.cluster.storage.redis_chunks import Value
from kairos.cluster.storage.redis_errors import ERRORS
from kairos.cluster.storage.redis_journal import guarded
from kairos.cluster.storage.store import JournalFenced, StoreCorrupt

SNAPSHOT_CHUNK_BYTES = REDIS_SNAPSHOT_CHUNK
STAND_IN = b"kairos: a snapshot in chunks, <prefix>:sh:<partition> (redis_snapshots.py)"


def put(client: redis.Redis, prefix: str, snapshots: list[tuple[int, bytes]],
        journal: str | None, owner: str | None, lsn: int | None) -> None:
    """Switch `snapshots` in at once (the module's text); with `journal`, unless it is fenced
    or another incarnation's (`owner`) or a partition's `:lsn` is newer (JournalFenced); with
    `lsn`, each partition's `:lsn` key written with its snapshot."""
    values = [_value(prefix, p) for p, _ in snapshots]
    lsn_keys = [f"{prefix}:s:{p}:lsn" for p, _ in snapshots] if lsn is not None else []
    heads = [v.key("h") for v in values]
    pending = [v.key("p") for v in values]
    staging = any(redis_chunks.in_chunks(blob) for _, blob in snapshots)
    if staging:  # first: a dead save's chunks may be what keeps the server from taking these
        redis_chunks.sweep_all(client, values)
    listed: dict[str, list[bytes]] = {}  # the pending generations, read with the switch's reads
    with _swept_after(client, values, None if staging else listed), \
            redis_chunks.switching(client) as staged:
        news = [redis_chunks.written(client, value, blob, SNAPSHOT_CHUNK_BYTES, staged)
                for value, (_, blob) in zip(values, snapshots)]

        def switch(replies: list) -> list[tuple]:
            """The switch's commands, from the `:lsn` keys, headers and pending generations
            read under WATCH."""
            stored = replies[:len(lsn_keys)]
            olds = replies[len(lsn_keys):len(lsn_keys) + len(heads)]
            listed.update(zip(pending, replies[len(lsn_keys) + len(heads):]))
            for (p, _), value in zip(snapshots, stored):
                written_by, newer = lsn_records.unpacked(value) or (None, 0)
                if written_by == journal and newer > lsn:
                    raise JournalFenced.stale(str(journal), p, lsn, newer)
            commands = [*(command for value, new, old in zip(values, news, olds)
                          for command in redis_chunks.switch(
                              value, new, old, listed[value.key("p")])),
                        *(("SET", key, lsn_records.packed(str(journal), lsn))
                          for key in lsn_keys)]
            # the SETs as one MSET, as before (no key here is both set and deleted): a SET
            # each took twice as long to write 64 small snapshots (a probe)
            sets = [command for command in commands if command[0] == "SET"]
            return [("MSET", *(x for _, key, blob in sets for x in (key, blob))),
                    *(command for command in commands if command[0] != "SET")]
        # every pending set read in the first exchange, which a sweep's own read cost a round
        # trip more; watched only where a generation staged must still be listed
        guarded(client, None if journal is None else f"{prefix}:j:{journal}", owner, switch,
                [*lsn_keys, *heads, *(value.key("p") for value, _ in staged)],
                [*(("GET", key) for key in [*lsn_keys, *heads]),
                 *(("ZRANGE", key, 0, -1) for key in pending)])


@contextlib.contextmanager
def _swept_after(client: redis.Redis, values: list[Value],
                 listed: dict[str, list[bytes]] | None) -> Iterator[None]:
    """With `listed` (a write of plain values), sweep the pending generations the switch read
    into it once the block ends, best effort: done, or refused, as by a server that dead saves'
    chunks filled past maxmemory, which the next write then finds freed."""
    try:
        yield
    finally:
        with contextlib.suppress(*ERRORS):
            for value in values if listed is not None else []:
                redis_chunks.sweep(client, value, listed.get(value.key("p"), []))


def get(client: redis.Redis, prefix: str, partition: int) -> bytes | None:
    """The snapshot, reassembled and checked if in chunks; one damaged (a chunk gone or
    changed) is StoreCorrupt, naming the keys whose removal, together, lets the partition
    recover without it, from its journal and homes, as a damaged one-value snapshot's does
    (the chunks the header names with it: none left behind)."""
    value = _value(prefix, partition)
    try:
        return redis_chunks.get(client, value)
    except StoreCorrupt as exc:
        keys = " ".join(redis_chunks.every_key(client, value))
        raise StoreCorrupt(f"{exc}; its partition's recovery is refused, and saves nothing "
                           f"over it: to recover the partition without it, remove it: `DEL "
                           f"{keys}` (README, \"Corruption\")") from exc


def _value(prefix: str, partition: int) -> Value:
    return Value(prefix, "s", str(partition), STAND_IN)
