"""Meta values on Redis in chunks (redis_store.py `put_meta`, `get_meta`): one Redis value is
at most the server's proto-max-bulk-len (512 MiB by default; a longer SET drops the
connection), and the learner's posterior may be longer.

A value up to ONE_VALUE_BYTES stays one string, `<prefix>:m:<key>`, as every value was before:
an older Kairos reads and writes it as ever. A longer one is written in chunks of CHUNK_BYTES
under a generation of its own, `<prefix>:mc:<key>:<generation>:<n>`, then made the value by
one MULTI/EXEC that sets its header `<prefix>:mh:<key>` (msgpack [generation, length, chunks,
SHA-256]) and deletes the plain string and the previous generation's chunks; a plain value's
write deletes the header and its chunks the same way. Both run under WATCH of the header, so
a concurrent save's switch is seen (looked at again) and no generation is left behind. A
reader sees one save or another, never a mix: a chunk gone while it reads (a save switched
meanwhile) makes it read the header again; a chunk gone under the current header, or chunks
that do not add up to it, are StoreCorrupt.

A save that fails between chunks deletes its own; one killed there (or whose switch failed)
leaves the previous value in place and its chunks unreferenced, but listed: while it writes,
each generation is in the sorted set `<prefix>:mp:<key>` and keeps `<prefix>:ma:<key>:<generation>`
alive, a key each chunk sets to expire in STALE_S by the server's clock (the hosts' may
differ). The key's next save deletes, in one MULTI/EXEC under WATCH, the chunks of a generation
whose key expired; a save that finds its generation so deleted fails (StoreUnavailable) rather
than switch to it. The commands are those README lists for an ACL user."""
from __future__ import annotations

import contextlib
import hashlib
import os

import msgpack
import redis

from kairos.cluster.storage import redis_replicas
from kairos.cluster.storage.redis_errors import ERRORS
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

CHUNK_BYTES = 4 << 20  # one SET each: far below the value limit, sent well within a timeout
# Up to this a value stays one key, so an older Kairos (one SET, one GET) still reads what this
# one saved. Past it, that one SET already failed where the server has a replica (its default
# output buffer limit, client-output-buffer-limit replica 256mb, drops the link on it), and
# past 512 MiB everywhere: the chunks' gain, so their rollback cost, is confined to those.
ONE_VALUE_BYTES = 256 << 20
CHUNKS_PER_READ = 4  # GETs sent together: 16 MiB, as redis_store.py's PIPELINE_BYTES
STALE_S = 600.0  # a generation not written to for this long is a killed save's
READ_TRIES = 3  # reads a chunk gone to a newer save starts over (then StoreUnavailable)


def put(client: redis.Redis, prefix: str, key: str, blob: bytes) -> None:
    """Store `blob` under meta `key`: the previous value stays readable until it is replaced
    whole."""
    _sweep(client, prefix, key)
    if len(blob) <= ONE_VALUE_BYTES:
        _switch(client, prefix, key, [("SET", f"{prefix}:m:{key}", blob)])
        return
    generation, view = os.urandom(8).hex(), memoryview(blob)
    count = -(-len(blob) // CHUNK_BYTES)
    member, pending = f"{generation}:{count}", f"{prefix}:mp:{key}"
    alive = _alive(prefix, key, generation)
    try:
        for n in range(count):
            with client.pipeline(transaction=False) as pipe:
                # first: a listed generation always has its key (expiry: the server's clock)
                pipe.set(alive, b"", px=int(STALE_S * 1000))
                if n == 0:  # only then: a later ZADD would list again a generation swept
                    pipe.zadd(pending, {member: 0})  # the score is not read
                pipe.set(_chunk(prefix, key, generation, n),
                         view[n * CHUNK_BYTES:(n + 1) * CHUNK_BYTES])
                pipe.zrange(pending, 0, -1)
                if member.encode() not in pipe.execute()[-1]:
                    raise _swept(key)  # after this chunk's SET: the DEL below takes it too
    except BaseException:  # still listed: a SET that lands after this DEL is swept later
        with contextlib.suppress(*ERRORS):
            client.delete(*_chunks(prefix, key, generation, count))
        raise
    # a switch that fails leaves them to the sweep: it may have landed with its reply lost
    header = msgpack.packb([generation, len(blob), count, hashlib.sha256(view).digest()])
    _switch(client, prefix, key, [("SET", f"{prefix}:mh:{key}", header),
                                  ("DEL", f"{prefix}:m:{key}", alive),
                                  ("ZREM", pending, member)], member)


def get(client: redis.Redis, prefix: str, key: str) -> bytes | None:
    """The value under meta `key`, reassembled and checked if it is in chunks."""
    for _ in range(READ_TRIES):
        with client.pipeline(transaction=True) as tx:
            tx.get(f"{prefix}:m:{key}")
            tx.get(f"{prefix}:mh:{key}")
            plain, header = tx.execute()
        # this version never leaves both (one MULTI sets one and deletes the other): both are
        # an older Kairos's SET after a rollback, over a header it does not know, so newer
        if header is None or plain is not None:
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
        with redis_replicas.pipeline(client) as tx:  # WAITed: a replica then holds the chunks
            try:
                tx.watch(head, pending)
                old = tx.get(head)
                if member is not None and member.encode() not in tx.zrange(pending, 0, -1):
                    raise _swept(key)
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
    """Delete the chunks of generations whose save was killed (their key expired)."""
    pending = f"{prefix}:mp:{key}"
    members = client.zrange(pending, 0, -1)
    if not members:
        return
    alive = [_alive(prefix, key, m.decode().partition(":")[0]) for m in members]
    with client.pipeline(transaction=False) as pipe:  # GETs, not MGET: the README's ACL
        for mark in alive:
            pipe.get(mark)
        seen_all = pipe.execute()
    for member, mark, seen in zip(members, alive, seen_all):
        if seen is not None:
            continue
        generation, _, count = member.decode().partition(":")
        with client.pipeline(transaction=True) as tx, contextlib.suppress(redis.WatchError):
            tx.watch(pending, mark)  # a chunk written or a switch meanwhile: not dead, keep it
            if tx.get(mark) is not None:
                continue
            tx.multi()
            tx.zrem(pending, member)  # in one EXEC with the DEL: a switch is before or after
            tx.delete(*_chunks(prefix, key, generation, int(count)))
            tx.execute()


def _swept(key: str) -> StoreUnavailable:
    return StoreUnavailable(f"meta {key!r}: the save's chunks were deleted as a dead save's "
                            f"(nothing written for {STALE_S:.0f} s)")


def _alive(prefix: str, key: str, generation: str) -> str:
    return f"{prefix}:ma:{key}:{generation}"


def _chunks(prefix: str, key: str, generation: str, count: int) -> list[str]:
    return [_chunk(prefix, key, generation, n) for n in range(count)]


def _chunk(prefix: str, key: str, generation: str, n: int) -> str:
    return f"{prefix}:mc:{key}:{generation}:{n}"
