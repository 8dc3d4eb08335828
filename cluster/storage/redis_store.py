"""RedisStore: the store on a real Redis server, so any node can recover any partition.

Keys, under a prefix (default "kairos", `?prefix=` in the URL) so clusters can share a server:

    <prefix>:c:<partition>       hash: customer id -> home blob
    <prefix>:s:<partition>       string: the partition's snapshot
    <prefix>:j:<shard>           sorted set: journal batches, scored by their last LSN
    <prefix>:j:<shard>:last      string: the journal's last LSN (survives truncation)
    <prefix>:j:<shard>:quarantine  sorted set: damaged batches an operator moved aside
    <prefix>:j:<shard>:fenced    string: another shard took the journal's partitions over
    <prefix>:m:<key>             string: meta
    <prefix>:d:<shard>           sorted set: the shard's decision log, entries scored by time
    <prefix>:d:<shard>:bytes     string: the log's size, as decision_logs.py counts it
    <prefix>:d                   set: the names of the decision logs

A journal batch is one member, msgpack `[first lsn, records, format]` (frames.py's
`pack_batch`, whose format rule and frame limit it follows), written with the last-LSN key in
one MULTI/EXEC, so Redis holds all of a batch or none of it. The same MULTI/EXEC reads the
fence (store.py: `fence_journal` sets it), so the batch and the check are one step in the
server's order: a batch written before the fence is read by the shard that set it, and one
after it is refused (JournalFenced; it stays, unacknowledged, in the fenced journal). This
needs no command beyond those listed for an ACL user (README), where a Lua script would.
Reading back, a batch that does not decode, whose score is not its last LSN, or whose LSNs do
not follow on from the batch before it is StoreCorrupt (the shard stays UNAVAILABLE until the
member is moved into the quarantine with its score: the gap it leaves is then accepted). Replay
and compaction read the sorted set in pages of REPLAY_PAGE batches by score, so no single
exchange grows with the journal (one ZRANGE of it all outlasted the socket timeout, and a
shard's rebuild looped). Durability is the server's:
with the journal policy "fsync" the server must run with `appendonly yes` and
`appendfsync always` (the journal checks with CONFIG GET and warns at open); "os" accepts
`everysec`. A server or ACL user that refuses CONFIG GET (managed Redis, `-config`) is not an
error: the store warns once per server and user that it could not check, and goes on.

The URL may carry a password (`redis://user:password@host:port/db`); it is never printed,
logged or put in an error message as it is: `repr` and messages show `redact(url)`.

`rediss://` speaks TLS and verifies the server's certificate and host name (redis-py's
defaults). Its parameters: `ssl_ca_certs` (the CA to trust, PEM; the system's CAs without
it), `ssl_certfile` and `ssl_keyfile` (a client certificate, for servers that ask for one),
`ssl_cert_reqs=none` (no verification: warned). Every node that opens the store reads these
files at the same paths. Any other parameter than these and `prefix` is refused when the
store opens, naming it (`password` too is accepted, as redis-py reads it), rather than
failing later inside a connection.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import msgpack
import redis

from kairos.cluster.settings import REDIS_TIMEOUT_S
from kairos.cluster.storage.decision_logs import Entry, entry_size
from kairos.cluster.storage.frames import (Decode, JournalFormatError, check_frame, pack_batch,
                                           unpack_batch)
from kairos.cluster.storage.store import JournalFenced, StoreCorrupt, StoreUnavailable, redact

log = logging.getLogger("kairos.store")
REPLAY_PAGE = 256  # journal batches fetched per round trip when replaying
PIPELINE_BYTES = 16 << 20  # the most data one write to Redis carries
ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
          redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
          redis.exceptions.ResponseError)
_unchecked: set[tuple] = set()  # (host, port, user) whose durability settings were not checked


def _unavailable(what: str):
    """Decorator: Redis errors surface as StoreUnavailable naming what was being done."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ERRORS as exc:
                raise StoreUnavailable(f"redis: {what}: {exc}") from exc
        return call
    return wrap


class RedisReader:
    """A journal read only (store.py `read_journal`): nothing here writes."""

    def __init__(self, client: redis.Redis, key: str):
        self.r = client
        self.key = key

    def replay(self, after_lsn: int = 0, decode: Decode | None = None
               ) -> Iterator[tuple[int, Any]]:
        low, expect = f"({after_lsn}", None
        while True:
            page = self._page(low)
            for member, score in page:
                first, records, journal_format = self._unpack(member, score, expect)
                expect = first + len(records)
                for lsn, record in enumerate(records, first):
                    if lsn > after_lsn and record is not None:
                        yield lsn, record if decode is None else decode(record, journal_format)
            if len(page) < REPLAY_PAGE:
                return
            low = f"({int(page[-1][1])}"

    def _unpack(self, member: bytes, score: float, expect: int | None
                ) -> tuple[int, list, int]:
        """A batch read back; StoreCorrupt unless it decodes, its score is its last LSN and
        it starts at `expect` (the LSN after the batch before it, when one was read)."""
        try:
            first, records, journal_format = unpack_batch(member)
        except JournalFormatError:
            raise  # whole, and newer than this code: refused as it is
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StoreCorrupt(f"redis: journal {self.key}: the batch scored {int(score)} "
                               f"does not decode ({exc})") from None
        if first + len(records) - 1 != int(score) or \
                expect not in (None, first) and not self._quarantined(first - 1):
            raise StoreCorrupt(f"redis: journal {self.key}: the batch scored {int(score)} "
                               f"holds LSNs {first}-{first + len(records) - 1}, after LSN "
                               f"{'?' if expect is None else expect - 1}")
        return first, records, journal_format

    @_unavailable("reading the journal's quarantine")
    def _quarantined(self, score: int) -> bool:
        """Whether an operator moved the batch ending at LSN `score` into the quarantine
        (README, "Corruption"): the gap it leaves is accepted."""
        return self.r.zcount(f"{self.key}:quarantine", score, score) > 0

    @_unavailable("reading the journal")
    def _page(self, low: str) -> list:
        return self.r.zrangebyscore(self.key, low, "+inf", start=0, num=REPLAY_PAGE,
                                    withscores=True)


class RedisJournal(RedisReader):
    def __init__(self, client: redis.Redis, key: str, policy: str):
        super().__init__(client, key)
        self.policy = policy
        self.fence = f"{key}:fenced"
        self.fenced = False
        with self.r.pipeline(transaction=False) as pipe:
            pipe.get(f"{key}:last")
            pipe.get(self.fence)
            last, fenced = pipe.execute()
        if fenced is not None:
            raise JournalFenced.of(self.key)
        self.last_lsn = int(last or 0)
        if policy == "fsync":
            try:
                setting = self.r.config_get("appendfsync").get("appendfsync")
                aof = self.r.config_get("appendonly").get("appendonly")
            except redis.exceptions.ResponseError as exc:  # NOPERM, or CONFIG renamed away
                _warn_unchecked(self.r, exc)
                return
            if aof != "yes" or setting != "always":
                log.warning("journal %s: policy fsync, but the Redis server runs appendonly=%s "
                            "appendfsync=%s; acknowledged events survive a Redis crash only "
                            "with appendonly yes and appendfsync always", key, aof, setting)

    unsynced = False  # each append is one MULTI/EXEC, durable per the server's appendfsync

    def sync(self) -> None:
        pass

    @_unavailable("appending to the journal")
    def append(self, records: list[Any], sync: bool = True) -> int:
        if self.fenced:
            raise JournalFenced.of(self.key)
        if not records or self.policy == "off":
            return self.last_lsn  # no LSN taken for what is not written (journal.py)
        first, last = self.last_lsn + 1, self.last_lsn + len(records)
        batch = pack_batch(first, records)
        check_frame(len(batch), first, len(records))  # the same limit as a directory's
        with self.r.pipeline(transaction=True) as tx:
            tx.zadd(self.key, {batch: last})
            tx.set(f"{self.key}:last", last)
            tx.get(self.fence)
            fenced = tx.execute()[-1]
        if fenced is not None:  # set before this batch: it is not acknowledged
            self.fenced = True
            raise JournalFenced.of(self.key)
        self.last_lsn = last
        return last

    @_unavailable("reading the journal's fence")
    def check_fence(self) -> None:
        if self.fenced or self.r.get(self.fence) is not None:
            self.fenced = True
            raise JournalFenced.of(self.key)

    @_unavailable("taking back a batch")
    def retract(self, after_lsn: int) -> bool:
        """Take back the last batch, appended after `after_lsn` (journal.py's `retract`; a
        batch here is durable as soon as it is written, so it is always taken back)."""
        if self.last_lsn == after_lsn:
            return True
        with self.r.pipeline(transaction=True) as tx:
            tx.zremrangebyscore(self.key, self.last_lsn, self.last_lsn)
            tx.set(f"{self.key}:last", after_lsn)
            tx.execute()
        self.last_lsn = after_lsn
        return True

    @_unavailable("truncating the journal")
    def truncate(self, upto_lsn: int) -> int:
        return self.r.zremrangebyscore(self.key, "-inf", upto_lsn)

    def compact(self, drop: Callable[[Any], bool], decode: Decode | None = None) -> int:
        """Page by page (REPLAY_PAGE batches, by score), so a long journal never needs one
        exchange that outlasts the socket timeout. A rewritten batch keeps its score, and the
        next page starts past it."""
        dropped, low = 0, "-inf"
        while True:
            page = self._page(low)
            for member, score in page:
                dropped += self._compact_batch(member, score, drop, decode)
            if len(page) < REPLAY_PAGE:
                return dropped
            low = f"({int(page[-1][1])}"

    @_unavailable("compacting the journal")
    def _compact_batch(self, member: bytes, score: float, drop: Callable[[Any], bool],
                       decode: Decode | None) -> int:
        first, records, journal_format = self._unpack(member, score, None)
        kept = [None if r is None or drop(r if decode is None else
                                           decode(r, journal_format)) else r
                for r in records]
        gone = sum(1 for r in kept if r is None) - sum(1 for r in records if r is None)
        if gone:
            with self.r.pipeline(transaction=True) as tx:
                tx.zrem(self.key, member)
                tx.zadd(self.key, {pack_batch(first, kept, journal_format): score})
                tx.execute()
        return gone

    def close(self) -> None:
        pass


def _warn_unchecked(client: redis.Redis, exc: Exception) -> None:
    kwargs = client.connection_pool.connection_kwargs
    server = (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("username"))
    if server in _unchecked:
        return
    _unchecked.add(server)
    log.warning("the Redis server refused CONFIG GET (%s), so Kairos could not check its "
                "durability settings: with the journal policy fsync, acknowledged events "
                "survive a Redis crash only if it runs appendonly yes and appendfsync always",
                exc)


TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_PARAMETERS = (*TLS_FILES, "ssl_cert_reqs")


def _check_parameters(url: str, scheme: str, query: dict[str, list[str]]) -> None:
    """Every parameter known, given once, TLS ones only with rediss://, files present."""
    for name, values in query.items():
        where = f"store {redact(url)}: parameter {name!r}"
        if name not in ("password", *TLS_PARAMETERS):
            known = ", ".join(("prefix", "password", *TLS_PARAMETERS))
            raise ValueError(f"{where} is unknown (known: {known})")
        if len(values) != 1:
            raise ValueError(f"{where} is given {len(values)} times")
        if name in TLS_PARAMETERS and scheme != "rediss":
            raise ValueError(f"{where} needs TLS: use rediss://")
        if name in TLS_FILES and not os.access(values[0], os.R_OK):
            raise ValueError(f"{where}: {values[0]!r} is not a readable file on this node")
        if name == "ssl_cert_reqs" and values[0] not in ("none", "optional", "required"):
            raise ValueError(f"{where} must be none, optional or required")
    if query.get("ssl_cert_reqs") == ["none"]:
        log.warning("store %s: TLS without verifying the server's certificate "
                    "(ssl_cert_reqs=none)", redact(url))


class RedisLog:
    """A decision log (decision_logs.py) as a sorted set: each member is msgpack of
    `[customer id, record, time]` (entries that differ only in time stay apart), scored by
    the time it was logged, written with its size in one
    MULTI/EXEC. Trims and erasures remove exact members (ZREM), so they never race an append;
    they read the set in pages of REPLAY_PAGE entries."""

    def __init__(self, client: redis.Redis, prefix: str, name: str):
        self.r = client
        self.names = f"{prefix}:d"
        self.name = name
        self.key = f"{prefix}:d:{name}"

    @_unavailable("appending to a decision log")
    def append(self, entries: list[Entry]) -> None:
        members = {msgpack.packb([c, data, t], use_bin_type=True): t for t, c, data in entries}
        with self.r.pipeline(transaction=True) as tx:
            tx.zadd(self.key, members)
            tx.incrby(f"{self.key}:bytes", sum(map(entry_size, entries)))
            tx.sadd(self.names, self.name)
            tx.execute()

    def read(self, since: float, until: float) -> Iterator[Entry]:
        """In pages by score; the members at a page's last score are asked for again with
        the next page and skipped (a round's entries share their time). A generator: its
        pages' errors are mapped here, not where it is created."""
        low, seen = since, set()
        try:
            while True:
                want = REPLAY_PAGE + len(seen)
                page = self.r.zrangebyscore(self.key, low, until, start=0, num=want,
                                            withscores=True)
                for member, score in page:
                    if not (score == low and member in seen):
                        customer_id, data, _ = msgpack.unpackb(member, raw=False)
                        yield score, customer_id, data
                if len(page) < want:
                    return
                last = page[-1][1]
                seen = {m for m, s in page if s == last} | (seen if last == low else set())
                low = last
        except ERRORS as exc:
            raise StoreUnavailable(f"redis: reading a decision log: {exc}") from exc

    @_unavailable("trimming a decision log")
    def trim(self, before: float, max_bytes: int, orphan: bool = False) -> int:
        """(decision_logs.py) An `orphan` left empty leaves the names of the logs."""
        dropped = 0
        while True:
            old = self.r.zrangebyscore(self.key, "-inf", f"({before!r}", start=0,
                                       num=REPLAY_PAGE)
            if not old:
                break
            dropped += self._remove(old)
        excess = self.size() - max_bytes
        while excess > 0:
            oldest, taken = self.r.zrange(self.key, 0, REPLAY_PAGE - 1), []
            if not oldest:
                break
            for member in oldest:
                taken.append(member)
                excess -= _member_size(member)
                if excess <= 0:
                    break
            dropped += self._remove(taken)
        if orphan:
            with self.r.pipeline(transaction=True) as tx, \
                    contextlib.suppress(redis.WatchError):
                tx.watch(self.key)  # an append meanwhile (its name back in use) keeps the log
                if not tx.zcard(self.key):
                    tx.multi()
                    tx.delete(self.key, f"{self.key}:bytes")
                    tx.srem(self.names, self.name)
                    tx.execute()
        return dropped

    @_unavailable("erasing from a decision log")
    def erase(self, customer_ids: set[str]) -> int:
        gone = [member for member, _ in self.r.zscan_iter(self.key, count=REPLAY_PAGE)
                if msgpack.unpackb(member, raw=False)[0] in customer_ids]
        return sum(self._remove(gone[k:k + REPLAY_PAGE])
                   for k in range(0, len(gone), REPLAY_PAGE))

    def _remove(self, members: list[bytes]) -> int:
        with self.r.pipeline(transaction=True) as tx:
            tx.zrem(self.key, *members)
            tx.decrby(f"{self.key}:bytes", sum(map(_member_size, members)))
            tx.execute()
        return len(members)

    @_unavailable("sizing a decision log")
    def size(self) -> int:
        return int(self.r.get(f"{self.key}:bytes") or 0)


def _member_size(member: bytes) -> int:
    customer_id, data, _ = msgpack.unpackb(member, raw=False)
    return entry_size((0.0, customer_id, data))


class RedisStore:
    shared = True

    def __init__(self, url: str):
        parsed = urlparse(url)
        if "@" in parsed.path + parsed.query + parsed.fragment:  # credentials cut short
            raise ValueError(f"store {redact(url)}: not a valid Redis URL (a password holding "
                             f"'/', '?' or '#' must be percent-encoded)")
        query = parse_qs(parsed.query, keep_blank_values=True)
        prefixes = query.pop("prefix", ["kairos"])
        if len(prefixes) != 1 or not prefixes[0]:
            raise ValueError(f"store {redact(url)}: parameter 'prefix' must be given once, "
                             f"not empty")
        self.prefix = prefixes[0]
        _check_parameters(url, parsed.scheme, query)
        self.url = url
        try:
            self.r = redis.Redis.from_url(
                urlunparse(parsed._replace(query=urlencode(query, doseq=True))),
                socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        except ValueError:  # its text may quote the password ("as 'secret'")
            raise ValueError(f"store {redact(url)}: not a valid Redis URL") from None

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r})"

    @_unavailable("writing a customer")
    def put(self, partition: int, customer_id: str, blob: bytes) -> None:
        self.r.hset(f"{self.prefix}:c:{partition}", customer_id, blob)

    @_unavailable("reading a customer")
    def get(self, partition: int, customer_id: str) -> bytes | None:
        return self.r.hget(f"{self.prefix}:c:{partition}", customer_id)

    @_unavailable("deleting a customer")
    def delete(self, partition: int, customer_id: str) -> None:
        self.r.hdel(f"{self.prefix}:c:{partition}", customer_id)

    @_unavailable("moving a partition")
    def take_partition(self, partition: int) -> dict[str, bytes]:
        key = f"{self.prefix}:c:{partition}"
        with self.r.pipeline(transaction=True) as tx:
            tx.hgetall(key)
            tx.delete(key)
            homes, _ = tx.execute()
        return {k.decode(): v for k, v in homes.items()}

    @_unavailable("counting customers")
    def count(self, partitions: Iterable[int]) -> int:
        with self.r.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hlen(f"{self.prefix}:c:{p}")
            return sum(pipe.execute())

    @_unavailable("writing snapshots")
    def put_snapshots(self, snapshots: dict[int, bytes], unless_fenced: str | None = None
                      ) -> None:
        """In pipelines of at most PIPELINE_BYTES, so no single exchange outlasts the socket
        timeout (each snapshot stands alone: a partly written set is still consistent). With
        `unless_fenced`, each under WATCH of that journal's fence: a fence set before its
        EXEC leaves it unwritten (JournalFenced)."""
        pending, size = {}, 0
        for p, blob in snapshots.items():
            pending[f"{self.prefix}:s:{p}"] = blob
            size += len(blob)
            if size >= PIPELINE_BYTES:
                self._mset(pending, unless_fenced)
                pending, size = {}, 0
        if pending:
            self._mset(pending, unless_fenced)

    def _mset(self, values: dict[str, bytes], unless_fenced: str | None) -> None:
        if unless_fenced is None:
            self.r.mset(values)
            return
        fence = f"{self.prefix}:j:{unless_fenced}:fenced"
        with self.r.pipeline(transaction=True) as tx:
            try:
                tx.watch(fence)
                if tx.get(fence) is None:
                    tx.multi()
                    tx.mset(values)
                    tx.execute()
                    return
            except redis.exceptions.WatchError:
                pass  # the fence came between the check and the write
        raise JournalFenced.of(unless_fenced)

    @_unavailable("reading a snapshot")
    def get_snapshot(self, partition: int) -> bytes | None:
        return self.r.get(f"{self.prefix}:s:{partition}")

    @_unavailable("opening a journal")
    def journal(self, name: str, policy: str = "fsync") -> RedisJournal:
        return RedisJournal(self.r, f"{self.prefix}:j:{name}", policy)

    def read_journal(self, name: str) -> RedisReader:
        return RedisReader(self.r, f"{self.prefix}:j:{name}")

    @_unavailable("fencing a journal")
    def fence_journal(self, name: str) -> None:
        self.r.set(f"{self.prefix}:j:{name}:fenced", 1)

    @_unavailable("dropping a journal")
    def drop_journal(self, name: str) -> None:
        """The journal's keys but its fence, which outlives it (store.py)."""
        key = f"{self.prefix}:j:{name}"
        self.r.delete(key, f"{key}:last", f"{key}:quarantine")

    @_unavailable("writing meta")
    def put_meta(self, key: str, blob: bytes) -> None:
        self.r.set(f"{self.prefix}:m:{key}", blob)

    def decision_log(self, name: str) -> RedisLog:
        return RedisLog(self.r, self.prefix, name)

    @_unavailable("listing decision logs")
    def decision_logs(self) -> list[str]:
        return sorted(n.decode() for n in self.r.smembers(f"{self.prefix}:d"))

    @_unavailable("reading meta")
    def get_meta(self, key: str) -> bytes | None:
        return self.r.get(f"{self.prefix}:m:{key}")
