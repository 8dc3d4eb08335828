"""Meta values on Redis in chunks (redis_store.py `put_meta`, `get_meta`): one Redis value is
at most the server's proto-max-bulk-len (512 MiB by default; a longer SET drops the
connection), and the learner's posterior may be longer.

A value up to CHUNK_BYTES stays one string, `<prefix>:m:<key>`, as every value was before
(those still load). A longer one is written in chunks of CHUNK_BYTES under a generation of its
own, `<prefix>:mc:<key>:<generation>:<n>`, then made the value by one MULTI/EXEC that sets its
header `<prefix>:mh:<key>` (msgpack [generation, length, chunks, SHA-256]) and deletes the
plain string and the previous generation's chunks; a short value's write deletes the header
and its chunks the same way. Both run under WATCH of the header, so a concurrent save's
switch is seen (looked at again) and no generation is left behind. A reader sees one save or
another, never a mix: a chunk gone while it reads (a save switched meanwhile) makes it read
the header again; a chunk gone under the current header, or chunks that do not add up to it,
are StoreCorrupt.

A save that fails between chunks deletes its own; one killed there (or whose switch failed)
leaves the previous value in place and its chunks unreferenced, but listed: while it writes,
each generation is in the sorted set `<prefix>:mp:<key>`, scored with the time of its last
chunk, and the key's next save deletes the chunks of a generation not written to for STALE_S.
The commands are those README lists for an ACL user."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time

import msgpack
import redis

from kairos.cluster.storage.redis_errors import ERRORS
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

CHUNK_BYTES = 4 << 20  # one SET each: far below the value limit, sent well within a timeout
CHUNKS_PER_READ = 4  # GETs sent together: 16 MiB, as redis_store.py's PIPELINE_BYTES
STALE_S = 600.0  # a generation not written to for this long is a killed save's
READ_TRIES = 3  # reads a chunk gone to a newer save starts over (then StoreUnavailable)


def put(client: redis.Redis, prefix: str, key: str, blob: bytes) -> None:
    """Store `blob` under meta `key`: the previous value stays readable until it is replaced
    whole."""
    _sweep(client, prefix, key)
    if len(blob) <= CHUNK_BYTES:
        _switch(client, prefix, key, [("SET", f"{prefix}:m:{key}", blob)])
        return
    generation, view = os.urandom(8).hex(), memoryview(blob)
    count = -(-len(blob) // CHUNK_BYTES)
    member, pending = f"{generation}:{count}", f"{prefix}:mp:{key}"
    try:
        for n in range(count):
            with client.pipeline(transaction=False) as pipe:
                pipe.zadd(pending, {member: time.time()})  # first: a chunk is never unlisted
                pipe.set(_chunk(prefix, key, generation, n),
                         view[n * CHUNK_BYTES:(n + 1) * CHUNK_BYTES])
                pipe.execute()
    except BaseException:  # still listed: a SET that lands after this DEL is swept later
        with contextlib.suppress(*ERRORS):
            client.delete(*_chunks(prefix, key, generation, count))
        raise
    # a switch that fails leaves them to the sweep: it may have landed with its reply lost
    header = msgpack.packb([generation, len(blob), count, hashlib.sha256(view).digest()])
    _switch(client, prefix, key, [("SET", f"{prefix}:mh:{key}", header),
                                  ("DEL", f"{prefix}:m:{key}"), ("ZREM", pending, member)],
            member)


def get(client: redis.Redis, prefix: str, key: str) -> bytes | None:
    """The value under meta `key`, reassembled and checked if it is in chunks."""
    for _ in range(READ_TRIES):
        with client.pipeline(transaction=True) as tx:
            tx.get(f"{prefix}:m:{key}")
            tx.get(f"{prefix}:mh:{key}")
            plain, header = tx.execute()
        if header is None:
            return plain
        value = _assemble(client, prefix, key, header)
        if value is not None:
            return value
    raise StoreUnavailable(f"meta {key!r} was saved again during each of {READ_TRIES} reads")


def _assemble(client: redis.Redis, prefix: str, key: str, header: bytes) -> bytes | None:
    """The chunks `header` names, joined and checked; None if a newer save replaced them."""
    generation, length, count, digest = msgpack.unpackb(header)
    parts, hasher = [], hashlib.sha256()
    for first in range(0, count, CHUNKS_PER_READ):
        with client.pipeline(transaction=False) as pipe:
            for n in range(first, min(first + CHUNKS_PER_READ, count)):
                pipe.get(_chunk(prefix, key, generation, n))
            for n, part in enumerate(pipe.execute(), first):
                if part is None:
                    if client.get(f"{prefix}:mh:{key}") != header:
                        return None
                    raise StoreCorrupt(f"meta {key!r}: chunk {n} of the {count} of its saved "
                                       f"value ({_chunk(prefix, key, generation, n)}) is "
                                       f"missing (deleted outside Kairos?)")
                hasher.update(part)
                parts.append(part)
    value = b"".join(parts)
    if len(value) != length or hasher.digest() != digest:
        raise StoreCorrupt(f"meta {key!r}: its saved value's {count} chunks hold {len(value)} "
                           f"bytes that do not match its header's length ({length}) or digest "
                           f"(changed outside Kairos?)")
    return value


def _switch(client: redis.Redis, prefix: str, key: str, commands: list[tuple],
            member: str | None = None) -> None:
    """Run `commands` with the deletion of the header and chunks they replace, in one
    MULTI/EXEC under WATCH of the header and the pending generations; with `member`, only if
    that generation is still pending (not deleted by another save's `_sweep`)."""
    head, pending = f"{prefix}:mh:{key}", f"{prefix}:mp:{key}"
    while True:
        with client.pipeline(transaction=True) as tx:
            try:
                tx.watch(head, pending)
                old = tx.get(head)
                if member is not None and member.encode() not in tx.zrange(pending, 0, -1):
                    raise StoreUnavailable(f"meta {key!r}: the save's chunks were deleted as a "
                                           f"dead save's (nothing written for {STALE_S:.0f} s)")
                tx.multi()
                for command in commands:
                    tx.execute_command(*command)
                if member is None:
                    tx.delete(head)
                if old is not None:
                    generation, _, count, _ = msgpack.unpackb(old)
                    tx.delete(*_chunks(prefix, key, generation, count))
                tx.execute()
                return
            except redis.WatchError:
                continue


def _sweep(client: redis.Redis, prefix: str, key: str) -> None:
    """Delete the chunks of generations whose save was killed (none written for STALE_S)."""
    pending = f"{prefix}:mp:{key}"
    for member in client.zrangebyscore(pending, "-inf", time.time() - STALE_S):
        generation, _, count = member.decode().partition(":")
        with client.pipeline(transaction=False) as pipe:
            pipe.delete(*_chunks(prefix, key, generation, int(count)))
            pipe.zrem(pending, member)
            pipe.execute()


def _chunks(prefix: str, key: str, generation: str, count: int) -> list[str]:
    return [_chunk(prefix, key, generation, n) for n in range(count)]


def _chunk(prefix: str, key: str, generation: str, n: int) -> str:
    return f"{prefix}:mc:{key}:{generation}:{n}"
