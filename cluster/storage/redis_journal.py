"""RedisJournal: a shard's journal on a Redis server (redis_store.py: its keys).

A journal batch is one member, sealed behind its CRC-32 (frames.py's `seal_batch`; members
written before sealing are plain msgpack `[first lsn, records, format]`, read unchecked; the
format rule and frame limit are frames.py's), written with the last-LSN key in
one MULTI/EXEC, so Redis holds all of a batch or none of it. The same MULTI/EXEC reads the
fence (store.py: `fence_journal` sets it), so the batch and the check are one step in the
server's order: a batch written before the fence is read by the shard that set it, and one
after it is refused (JournalFenced; it stays, unacknowledged, in the fenced journal). It runs
under WATCH of the last-LSN key, read first: one that is not the writer's own means the server
lost writes it had acknowledged (a crash, a failover), and nothing is appended past that gap
(StoreUnavailable: the shard rebuilds from what the server holds). The same exchange WATCHes
and reads the journal's owner (store.py, "Owners"): a writer for an incarnation that no
longer owns it writes nothing (JournalDisowned). This needs no command beyond those listed
for an ACL user (README), where a Lua script would. It takes two round trips: the WATCH and
its reads go in one write, the MULTI/EXEC in another, on a connection of the client's pool
(`_exchange`), as a redis-py pipeline sends each command apart once it watches (a third
round trip, on every acknowledged round). Every other write of the shard's (truncation,
take-back, compaction, and the store's snapshot and home writes) goes the same way
(`guarded`), under WATCH of the fence and the owner.

A transaction whose reply is lost (a socket timeout after its EXEC was sent) leaves its batch
in doubt, so the writer looks again on a new connection before it answers: a batch there is
acknowledged; one not there never will be (the last-LSN key is written over, so an EXEC still
on its way fails its WATCH), and the round answers UNAVAILABLE. Where the server cannot tell
(it went away), the round answers UNAVAILABLE, the writer appends nothing more (the same batch
retried through it and acknowledged would be taken back as the one in doubt), and the
journal's next writer in this process, the shard's rebuild, takes the batch back if it is
there before it reads, so a client's retry is applied once. A process that dies before that
leaves the batch to be replayed, as a crash between any write and its answer does
(idempotency keys make such retries safe), and so does a fence that came first: the heir that
set it replayed the batch if it landed, and a retry sent to the heir applies it again unless
it carries an idempotency key (the next writer is refused, JournalFenced, and forgets it).
Reading back, a batch that does not decode, whose score is not its last LSN, or whose LSNs do
not follow on from the batch before it is StoreCorrupt (the shard stays UNAVAILABLE until the
member is moved into the quarantine with its score: the gap it leaves is then accepted). The
journal's next writer (the shard's next try) records each quarantined score in the sorted set
`<key>:gaps`, which replay reads as well (truncation drops those it passed), so the quarantine
is evidence only, removable once inspected; a batch that decodes but follows a gap nothing
accepts (or, read first, starts past what truncation and the snapshot cover: truncation_marks.py)
is never named as one to quarantine (the error says how to accept the gap). Replay
and compaction read the sorted set in pages of REPLAY_PAGE batches by score, so no single
exchange grows with the journal (one ZRANGE of it all outlasted the socket timeout, and a
shard's rebuild looped). Durability is the server's: with the journal policy "fsync" the
server must run with `appendonly yes` and `appendfsync always`; "os" accepts `everysec`; and
every journal needs `maxmemory-policy noeviction` (an evicted fence or owner lets a stale
writer append). A writer checks these when it opens (redis_config.py: an evicting server is
refused, the rest warned; a server that refuses CONFIG GET is warned about once). With
KAIROS_REDIS_REPLICAS, every write here is WAITed for (redis_replicas.py); a batch the
replicas do not hold in time is settled as one whose reply was lost, but taken back if there
(`_settled`): its round answers UNAVAILABLE, and the LSNs stay contiguous. Until the take-back
has run (up to KAIROS_REDIS_REPLICAS_WAIT_S after the batch), a fence finds the batch there:
the heir that set it replays a batch answered UNAVAILABLE, as above for a lost reply.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Sequence

import msgpack
import redis

from kairos.cluster.storage import redis_replicas, truncation_marks as marks
from kairos.cluster.storage.frames import (Decode, JournalFormatError, check_frame, checked_shape,
                                           scrub_batch, seal_batch, unseal_batch)
from kairos.cluster.storage.redis_config import check_server
from kairos.cluster.storage.redis_errors import ERRORS, ReplicasBehind, unavailable
from kairos.cluster.storage.store import (JournalDisowned, JournalFenced, StoreCorrupt,
                                          StoreUnavailable)

log = logging.getLogger("kairos.store")
REPLAY_PAGE = 256  # journal batches (and decision log entries) fetched per round trip
# (server, journal key) -> a batch whose append lost its reply, the server unable to tell then
# whether it holds it: (the batch, its last LSN, its number of records)
_in_doubt: dict[tuple, tuple[bytes, int, int]] = {}
SETTLE_TRIES = 3  # looks at a batch in doubt while the journal's last LSN changes under them
# how a transaction's connection fails (redis-py raises WatchError for one that watched keys)
LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
        redis.exceptions.WatchError)


class RedisReader:
    """A journal read only (store.py `read_journal`): nothing here writes."""

    def __init__(self, client: redis.Redis, key: str):
        self.r = client
        self.key = key

    def replay(self, after_lsn: int = 0, decode: Decode | None = None
               ) -> Iterator[tuple[int, Any]]:
        low, expect, first_read = f"({after_lsn}", None, True
        while True:
            page = self._page(low)
            if first_read and page:  # the mark read after the page: truncation sets both at once
                expect = marks.limit(after_lsn, marks.redis_read(self.r, self.key))
            for member, score in page:
                first, records, journal_format = self._unpack(member, score, expect, first_read)
                expect, first_read = first + len(records), False
                for lsn, record in enumerate(records, first):
                    if lsn > after_lsn and record is not None:
                        yield lsn, record if decode is None else decode(record, journal_format)
            if len(page) < REPLAY_PAGE:
                return
            low = f"({int(page[-1][1])}"

    def _unpack(self, member: bytes, score: float, expect: int | None, first_read: bool = False
                ) -> tuple[int, list, int]:
        """A batch read back; StoreCorrupt unless it decodes as one, its score is its last LSN
        and it starts at `expect` (after the batch before it), or, `first_read`, by it (then
        truncation_marks.py's `limit`); anywhere if `expect` is None."""
        try:
            first, records, journal_format = checked_shape(unseal_batch(member))
        except JournalFormatError:
            raise  # whole, and newer than this code: refused as it is
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StoreCorrupt(f"redis: journal {self.key}: the batch scored {int(score)} "
                               f"does not decode ({exc})") from None
        expect = min(expect, first) if first_read and expect is not None else expect
        misscored = first + len(records) - 1 != int(score)
        if misscored or expect not in (None, first) and not self._skipped(first - 1):
            what = (f"redis: journal {self.key}: the batch scored {int(score)} holds LSNs "
                    f"{first}-{first + len(records) - 1}, after LSN "
                    f"{'?' if expect is None else expect - 1}")
            if not misscored and first > expect:  # intact: what is wrong is the gap before it
                what += (f"; no record accepts LSNs {expect}-{first - 1} as skipped: do not "
                         f"quarantine this batch, which may hold acknowledged events; if they are"
                         f" gone (or an older release truncated them), accept the gap with `ZADD"
                         f" {self.key}:gaps {first - 1} {first - 1}` (README, \"Corruption\")")
            raise StoreCorrupt(what)
        return first, records, journal_format

    @unavailable("reading the journal's quarantine")
    def _skipped(self, score: int) -> bool:
        """Whether the batch ending at LSN `score` was quarantined (README, "Corruption"), so
        the gap it leaves is accepted: recorded in the gaps' set (`_record_gaps`), or, until
        a writer opened since, in the quarantine alone."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcount(f"{self.key}:gaps", score, score)
            pipe.zcount(f"{self.key}:quarantine", score, score)
            return any(pipe.execute())

    @unavailable("reading the journal")
    def _page(self, low: str) -> list:
        return self.r.zrangebyscore(self.key, low, "+inf", start=0, num=REPLAY_PAGE,
                                    withscores=True)


class RedisJournal(RedisReader):
    def __init__(self, client: redis.Redis, key: str, policy: str, owner: str | None = None):
        """`owner`: the incarnation this writer writes as (store.py, "Owners"); None for a
        writer that checks only the fence."""
        super().__init__(client, key)
        self.policy = policy
        self.fence = f"{key}:fenced"
        self.last = f"{key}:last"
        self.owner_key = f"{key}:owner"
        self.owner = owner
        self.disowned = False  # found another incarnation the owner: nothing more is written
        self.fenced = False
        self.failed: str | None = None  # why a batch is in doubt: nothing more is appended
        kwargs = client.connection_pool.connection_kwargs
        self._where = (*(kwargs.get(k) for k in ("host", "port", "path", "db")), key)
        try:
            # fenced or disowned first: that stops the shard, where a server refused below is
            # StoreUnavailable, which it retries
            with self.r.pipeline(transaction=False) as pipe:
                self._refuse(*pipe.get(self.fence).get(self.owner_key).execute())
            check_server(client, key, policy)  # refused if it evicts keys (redis_config.py)
            redis_replicas.check(client)  # fewer replicas than asked for: warned
            doubt = _in_doubt.get(self._where)
            if doubt is not None:  # its round was answered UNAVAILABLE: taken back if there
                self._settle(*doubt, keep=False)
                del _in_doubt[self._where]
        except JournalFenced:  # a batch in doubt is past taking back: the heir replayed it
            _in_doubt.pop(self._where, None)  # (the module's text)
            raise
        with self.r.pipeline(transaction=False) as pipe:
            for name in (self.last, self.fence, self.owner_key, f"{key}:{marks.MARK}"):
                pipe.get(name)
            last, fenced, owner, mark = pipe.execute()
        self._refuse(fenced, owner)
        self.last_lsn = int(last or 0)
        self._record_gaps()
        self.trimmed = marks.parsed(mark)  # truncated up to it; None: new, or from before marks

    unsynced = False  # each append is one MULTI/EXEC, durable per the server's appendfsync

    @unavailable("recording the journal's gaps")
    def _record_gaps(self) -> None:
        """Record the score of each quarantined batch in the gaps' set (the module's text)."""
        scores = {int(score) for _, score in
                  self.r.zrange(f"{self.key}:quarantine", 0, -1, withscores=True)}
        if scores:
            self._guarded(("ZADD", f"{self.key}:gaps",
                           *(part for score in sorted(scores) for part in (score, score))))

    def skip_past(self, lsn: int) -> None:
        """StoreCorrupt: a snapshot covers this journal up to `lsn`, past its last LSN. A
        directory journal's tail can go at a power cut (journal.py, "Lost tails"); not this
        one's: a snapshot is written after the batches it covers, on the same server, and what
        a server keeps (its AOF or RDB, a replica) is a prefix of its writes."""
        raise StoreCorrupt(f"journal {self.key} ends at LSN {self.last_lsn}, but a snapshot "
                           f"covers it up to LSN {lsn}: its keys were changed outside Kairos")

    def sync(self) -> None:
        pass

    @unavailable("appending to the journal")
    def append(self, records: list[Any], sync: bool = True) -> int:
        if self.fenced:
            raise self._refused()
        if self.failed is not None:
            raise StoreUnavailable(f"a batch appended earlier is in doubt ({self.failed}); "
                                   f"this writer appends nothing more")
        if not records or self.policy == "off":
            return self.last_lsn  # no LSN taken for what is not written (journal.py)
        first, last = self.last_lsn + 1, self.last_lsn + len(records)
        batch = seal_batch(first, records)
        check_frame(len(batch), first, len(records))  # the same limit as a directory's
        try:
            fenced = self._transact(batch, last)
        except (*LOST, ReplicasBehind) as exc:  # the EXEC may have run, its reply lost, or it
            self._settled(batch, last, len(records), exc)  # ran and the replicas lack it
            fenced = None  # and the fence is not up (`_settle`)
        if fenced is not None:  # set before this batch: it is not acknowledged
            self.fenced = True
            raise JournalFenced.of(self.key)
        self.last_lsn = last
        return last

    def _transact(self, batch: bytes, last: int) -> bytes | None:
        """The append's transaction (the module's text): the batch and its last LSN, under
        WATCH of the last-LSN key as `_follows_on` found it; the fence as the EXEC read it.
        WatchError if the key changed before the EXEC (nothing written). The owner is watched
        and read with it, in the same write: JournalFenced, nothing written, if it is not this
        writer's."""
        with _held(self.r) as connection:
            _, stored, owner = _exchange(connection, ("WATCH", self.last, self.owner_key),
                                         ("GET", self.last), ("GET", self.owner_key))
            self._refuse(None, owner)
            self._follows_on(int(stored or 0))
            done = _commit(connection, (("ZADD", self.key, last, batch),
                                        *marks.redis_first(self.key, stored),
                                        ("SET", self.last, last), ("GET", self.fence)))
        if done is None:
            raise redis.exceptions.WatchError(f"journal {self.key}: the last LSN changed")
        return done[-1]

    def _settled(self, batch: bytes, last: int, count: int, lost: Exception) -> None:
        """After the append's transaction failed on its connection: return if its batch is in
        the journal (acknowledged, the fence not up), else StoreUnavailable, nothing appended
        nor ever to be. A batch the replicas did not hold in time (ReplicasBehind) is taken
        back if it is there (a failover may have kept it, or not: not acknowledged either
        way). A server that cannot tell now (or whose replicas do not hold what this settling
        wrote after it looked) leaves the batch in doubt (`_in_doubt`) for the journal's next
        writer in this process (the shard's rebuild) to settle before it reads: its round is
        answered UNAVAILABLE, so it is taken back if it is there. This writer appends nothing
        more (`failed`)."""
        try:
            if self._settle(batch, last, count, keep=not isinstance(lost, ReplicasBehind)):
                return
        except (*ERRORS, ReplicasBehind) as exc:
            _in_doubt[self._where] = (batch, last, count)
            self.failed = (f"redis: journal {self.key}: appending LSNs {last - count + 1}-"
                           f"{last}: {lost}; whether the store holds them is not known yet "
                           f"({exc})")
            raise StoreUnavailable(self.failed) from exc
        raise StoreUnavailable(f"redis: appending to the journal: {lost}") from lost

    def _settle(self, batch: bytes, last: int, count: int, keep: bool) -> bool:
        """Whether the batch of `count` LSNs up to `last` is in the journal, its transaction's
        reply having been lost: it is if the last-LSN key is `last` and the batch is at that
        score. Not there, the key is written over (with its value) so that the transaction,
        should its EXEC still be on its way, fails the WATCH of its connection; there but not
        `keep`, it is taken back. JournalFenced, leaving it, if the journal is fenced. Redis
        errors if the server cannot tell (a WatchError: the key changed SETTLE_TRIES times).
        With replicas (redis_replicas.py), each outcome is this connection's write of the key,
        WAITed for: one there and kept is acknowledged once the replicas hold what follows it,
        one taken back or not there once they hold that (ReplicasBehind if not, saying what
        the primary showed: a replica a failover promotes may still hold a batch taken back
        here), as a fresh connection's WAIT covers none of the server's writes on Redis 7.0
        and later (on 6.2, those before its last command: redis_replicas.py)."""
        for _ in range(SETTLE_TRIES - 1):
            with contextlib.suppress(redis.exceptions.WatchError):  # changed: look again
                return self._settle_once(batch, last, count, keep)
        return self._settle_once(batch, last, count, keep)

    def _settle_once(self, batch: bytes, last: int, count: int, keep: bool) -> bool:
        with redis_replicas.pipeline(self.r) as tx:
            tx.watch(self.last, self.fence, self.owner_key)
            stored = int(tx.get(self.last) or 0)
            self._refuse(tx.get(self.fence), tx.get(self.owner_key))
            there = stored == last and batch in tx.zrangebyscore(self.key, last, last)
            if there and keep and not redis_replicas.REPLICAS:
                return True
            tx.multi()
            if there and not keep:
                tx.zrem(self.key, batch)
            tx.set(self.last, last - count if there and not keep else stored)
            try:
                tx.execute()
            except ReplicasBehind as exc:  # what the primary showed, which replicas may not
                shown = ("does not hold the batch" if not there else "holds the batch" if keep
                         else "held the batch, now taken back")
                raise ReplicasBehind(f"the primary {shown}; its replicas are not known to "
                                     f"agree: {exc}") from exc
            return there and keep

    def _follows_on(self, stored: int) -> None:
        """StoreUnavailable, so that nothing is appended past a gap, unless the server's last
        LSN is this writer's: a server that lost writes it had acknowledged (a crash under
        appendfsync everysec, a failover to a lagging replica) comes back with an older one,
        and redis-py reconnects to it without a word. The shard then rebuilds from what the
        server holds."""
        if stored != self.last_lsn:
            error = StoreUnavailable(
                f"redis: journal {self.key}: the server's last LSN is {stored}, this writer's "
                f"{self.last_lsn}: the server lost writes it had acknowledged (a crash without "
                f"appendfsync always, a failover to a lagging replica); nothing appended")
            log.error("%s", error)
            raise error

    def _refuse(self, fenced: bytes | None, owner: bytes | None) -> None:
        """JournalFenced if the journal is fenced, or owned by another incarnation than this
        writer's (when it writes as one)."""
        if self.fenced:
            raise self._refused()
        if fenced is not None:  # the first reason: dropping a fenced journal takes its owner
            self.fenced = True
            raise JournalFenced.of(self.key)
        if not owns(self.owner, owner):
            self.fenced = self.disowned = True
            raise JournalDisowned.of(self.key)

    def _refused(self) -> JournalFenced:
        """Why this writer writes nothing more, once it found out."""
        return (JournalDisowned if self.disowned else JournalFenced).of(self.key)

    @unavailable("reading the journal's fence")
    def check_fence(self) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.fence)
            pipe.get(self.owner_key)
            self._refuse(*pipe.execute())

    @unavailable("taking back a batch")
    def retract(self, after_lsn: int) -> bool:
        """Take back the last batch, appended after `after_lsn` (journal.py's `retract`; a
        batch here is durable as soon as it is written, so it is always taken back)."""
        if self.last_lsn == after_lsn:
            return True
        self._guarded(("ZREMRANGEBYSCORE", self.key, self.last_lsn, self.last_lsn),
                      ("SET", self.last, after_lsn))
        self.last_lsn = after_lsn
        return True

    @unavailable("truncating the journal")
    def truncate(self, upto_lsn: int) -> int:
        if self.trimmed is None:  # none read: it may start past `upto_lsn` (truncation_marks.py)
            self.trimmed = marks.redis_start(self.r, self.key, self.last_lsn)
        self.trimmed = max(upto_lsn, self.trimmed)  # set in the transaction removing the batches
        return self._guarded(("ZREMRANGEBYSCORE", self.key, "-inf", upto_lsn),
                             ("ZREMRANGEBYSCORE", f"{self.key}:gaps", "-inf", upto_lsn),
                             ("SET", f"{self.key}:{marks.MARK}", self.trimmed))[0]

    def _guarded(self, *commands: tuple) -> list:
        if self.fenced:
            raise self._refused()
        try:
            return guarded(self.r, self.key, self.owner, commands)
        except JournalFenced as exc:
            self.fenced, self.disowned = True, isinstance(exc, JournalDisowned)
            raise

    def compact(self, drop: Callable[[Any], bool], decode: Decode | None = None) -> int:
        """Page by page (REPLAY_PAGE batches, by score), so a long journal never needs one
        exchange that outlasts the socket timeout. A rewritten batch keeps its score, and the
        next page starts past it. Then the quarantine (`_scrub_quarantine`)."""
        dropped, low = 0, "-inf"
        while True:
            page = self._page(low)
            for member, score in page:
                dropped += self._compact_batch(member, score, drop, decode)
            if len(page) < REPLAY_PAGE:
                return dropped + self._scrub_quarantine(drop, decode)
            low = f"({int(page[-1][1])}"

    @unavailable("compacting the journal's quarantine")
    def _scrub_quarantine(self, drop: Callable[[Any], bool], decode: Decode | None) -> int:
        """Each batch an operator quarantined without the records `drop` selects, at its
        score (frames.py's `scrub_batch`: the rest is kept for the operator, and the score
        keeps the gap accepted); how many went. In one reply: a handful of damaged batches.
        One the operator removed meanwhile stays removed: the ZREM's reply tells, and the
        rewrite is taken back (a crash between leaves it, without the records erased), with no
        WATCH of the quarantine, which any other batch moved into it would start over."""
        dropped, quarantine = 0, f"{self.key}:quarantine"
        for member, score in self.r.zrange(quarantine, 0, -1, withscores=True):
            scrubbed, gone = scrub_batch(member, int(score), drop, decode)
            if scrubbed == member:
                continue
            removed, added = self._guarded(("ZREM", quarantine, member),
                                           ("ZADD", quarantine, score, scrubbed))
            if removed:
                dropped += gone
            elif added:
                self._guarded(("ZREM", quarantine, scrubbed))
        return dropped

    @unavailable("compacting the journal")
    def _compact_batch(self, member: bytes, score: float, drop: Callable[[Any], bool],
                       decode: Decode | None) -> int:
        first, records, journal_format = self._unpack(member, score, None)
        kept = [None if r is None or drop(r if decode is None else
                                           decode(r, journal_format)) else r
                for r in records]
        gone = sum(1 for r in kept if r is None) - sum(1 for r in records if r is None)
        if gone:
            self._guarded(("ZREM", self.key, member),
                          ("ZADD", self.key, score, seal_batch(first, kept, journal_format)))
        return gone

    def close(self) -> None:
        pass


def owns(mine: str | None, stored: bytes | None) -> bool:
    """Whether a writer as incarnation `mine` (None: as none, an older caller's way) may write
    a journal whose owner key holds `stored`."""
    return mine is None or stored is not None and stored.decode() == mine


def guarded(client: redis.Redis, journal: str | None, owner: str | None,
            commands: Sequence[tuple] | Callable[[list], Sequence[tuple]],
            watched: Sequence[str] = (), reads: Sequence[tuple] = ()) -> list:
    """Run `commands` in a MULTI/EXEC unless the journal (its key) is fenced or, with
    `owner`, another incarnation's (JournalFenced, nothing written); the EXEC's replies. Two
    round trips (`_exchange`): one WATCHes the fence, the owner and `watched` and reads the
    first two and `reads`, the other is the MULTI/EXEC. `commands`, where a callable, is made
    from the replies of `reads` (and raises to refuse). With `journal` None, `watched` alone.
    A watched key changed before the EXEC: looked at again, up to SETTLE_TRIES times (then
    WatchError)."""
    guards = () if journal is None else (f"{journal}:fenced", f"{journal}:owner")
    for _ in range(SETTLE_TRIES):
        with _held(client) as connection:
            replies = _exchange(connection, ("WATCH", *guards, *watched),
                                *(("GET", key) for key in guards), *reads)[1:]
            if guards and replies[0] is not None:
                raise JournalFenced.of(journal)
            if guards and not owns(owner, replies[1]):
                raise JournalDisowned.of(journal)
            done = _commit(connection, commands(replies[len(guards):]) if callable(commands)
                           else commands)
        if done is not None:
            return done
    raise redis.exceptions.WatchError(f"{journal or ', '.join(watched)}: the keys a write "
                                      f"watched kept changing")


@contextlib.contextmanager
def _held(client: redis.Redis) -> Iterator[redis.connection.AbstractConnection]:
    """A connection of the client's pool for `_exchange`, back in the pool after, dropped if
    what ran on it failed (with its WATCH, and any reply not read), but for ReplicasBehind:
    that comes after the EXEC, which ends the WATCH, and WAIT's reply, read whole (a pool
    that dropped its connection at each failed WAIT would connect anew for each write while
    the replicas are away)."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        yield connection
    except ReplicasBehind:
        raise
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _commit(connection: redis.connection.AbstractConnection, commands: Sequence[tuple]
            ) -> list | None:
    """`commands` in a MULTI/EXEC on `connection` (which watched what they depend on): the
    EXEC's replies, None if a watched key changed (nothing written); an error reply raised.
    What it wrote is then WAITed for (redis_replicas.py: ReplicasBehind if the replicas do not
    hold it)."""
    done = _exchange(connection, ("MULTI",), *commands, ("EXEC",))[-1]
    if done is not None:
        for reply in done:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        redis_replicas.wait(connection)
    return done


def _exchange(connection: redis.connection.AbstractConnection, *commands: tuple) -> list:
    """Send `commands` in one write and read their replies; an error reply raised (the
    replies after it unread: the caller drops the connection)."""
    connection.send_packed_command(connection.pack_commands(commands))
    return [connection.read_response() for _ in commands]

