"""A decision log (decision_logs.py) on Redis (redis_store.py `decision_log`).

With KAIROS_REDIS_REPLICAS, its appends, removals and an emptied log's removal are WAITed for
(redis_replicas.py). A trim that removes nothing may retry one whose ZREMs ran and whose WAIT
failed, and what an erasure's scan did not find another remover (a trim, another shard's
erasure) may have removed with a WAIT that failed: neither is done until the replicas hold
those ZREMs, which a WAITed write sent after them says (a replica's acknowledgement of an offset
covers every write before it, from any connection): an erasure's last removal, if WAITed after
its scan ended, else a no-op sent then (`_no_op`), one a log. An erasure reaches every log of
the store (shard/decisionlog.py `_erase`): once a WAIT of its pass failed (`Pass`), the pass's
later writes are sent without WAIT and fail with ReplicasBehind at once, so a pass with a
replica away waits out REDIS_REPLICAS_WAIT_S once, not once a log.

A member that msgpack does not decode (damaged: Redis keeps no checksum, and every Kairos packs
members so) is skipped by a read, with a warning, and removed by any erasure: it cannot be
checked for the customers erased. One that decodes as something other than an entry (a newer
Kairos's, as the journal keeps a newer format's batches) is skipped by reads and kept by
erasures, with a warning, unless its bytes hold an erased customer's id. Neither one's size, unknown, is subtracted from the log's count (the
safe direction: `_remove`).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from typing import Callable, Iterator, TypeVar

import msgpack
import redis

from kairos.cluster.storage import redis_aof, redis_replicas
from kairos.cluster.storage.decision_logs import Entry, checked_entry, entry_size, packed_id
from kairos.cluster.storage.redis_errors import ERRORS, ReplicasBehind, unavailable
from kairos.cluster.storage.redis_journal import REPLAY_PAGE
from kairos.cluster.storage.store import StoreUnavailable

log = logging.getLogger("kairos.store")
T = TypeVar("T")


class Pass:
    """The erasure pass under way on a store: each begins by listing the logs (redis_store.py
    `decision_logs`; another listing meanwhile begins another, which costs at most a WAIT more).
    Which pass last had a WAIT fail: a token, so one that failed before a pass began never
    counts for it."""

    def __init__(self) -> None:
        self.current = object()
        self.failed: object | None = None

    def begin(self) -> None:
        self.current = object()

    def waiting(self, write: Callable[[], T], unwaited: Callable[[], object]) -> T:
        """`write`'s reply (a write WAITed for), a failed WAIT noted for this pass; once one
        has failed, `unwaited` (the write without WAIT) and ReplicasBehind at once."""
        now = self.current
        if self.failed is now:
            unwaited()
            raise ReplicasBehind("an earlier WAIT of this erasure pass failed: its later "
                                 "writes are not waited for, nor known to be held by the "
                                 "replicas")
        try:
            return write()
        except ReplicasBehind:
            self.failed = now
            raise


class RedisLog:
    """A decision log as a sorted set: each member is msgpack of `[customer id, record, time]`
    (entries that differ only in time stay apart), scored by the time it was logged, written
    with its size in one MULTI/EXEC. Trims and erasures remove exact members (ZREM), so they
    never race an append; they read the set in pages of REPLAY_PAGE entries and subtract the
    sizes of only the members their ZREMs removed (`_remove`): any shard may trim or erase any
    log, and a member two removers read (a trim beside another shard's ForgetCustomer) was
    subtracted twice, taking the counter below zero and the log past its byte bound. Only the
    log's emptiness is WATCHed (`_if_empty`, where nothing is left to start over), so no
    remover makes another start over."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, erasures: Pass):
        self.r = client
        self.prefix = prefix
        self.names = f"{prefix}:d"
        self.name = name
        self.key = f"{prefix}:d:{name}"
        self._erasures = erasures

    @unavailable("appending to a decision log")
    def append(self, entries: list[Entry]) -> None:
        members = {msgpack.packb([c, data, t], use_bin_type=True): t for t, c, data in entries}
        with redis_replicas.pipeline(self.r) as tx:
            tx.zadd(self.key, members)
            tx.incrby(f"{self.key}:bytes", sum(map(entry_size, entries)))
            tx.sadd(self.names, self.name)
            tx.execute()

    def read(self, since: float, until: float) -> Iterator[Entry]:
        """In pages by score; the members at a page's last score are asked for again with
        the next page and skipped (a round's entries share their time), as is a member that
        does not decode (warned of once a read: an export reads page after page). A
        generator: its pages' errors are mapped here, not where it is created."""
        low, seen, warned = since, set(), False
        try:
            while True:
                want = REPLAY_PAGE + len(seen)
                page = self.r.zrangebyscore(self.key, low, until, start=0, num=want,
                                            withscores=True)
                for member, score in page:
                    if score == low and member in seen:
                        continue
                    if isinstance(entry := _unpacked(member), tuple):
                        yield score, *entry
                    elif not warned:
                        warned = True
                        log.warning("decision log %s: a member scored %r is not an entry "
                                    "(%s): skipped, as any others this read meets", self.key,
                                    score, entry)
                if len(page) < want:
                    return
                last = page[-1][1]
                seen = {m for m, s in page if s == last} | (seen if last == low else set())
                low = last
        except ERRORS as exc:
            raise StoreUnavailable(f"redis: reading a decision log: {exc}") from exc

    @unavailable("trimming a decision log")
    def trim(self, before: float, max_bytes: int, orphan: bool = False,
             between_pages: Callable[[], object] | None = None) -> int:
        """(decision_logs.py) An `orphan` left empty leaves the names of the logs; a log left
        empty has its count reset (one left too high by a crash comes back down).
        `between_pages` is called after each page, so a long trim never holds its caller's
        other writes for more than a page (shard/decisionlog.py)."""
        dropped = 0
        while old := self.r.zrangebyscore(self.key, "-inf", f"({before!r}", start=0,
                                          num=REPLAY_PAGE):
            dropped += self._remove(old)
            if between_pages:
                between_pages()
        while oldest := _reaching(self.r.zrange(self.key, 0, REPLAY_PAGE - 1),
                                  self.size() - max_bytes):
            dropped += self._remove(oldest)
            if between_pages:
                between_pages()
        if not dropped and redis_replicas.REPLICAS:  # one trim retried (the module's text)
            self._no_op()
        self._if_empty(orphan)
        return dropped

    @unavailable("erasing from a decision log")
    def erase(self, customer_ids: set[str]) -> int:
        """ZSCAN's steps, these customers' members removed in pages (a member ZSCAN returns
        twice is removed, and counted, once: `_remove`), and any member msgpack does not decode
        (counted too); a part of the erasure pass the store's last listing of the logs began
        (the module's text)."""
        theirs = (member for member, _ in self.r.zscan_iter(self.key, count=REPLAY_PAGE)
                  if self._erased(member, customer_ids))
        dropped, held = 0, False
        while page := list(itertools.islice(theirs, REPLAY_PAGE)):
            removed = self._remove(page, self._erasures)
            dropped += removed
            held = bool(removed) and len(page) < REPLAY_PAGE  # WAITed after the scan ended
        if dropped:  # the ZREMs, and the members they name, stay in the AOF till a rewrite
            redis_aof.rewrite(self.r)
        if not held and redis_replicas.REPLICAS:  # what the scan did not find (module's text)
            self._erasures.waiting(self._no_op, lambda: None)
        return dropped

    def _erased(self, member: bytes, customer_ids: set[str]) -> bool:
        """Whether an erasure of `customer_ids` removes `member`: one of theirs, a damaged one,
        which cannot be checked, or a newer Kairos's whose bytes hold one's id as msgpack
        packs it (decision_logs.packed_id; warned of, as is one kept)."""
        if isinstance(entry := _unpacked(member), tuple):
            return entry[0] in customer_ids
        erased = entry is DAMAGED or any(packed_id(c) in member for c in customer_ids)
        log.warning("decision log %s: a member of %d bytes is not an entry (%s): %s by this "
                    "erasure", self.key, len(member), entry, "removed" if erased else "kept")
        return erased

    def _no_op(self) -> None:
        """A replicated write that leaves nothing (a key set and deleted in one MULTI/EXEC:
        a DECRBY by 0 made an emptied log's count again), WAITed for: on Redis 7+ a WAIT
        covers only its connection's writes (redis_replicas.py)."""
        with redis_replicas.pipeline(self.r) as tx:
            tx.set(f"{self.prefix}:wait", b"")
            tx.delete(f"{self.prefix}:wait")
            tx.execute()

    def _remove(self, members: list[bytes], erasures: Pass | None = None) -> int:
        """Remove `members`, one ZREM each in one MULTI/EXEC, whose replies say which were
        still there; subtract the sizes of those alone. How many went. The subtraction is a
        second round trip: a crash between leaves the count too high, the safe direction (a
        trim then drops more than it must; the log never passes its bound). A count taken to
        0 or below (an orphan trim removed the log meanwhile, and this DECRBY made its count
        again) goes with the log if the log is gone. An erasure's, part of `erasures`."""
        removed = _zrems(self.r, self.key, members)
        gone = [member for member, was in zip(members, removed) if was]
        if gone:
            self._subtract(sum(map(_member_size, gone)), erasures)
        return len(gone)

    def _subtract(self, size: int, erasures: Pass | None) -> None:
        """The count's DECRBY, WAITed for (an erasure's: as its pass says), with the ZREMs
        before it in the replication stream; a count taken to 0 or below goes with the log if
        the log is gone (`_remove`)."""
        command = ("DECRBY", f"{self.key}:bytes", size)
        waited = functools.partial(redis_replicas.write, self.r, *command)
        count = waited() if erasures is None else erasures.waiting(
            waited, functools.partial(self.r.execute_command, *command))
        if count <= 0:
            self._if_empty(orphan=False)

    def _if_empty(self, orphan: bool) -> None:
        """An empty log's count removed (0), and an `orphan`'s name; an append meanwhile
        (under WATCH) keeps them. Another remover's DECRBY still on its way takes the count
        below zero, and removes it again (`_remove`), unless an append comes first: the count
        then stays low by that remover's page, the log that much over its bound until it
        empties again."""
        with redis_replicas.pipeline(self.r) as tx, contextlib.suppress(redis.WatchError):
            tx.watch(self.key)
            if not tx.zcard(self.key):
                tx.multi()
                tx.delete(self.key, f"{self.key}:bytes")
                if orphan:
                    tx.srem(self.names, self.name)
                tx.execute()

    @unavailable("sizing a decision log")
    def size(self) -> int:
        return int(self.r.get(f"{self.key}:bytes") or 0)


def _zrems(client: redis.Redis, key: str, members: list[bytes]) -> list[int]:
    """One MULTI/EXEC of a ZREM per member (a reply each: 1 if it was there), sent on one
    connection as redis-py packs commands, without a pipeline: its bookkeeping per command
    cost about as much again."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(
            [("MULTI",), *(("ZREM", key, m) for m in members), ("EXEC",)]))
        for _ in range(len(members) + 1):  # OK, then QUEUED for each ZREM
            connection.read_response()
        removed = connection.read_response()
    except BaseException:
        connection.disconnect()  # with any reply not read
        raise
    finally:
        pool.release(connection)
    for reply in removed:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
    return removed


def _reaching(members: list[bytes], excess: int) -> list[bytes]:
    """The first of `members` (oldest first) whose sizes add up to `excess` (none if it is
    not above 0), or all."""
    if excess <= 0:
        return []
    for k, member in enumerate(members):
        excess -= _member_size(member)
        if excess <= 0:
            return members[:k + 1]
    return members


def _member_size(member: bytes) -> int:
    """What `append` counted for `member`; 0 for one not an entry, whose count is unknown
    (the module's text)."""
    entry = _unpacked(member)
    return entry_size((0.0, *entry)) if isinstance(entry, tuple) else 0


DAMAGED = "damaged: msgpack does not decode it"
FOREIGN = "it decodes as no entry this Kairos writes (a newer one's?)"


def _unpacked(member: bytes) -> tuple[str, bytes] | str:
    """(customer id, record) of a member `append` wrote; else why not: DAMAGED or FOREIGN."""
    try:
        fields = msgpack.unpackb(member, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return DAMAGED
    if isinstance(fields, list) and len(fields) == 3 and \
            (entry := checked_entry(0.0, fields[0], fields[1])) is not None:
        return entry[1:]
    return FOREIGN
