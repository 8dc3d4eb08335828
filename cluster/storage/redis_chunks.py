"""Values on Redis in chunks: meta (redis_store.py `put_meta`, `get_meta`) and partitions'
snapshots (redis_snapshots.py). One Redis value is at most the server's proto-max-bulk-len
(512 MiB by default; a longer SET drops the connection), past some 256 MiB a replica's output
buffer limit drops its link, and the learner's posterior, or a partition's snapshot, may be
longer.

A value's keys are a family's (`Value`: "m" for meta, "s" for snapshots). A value up to
ONE_VALUE_BYTES stays one string, `<prefix>:m:<key>`, as every value was before: an older
Kairos reads and writes it as ever. A longer one is written in chunks (`stage`) under a
generation of its own, `<prefix>:mc:<key>:<generation>:<n>`, then made the value by one
MULTI/EXEC (`switch`) that sets its header `<prefix>:mh:<key>` (msgpack [generation, length,
chunks, SHA-256]) and deletes the plain string (a snapshot's: sets its `stand_in`) and the
previous generation's chunks; a plain value's write deletes the header and its chunks the same
way. Both run under WATCH of the header and (a switch to chunks) the pending generations
(meta: `_switch`; a snapshot: with its journal's fence, redis_snapshots.py), so a concurrent
save's switch is seen (looked at again) and no generation is left behind. A reader sees one
save or another, never a mix: a chunk gone while it reads (a save switched meanwhile) makes it
read the header again; a chunk gone under the current header, or chunks that do not add up to
it, are StoreCorrupt.
A snapshot whose stand-in is gone was removed (README, "Corruption"): it reads as none, and
its chunks go with the partition's next save.

A save that fails between chunks deletes its own, and so does one whose switch the server
refused (`switching`: fenced, out of memory; its WATCH failing each of its tries, a
snapshot's guarded's, meta's SWITCH_TRIES in `_switch`: StoreUnavailable), but never a
generation the header names (a partial EXEC's); one killed, or whose switch's reply was
lost (it may have landed), leaves its chunks unreferenced, but listed: while it writes,
each generation is in the sorted set `<prefix>:mp:<key>` and keeps
`<prefix>:ma:<key>:<generation>` alive, a key each chunk sets to expire in STALE_S by the
server's clock (the hosts' may differ). The key's next save first deletes the chunks of a
generation still listed whose key expired and that the header does not name, once a ZREM of
its own unlisted it (`sweep`: not in a MULTI, which a server over maxmemory refuses whole); a
save that finds its generation so unlisted fails (StoreUnavailable) rather than switch to it. The
commands are those README lists for an ACL user. A switch's reply lost where redis-py says
WatchError (a connection that failed while it watched keys) is looked at again: a header
already naming the save's generation is its own switch, which landed (`switch`).
A damaged header (not what `stage` writes) is StoreCorrupt to a reader; meta's next save
replaces it (a snapshot's recovery is refused, so never saves: its DEL, redis_snapshots.py
`get`), its chunks, which it no longer names, left to
`SCAN ... MATCH <prefix>:<family>c:<key>:*`."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Iterator, NamedTuple

import msgpack
import redis

from kairos.cluster.settings import REDIS_CHUNK_LEAST, REDIS_CHUNK_MOST
from kairos.cluster.storage import redis_replicas
from kairos.cluster.storage.redis_errors import ERRORS, ReplicasBehind
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

log = logging.getLogger("kairos.store")
CHUNK_BYTES = 4 << 20  # one SET each: far below the value limit, sent well within a timeout
# Up to this a value stays one key, so an older Kairos (one SET, one GET) still reads what this
# one saved. A margin below a replica's default output buffer hard limit (client-output-buffer-
# limit replica 256mb), which drops its link on a write that fills it: a value, with what else
# is on its way to the replica, must stay below (redis_store.py writes one past PIPELINE_BYTES
# alone). Past 512 MiB one SET fails everywhere. A value an older Kairos wrote as one, up to
# 256 MiB, is read either way: chunks are read only under a header.
ONE_VALUE_BYTES = 192 << 20
READ_BYTES = 16 << 20  # chunks' GETs sent together, as redis_store.py's PIPELINE_BYTES
# no chunk but a value's last is shorter, or longer (meta's CHUNK_BYTES; a snapshot's
# KAIROS_REDIS_SNAPSHOT_CHUNK, which settings.py bounds by these): a header naming a count of
# chunks no size between cuts its length in is damaged
LEAST_CHUNK_BYTES, MOST_CHUNK_BYTES = REDIS_CHUNK_LEAST, REDIS_CHUNK_MOST
# far past any value a save writes (a partition's snapshot, held in memory): it caps the chunk
# names a damaged header or pending member has a reader or a sweep list, and a save's DEL of
# them sends (65,536 at the least chunk; Redis 6.2 takes no command of over 2^20 arguments)
MOST_VALUE_BYTES = 64 << 30
MOST_CHUNKS = MOST_VALUE_BYTES // LEAST_CHUNK_BYTES
STALE_S = 600.0  # a generation not written to for this long is a killed save's
READ_TRIES = 3  # reads a chunk gone to a newer save starts over (then StoreUnavailable)
# how many times meta's switch looks again at a header or pending set changed under its WATCH
# (then StoreUnavailable): more than a journal write's (redis_journal.py SETTLE_TRIES), as
# a switch given up discards what its save staged (up to the whole value, sent again by the
# next save) where a try more costs a round trip; only saves of the same key (each changes
# them a few times) and their sweeps change them
SWITCH_TRIES = 8
# how a switch fails that may have landed (its reply lost; the replicas not holding it in time
# after it ran): its chunks, which a reader may then know, are left to the sweep
MAYBE_LANDED = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                ReplicasBehind)


class Value(NamedTuple):
    """One value that may be in chunks: its keys are `<prefix>:<family><kind>:<name>`, kind
    "" (the plain string), "h" (the header), "p" (the pending generations), "a" and "c" (a
    generation's key and chunks, `_alive` and `_chunk`)."""
    prefix: str
    family: str  # "m": meta; "s": a partition's snapshot (redis_snapshots.py)
    name: str
    # the plain string a value in chunks leaves (else none): what an older Kairos reads there
    stand_in: bytes | None = None

    def key(self, kind: str = "") -> str:
        return f"{self.prefix}:{self.family}{kind}:{self.name}"


class Staged(NamedTuple):
    """Chunks `stage` wrote, not yet the value: the header `switch` sets, and the generation's
    member of the pending set."""
    member: str
    header: bytes


def put(client: redis.Redis, value: Value, blob: bytes) -> None:
    """Store `blob` as `value`: the previous one stays readable until it is replaced whole."""
    sweep_all(client, [value])
    with switching(client) as staged:
        _switch(client, value, written(client, value, blob, CHUNK_BYTES, staged))


@contextlib.contextmanager
def switching(client: redis.Redis) -> Iterator[list[tuple[Value, Staged]]]:
    """A list for the chunks `written` stages, whose switch the block runs: deleted if it
    fails where no switch landed (refused: fenced, out of memory, a snapshot's WATCH failing
    each try; or a later value failing to stage), left to the sweep where one may have
    (MAYBE_LANDED) or the save was killed, kept where the header names them (`discard`)."""
    staged: list[tuple[Value, Staged]] = []
    try:
        yield staged
    except MAYBE_LANDED:
        raise
    except Exception:
        for value, chunks in staged:
            discard(client, value, chunks)
        raise


def written(client: redis.Redis, value: Value, blob: bytes, size: int,
            staged: list[tuple[Value, Staged]]) -> bytes | Staged:
    """What `switch` makes `value`: `blob` itself up to ONE_VALUE_BYTES, else its chunks of
    `size`, staged (and added to `staged`)."""
    if not in_chunks(blob):
        return blob
    staged.append((value, stage(client, value, blob, size)))
    return staged[-1][1]


def in_chunks(blob: bytes) -> bool:
    """Whether `blob` is saved in chunks (past ONE_VALUE_BYTES), else as one value."""
    return len(blob) > ONE_VALUE_BYTES


def stage(client: redis.Redis, value: Value, blob: bytes, size: int) -> Staged:
    """Write `blob` in chunks of `size` under a generation of its own, listed as pending; the
    value is unchanged until a `switch` to them runs."""
    if len(blob) > MOST_VALUE_BYTES:
        raise ValueError(f"{_named(value)}: {len(blob)} bytes is past the most a reader takes "
                         f"({MOST_VALUE_BYTES})")
    generation, view = os.urandom(8).hex(), memoryview(blob)
    count = -(-len(blob) // size)
    member, pending = f"{generation}:{count}", value.key("p")
    alive = _alive(value, generation)
    try:
        for n in range(count):
            with client.pipeline(transaction=False) as pipe:
                # first: a listed generation always has its key (expiry: the server's clock)
                pipe.set(alive, b"", px=int(STALE_S * 1000))
                if n == 0:  # only then: a later ZADD would list again a generation swept
                    pipe.zadd(pending, {member: 0})  # the score is not read
                pipe.set(_chunk(value, generation, n), view[n * size:(n + 1) * size])
                pipe.zrange(pending, 0, -1)
                if member.encode() not in pipe.execute()[-1]:
                    raise swept(value)  # after this chunk's SET: the DEL below takes it too
    except BaseException:  # a chunk this DEL misses (it failed; a SET whose reply was lost
        # lands after it) is swept later while the generation is listed, else left for ever
        with contextlib.suppress(*ERRORS):
            client.delete(*_chunks(value, generation, count))
        raise
    return Staged(member, msgpack.packb([generation, len(blob), count,
                                         hashlib.sha256(view).digest()]))


def discard(client: redis.Redis, value: Value, staged: Staged) -> None:
    """Delete chunks `stage` wrote that no switch names (else they are swept later); none
    the header names: a switch that failed part way (an EXEC with an error reply) or one
    whose reply was lost, taken for refused, may have set it. Not in a MULTI, which a server
    out of memory refuses whole: the generation unlisted last, so a DEL that fails leaves it
    to the sweep."""
    generation, _, count = staged.member.partition(":")
    with contextlib.suppress(*ERRORS):
        if _generation(client.get(value.key("h"))) == generation:
            return
        with client.pipeline(transaction=False) as pipe:
            pipe.delete(_alive(value, generation), *_chunks(value, generation, int(count)))
            pipe.zrem(value.key("p"), staged.member)
            pipe.execute()


def switch(value: Value, new: bytes | Staged, old: bytes | None, pending: list[bytes]
           ) -> list[tuple]:
    """The commands of one MULTI/EXEC that make `new` (a plain value, or chunks `stage` wrote)
    the value and delete the header `old` and its chunks, given `old` and, for chunks, the
    `pending` generations, as read under WATCH of the header and the pending set
    (StoreUnavailable if `new`'s generation was swept meanwhile). A header that is `new`'s
    already is this save's switch, its reply lost: a no-op replicated (on Redis 7+ a WAIT
    covers its connection's writes alone: redis_replicas.py) stands for it."""
    if isinstance(new, Staged):
        if old == new.header:  # the generation is random: no other save's header
            return [("SET", value.key("h"), new.header)]
        if new.member.encode() not in pending:  # swept, or (a retry) landed and overtaken
            raise swept(value, overtaken=True)
        commands = [("SET", value.key("h"), new.header),
                    ("DEL", _alive(value, new.member.partition(":")[0])),
                    ("ZREM", value.key("p"), new.member),
                    ("DEL", value.key()) if value.stand_in is None else
                    ("SET", value.key(), value.stand_in)]
    else:
        commands = [("SET", value.key(), new)]
    if old is not None:
        deleted = [*([] if isinstance(new, Staged) else [value.key("h")]), *_chunks_of(value, old)]
        if deleted:  # none: a damaged header, set over
            commands.append(("DEL", *deleted))
    return commands


def get(client: redis.Redis, value: Value) -> bytes | None:
    """`value`, reassembled and checked if it is in chunks."""
    for _ in range(READ_TRIES):
        with client.pipeline(transaction=True) as tx:
            tx.get(value.key())
            tx.get(value.key("h"))
            plain, header = tx.execute()
        # in chunks only with the header and the stand-in (or, without one, no plain string:
        # one MULTI sets them): a plain string besides is an older Kairos's SET after a
        # rollback, over a header it does not know, so newer; a snapshot's stand-in gone, an
        # operator's removal (the module's text), whose chunks the next switch deletes
        if header is None or plain != value.stand_in:
            return plain
        assembled = _assemble(client, value, header)
        if assembled is not None:
            return assembled
    raise StoreUnavailable(f"{_named(value)} was saved again during each of {READ_TRIES} "
                           f"reads")


def _assemble(client: redis.Redis, value: Value, header: bytes) -> bytes | None:
    """The chunks `header` names, joined and checked; None if a newer save replaced them."""
    generation, length, count, digest = _fields(value, header)
    parts, hasher = [], hashlib.sha256()
    per_read = max(1, READ_BYTES * count // length)  # `_fields`: at least a byte a chunk
    for first in range(0, count, per_read):
        with client.pipeline(transaction=False) as pipe:
            for n in range(first, min(first + per_read, count)):
                pipe.get(_chunk(value, generation, n))
            for n, part in enumerate(pipe.execute(), first):
                if part is None:
                    if client.get(value.key("h")) != header:
                        return None
                    raise StoreCorrupt(f"{_named(value)}: chunk {n} of the {count} of its "
                                       f"saved value ({_chunk(value, generation, n)}) is "
                                       f"missing (deleted outside Kairos?)")
                hasher.update(part)
                parts.append(part)
    joined = b"".join(parts)
    if len(joined) != length or hasher.digest() != digest:
        raise StoreCorrupt(f"{_named(value)}: its saved value's {count} chunks hold "
                           f"{len(joined)} bytes that do not match its header's length "
                           f"({length}) or digest (changed outside Kairos?)")
    return joined


def _switch(client: redis.Redis, value: Value, new: bytes | Staged) -> None:
    """`switch` to `new` in one MULTI/EXEC under WATCH of the header and the pending
    generations, looked at again while they change before the EXEC (SWITCH_TRIES)."""
    for _ in range(SWITCH_TRIES):
        # WAITed: a replica then holds the chunks
        with redis_replicas.pipeline(client) as tx, contextlib.suppress(redis.WatchError):
            tx.watch(value.key("h"), value.key("p"))
            commands = switch(value, new, tx.get(value.key("h")),
                              tx.zrange(value.key("p"), 0, -1))
            tx.multi()
            for command in commands:
                tx.execute_command(*command)
            tx.execute()
            return
    raise StoreUnavailable(f"{_named(value)}: its header {value.key('h')} or pending "
                           f"generations {value.key('p')} kept changing (other saves of it) "
                           f"during each of {SWITCH_TRIES} tries to switch to this save")


def every_key(client: redis.Redis, value: Value) -> list[str]:
    """The keys of `value` as it is now: its plain string, its header and the chunks that
    names (deleted together, they leave no chunk behind)."""
    header = client.get(value.key("h"))
    return [value.key(), value.key("h"), *([] if header is None else _chunks_of(value, header))]


def sweep_all(client: redis.Redis, values: list[Value]) -> None:
    """`sweep` each of `values`, their pending generations read in one exchange."""
    with client.pipeline(transaction=False) as pipe:
        for value in values:
            pipe.zrange(value.key("p"), 0, -1)
        listed = pipe.execute()
    for value, members in zip(values, listed):
        sweep(client, value, members)


def sweep(client: redis.Redis, value: Value, members: list[bytes]) -> None:
    """Delete the chunks of those pending generations, `members`, whose save was killed
    (their key expired), each claimed first by a ZREM of its own that removed it: one a save
    just switched in was unlisted by its switch (ZREM 0: nothing deleted), one a switch that
    failed part way set in the header without its ZREM is skipped (a header names its
    chunks), and a save that resumes finds its generation unlisted and fails (`swept`). Not
    in a MULTI, which a server over maxmemory refuses whole: a full server is when a dead
    save's chunks most need to go. Never a generation this process is still to switch to: its
    key is alive while it writes, and deleted by its switch."""
    listed = []
    for member in members:
        if (parsed := _member(member)) is not None:
            listed.append((member, *parsed))
        else:  # not a save's (no live save lists one): its chunks cannot be known, only unlisted
            log.warning("%s: a pending generation %r is not one Kairos writes (<generation>:"
                        "<chunks>, at most %d); unlisted, its chunks (if any) left",
                        _named(value), member, MOST_CHUNKS)
            client.zrem(value.key("p"), member)
    if not listed:
        return
    alive = [_alive(value, generation) for _, generation, _ in listed]
    with client.pipeline(transaction=False) as pipe:  # GETs, not MGET: the README's ACL
        for mark in alive:
            pipe.get(mark)
        seen_all = pipe.execute()
    for (member, generation, count), mark, seen in zip(listed, alive, seen_all):
        if seen is not None:
            continue
        chunks = _chunks(value, generation, count)
        with client.pipeline(transaction=False) as pipe:  # still dead, and not the header's
            pipe.get(mark)
            pipe.get(value.key("h"))
            seen, header = pipe.execute()
        if seen is None and _generation(header) != generation and \
                client.zrem(value.key("p"), member):
            client.delete(*chunks)


def swept(value: Value, overtaken: bool = False) -> StoreUnavailable:
    """The save's generation found no longer pending: swept, or, at its switch, switched in
    by a try whose reply was lost and replaced since by another writer's save (`overtaken`)."""
    return StoreUnavailable(
        f"{_named(value)}: the save's chunks were deleted as a dead save's (nothing written "
        f"for {STALE_S:.0f} s)" + (", or the save landed, its reply lost, and may have been "
                                   "overtaken by another writer's" if overtaken else ""))


def _fields(value: Value, header: bytes) -> tuple[str, int, int, bytes]:
    """`header`'s generation, length, chunks and SHA-256: StoreCorrupt if it is not what
    `stage` writes (changed outside Kairos)."""
    fields, why = _parsed(header)
    if fields is None:
        # meta's next save replaces it; a snapshot's is not saved over (its recovery is
        # refused): redis_snapshots.py `get` names the DEL that lets it recover
        replaced = "; a save replaces it" if value.family == "m" else ""
        raise StoreCorrupt(f"{_named(value)}: its header {value.key('h')} is damaged "
                           f"({why}){replaced}")
    return fields


def _unpacked(header: bytes) -> tuple[str, int, int, bytes] | None:
    return _parsed(header)[0]


def _member(member: bytes) -> tuple[str, int] | None:
    """A pending member's generation and chunk count (`stage` lists `<generation>:<chunks>`);
    None for one Kairos did not write."""
    try:
        generation, _, count = member.decode().partition(":")
    except UnicodeDecodeError:
        return None
    if not (generation and count.isascii() and count.isdigit() and len(count) <= 20):
        return None  # (int() takes other digits, and refuses past 4,300 of them)
    return (generation, int(count)) if 0 < int(count) <= MOST_CHUNKS else None


def _parsed(header: bytes) -> tuple[tuple[str, int, int, bytes] | None, str]:
    """`header`'s fields, or None and how it is damaged: checked before any chunk is read, so
    a length its chunks cannot hold is not found after reading them all (one GET each: a read
    sends READ_BYTES' worth of chunks by the length), nor a count that is no chunk size's
    listed as that many chunks' names."""
    if (fields := _structure(header)) is None:
        return None, "not msgpack [generation, length, chunks, SHA-256]"
    length, count = fields[1:3]
    if length > MOST_VALUE_BYTES:
        return None, f"its length, {length} bytes, is past any save's ({MOST_VALUE_BYTES})"
    counts = range(max(1, -(-length // MOST_CHUNK_BYTES)), -(-length // LEAST_CHUNK_BYTES) + 1)
    if count in counts:
        return fields, ""
    takes = f"a value of {length} bytes is in {counts[0]} to {counts[-1]} chunks" if counts \
        else f"no value of {length} bytes is in chunks"
    return None, (f"it names {count} chunks: {takes} of {LEAST_CHUNK_BYTES} to "
                  f"{MOST_CHUNK_BYTES} bytes, all but the last")


def _structure(header: bytes) -> tuple[str, int, int, bytes] | None:
    """`header`'s fields if it is msgpack [generation, length, chunks, SHA-256], their bounds
    unchecked (`_parsed`)."""
    try:
        fields = tuple(msgpack.unpackb(header))
    except (ValueError, TypeError):  # msgpack's errors are ValueErrors; a scalar: TypeError
        return None
    return fields if len(fields) == 4 and all(map(
        isinstance, fields, (str, int, int, bytes))) else None


def _generation(header: bytes | None) -> str | None:
    """The generation a header names, None for none or one not msgpack [generation, ...]:
    whatever its bounds say (a later writer's wider chunk bounds), a sweep or discard never
    deletes the chunks of the generation a header names."""
    fields = None if header is None else _structure(header)
    return None if fields is None else fields[0]


def _chunks_of(value: Value, header: bytes) -> list[str]:
    """The chunks `header` names; none where it is damaged (they are not known)."""
    fields = _unpacked(header)
    return [] if fields is None else _chunks(value, fields[0], fields[2])


def _named(value: Value) -> str:
    return f"meta {value.name!r}" if value.family == "m" else \
        f"partition {value.name}'s snapshot"


def _alive(value: Value, generation: str) -> str:
    return f"{value.key('a')}:{generation}"


def _chunks(value: Value, generation: str, count: int) -> list[str]:
    return [_chunk(value, generation, n) for n in range(count)]


def _chunk(value: Value, generation: str, n: int) -> str:
    return f"{value.key('c')}:{generation}:{n}"
