"""RedisStore: the store on a real Redis server, so any node can recover any partition.

Keys, under a prefix (default "kairos", `?prefix=` in the URL) so clusters can share a server:

    <prefix>:c:<partition>       hash: customer id -> home blob
    <prefix>:s:<partition>       string: the partition's snapshot (one past 192 MiB: in
                                 chunks, redis_snapshots.py)
    <prefix>:s:<partition>:lsn   string: msgpack [journal, LSN] of its newest one (store.py)
    <prefix>:j:<shard>           sorted set: journal batches, scored by their last LSN
    <prefix>:j:<shard>:last      string: the journal's last LSN (survives truncation)
    <prefix>:j:<shard>:quarantine  sorted set: damaged batches an operator moved aside
    <prefix>:j:<shard>:gaps      sorted set: their scores, the gaps replay accepts
    <prefix>:j:<shard>:trimmed   string: the LSN truncation reached (truncation_marks.py)
    <prefix>:j:<shard>:fenced    string: another shard took the journal's partitions over
    <prefix>:j:<shard>:owner     string: the shard's incarnation that writes it (store.py)
    <prefix>:m:<key>             string: meta (one past 192 MiB: in chunks, redis_chunks.py)
    <prefix>:d:<shard>           sorted set: the shard's decision log, entries scored by time
    <prefix>:d:<shard>:bytes     string: the log's size, as decision_logs.py counts it
    <prefix>:d                   set: the names of the decision logs
    <prefix>:wait                never left: set and deleted at once, a write to WAIT for
                                 (redis_log.py)
    <prefix>:owner               string: the lease of the cluster that holds the store (claim)

A journal is a sorted set of batches (redis_journal.py). With KAIROS_REDIS_REPLICAS, each
write Kairos relies on (journal, fence, owner, homes, snapshots, meta, the lease, the decision
log's appends, trims and erasures) is WAITed for (redis_replicas.py): a failover then neither
loses the log's acknowledged entries nor brings back ones erased. The log's writer runs on its
own thread (shard/decisionlog.py), which a WAIT holds, never a round.

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
import itertools
import logging
import os
import socket
from typing import Callable, Iterable, Iterator, TypeVar
from urllib.parse import parse_qs, urlencode, urlparse

import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kairos.cluster.settings import REDIS_TIMEOUT_S
from kairos.cluster.storage import (lsn_records, redis_aof, redis_chunks, redis_replicas,
                                    redis_snapshots)
from kairos.cluster.storage.ownership import LEASE_S
from kairos.cluster.storage.redis_config import check_parameters
from kairos.cluster.storage.redis_errors import unavailable
from kairos.cluster.storage.redis_journal import (SETTLE_TRIES, RedisJournal, RedisReader,
                                                  guarded, owns)
from kairos.cluster.storage.redis_log import Pass, RedisLog
from kairos.cluster.storage.store import (JournalDisowned, JournalFenced, StoreCorrupt,
                                         StoreInUse, StoreUnavailable, redact)

log = logging.getLogger("kairos.store")
PIPELINE_BYTES = 16 << 20  # a write to Redis ends with the item that brings its data to this
_claims = itertools.count()  # in each lease: a renewal changes it, which its watchers see
T = TypeVar("T")
# the file holding the store's password, read by each process that opens the store
# (providers.with_password_file): a mounted Secret on Kubernetes, on every Ray node
STORE_PASSWORD_FILE_ENV = "KAIROS_STORE_PASSWORD_FILE"


def _lease(key: str, held: bytes) -> tuple[str, str]:
    """(owner, holder) of the lease `claim` wrote at `key`; StoreCorrupt for what does not
    decode as one."""
    try:
        owner, holder, _ = msgpack.unpackb(held, raw=False)
        if isinstance(owner, str) and isinstance(holder, str):
            return owner, holder
        why = "no owner and holder in it"
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        why = str(exc) or type(exc).__name__
    raise StoreCorrupt(f"redis: the lease at {key} does not decode ({why}): not what a Kairos "
                       f"controller writes; once an operator has looked, deleting the key lets "
                       f"a cluster claim the store")


def _chunks(items: Iterable[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """`items` in lists that end once their `size` reaches PIPELINE_BYTES (or with the last
    item), so that no single exchange outlasts the socket timeout; read as lists are taken. An
    item past PIPELINE_BYTES is a list of its own: a snapshot up to ONE_VALUE_BYTES after the
    small ones of a list made a write past a replica's output buffer limit (redis_chunks.py)."""
    chunk, total = [], 0
    for item in items:
        if size(item) > PIPELINE_BYTES and chunk:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size(item)
        if total >= PIPELINE_BYTES:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def _handshake(connection: redis.connection.AbstractConnection) -> None:
    """redis-py's own (AUTH or HELLO, then SELECT), on each new connection: the server's
    refusal of its credentials (NOAUTH, WRONGPASS, HELLO unauthenticated) says where the
    password comes from, on which node, since a node without the file opens the store with
    none. The server's words quote no password."""
    try:
        connection.on_connect()
    except redis.exceptions.AuthenticationError as exc:
        path = os.environ.get(STORE_PASSWORD_FILE_ENV)
        used = f"{STORE_PASSWORD_FILE_ENV} names {path}" if path else \
            f"{STORE_PASSWORD_FILE_ENV} is not set"
        raise redis.exceptions.AuthenticationError(
            f"the Redis server refused this process's credentials ({exc}); on this node "
            f"({socket.gethostname()}) {used}: every process that opens the store reads its "
            f"password from the file {STORE_PASSWORD_FILE_ENV} names, which must be set, to "
            f"a file holding the server's password, on every Ray node (the shards open the "
            f"store on the node they run on)") from exc


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
        check_parameters(url, parsed.scheme, query)
        self.url = url
        self._owners: dict[str, str] = {}  # journal -> the incarnation written as (own_journal)
        self._erasures = Pass()
        try:
            # the query text alone replaced: urlunparse would turn unix:///path into unix:/path;
            # no retries, whatever redis-py's default: a command whose reply was lost may have
            # run, and a retry would run it again (a DECRBY twice, a transaction without the
            # WATCH its EXEC consumed): each caller settles a lost reply as it must
            self.r = redis.Redis.from_url(
                url.partition("?")[0] + (f"?{urlencode(query, doseq=True)}" if query else ""),
                socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                redis_connect_func=_handshake, retry=Retry(NoBackoff(), 0))
        except ValueError:  # its text may quote the password ("as 'secret'")
            raise ValueError(f"store {redact(url)}: not a valid Redis URL") from None

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r})"

    def put(self, partition: int, customer_id: str, blob: bytes,
            unless_fenced: str | None = None) -> None:
        self.put_many([(partition, customer_id, blob)], unless_fenced)

    @unavailable("writing customers")
    def put_many(self, homes: Iterable[tuple[int, str, bytes]],
                 unless_fenced: str | None = None, lsn: int | None = None) -> None:
        """In transactions that end once they reach PIPELINE_BYTES (`_chunks`: the home that
        reaches it is the last, one past it alone), an HSET per partition."""
        for chunk in _chunks(homes, lambda home: len(home[2])):
            by_partition: dict[int, list[str | bytes]] = {}
            for partition, customer_id, blob in chunk:
                by_partition.setdefault(partition, []).extend((customer_id, blob))
            self._unless_fenced(unless_fenced, [("HSET", f"{self.prefix}:c:{p}", *fields)
                                                for p, fields in by_partition.items()])

    @unavailable("reading a customer")
    def get(self, partition: int, customer_id: str) -> bytes | None:
        return self.r.hget(f"{self.prefix}:c:{partition}", customer_id)

    @unavailable("reading customers")
    def get_many(self, partition: int, customer_ids: list[str]) -> list[bytes | None]:
        # HMGET needs a field
        return self.r.hmget(f"{self.prefix}:c:{partition}", customer_ids) if customer_ids else []

    def delete(self, partition: int, customer_id: str, unless_fenced: str | None = None
               ) -> None:
        self.delete_many([(partition, customer_id)], unless_fenced)

    @unavailable("deleting customers")
    def delete_many(self, homes: Iterable[tuple[int, str]], unless_fenced: str | None = None
                    ) -> None:
        """As `put_many`, an HDEL per partition."""
        for chunk in _chunks(homes, lambda home: len(home[1])):
            by_partition: dict[int, list[str]] = {}
            for partition, customer_id in chunk:
                by_partition.setdefault(partition, []).append(customer_id)
            self._unless_fenced(unless_fenced, [("HDEL", f"{self.prefix}:c:{p}", *ids)
                                                for p, ids in by_partition.items()])

    @unavailable("moving a partition")
    def take_partition(self, partition: int) -> dict[str, bytes]:
        key = f"{self.prefix}:c:{partition}"
        with self.r.pipeline(transaction=True) as tx:
            tx.hgetall(key)
            tx.delete(key)
            homes, _ = tx.execute()
        return {k.decode(): v for k, v in homes.items()}

    @unavailable("counting customers")
    def count(self, partitions: Iterable[int]) -> int:
        with self.r.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hlen(f"{self.prefix}:c:{p}")
            return sum(pipe.execute())

    @unavailable("writing snapshots")
    def put_snapshots(self, snapshots: dict[int, bytes], unless_fenced: str | None = None,
                      lsn: int | None = None) -> None:
        """In writes that end once they reach PIPELINE_BYTES (`_chunks`: the snapshot that
        reaches it is the last, one past it alone; each stands alone: a partly written set is
        still consistent), each switched in whole (redis_snapshots.py); with `unless_fenced`, under
        WATCH of that journal's fence and owner; with `lsn` too, of the partitions' `:lsn`
        keys, checked and written with them."""
        for chunk in _chunks(snapshots.items(), lambda snapshot: len(snapshot[1])):
            redis_snapshots.put(self.r, self.prefix, chunk, unless_fenced,
                                self._owners.get(unless_fenced), lsn)

    def _unless_fenced(self, journal: str | None, commands: list[tuple]) -> None:
        """`commands` sent in one exchange; with `journal` named, in a MULTI/EXEC under WATCH of
        its fence and owner, two round trips (redis_journal.py `guarded`): JournalFenced,
        nothing written, if the journal is fenced or another incarnation's than this store's
        (`own_journal`) before the EXEC."""
        if journal is None:
            with redis_replicas.pipeline(self.r, transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
            return
        guarded(self.r, f"{self.prefix}:j:{journal}", self._owners.get(journal), commands)

    @unavailable("reading a snapshot")
    def get_snapshot(self, partition: int) -> bytes | None:
        return redis_snapshots.get(self.r, self.prefix, partition)

    @unavailable("reading a snapshot's LSN")
    def snapshot_lsn(self, partition: int) -> tuple[str, int] | None:
        key = f"{self.prefix}:s:{partition}:lsn"
        value = self.r.get(key)
        record = lsn_records.unpacked(value)
        if value is not None and record is None:  # as none: lsn_records.py
            log.warning("%s does not hold msgpack [journal, LSN]: read as none (it was changed "
                        "outside Kairos); the partition's next snapshot writes it anew", key)
        return record

    @unavailable("claiming a journal")
    def own_journal(self, name: str, owner: str, claim: bool) -> None:
        key = f"{self.prefix}:j:{name}"
        if claim:
            redis_replicas.write(self.r, "SET", f"{key}:owner", owner)
        else:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.get(f"{key}:fenced")
                pipe.get(f"{key}:owner")
                fenced, stored = pipe.execute()
            if fenced is not None:  # the first reason: dropping a fenced journal took its owner
                raise JournalFenced.of(name)
            if not owns(owner, stored):
                raise JournalDisowned.of(name)
        self._owners[name] = owner

    @unavailable("opening a journal")
    def journal(self, name: str, policy: str = "fsync") -> RedisJournal:
        return RedisJournal(self.r, f"{self.prefix}:j:{name}", policy, self._owners.get(name))

    def read_journal(self, name: str) -> RedisReader:
        return RedisReader(self.r, f"{self.prefix}:j:{name}")

    @unavailable("fencing a journal")
    def fence_journal(self, name: str) -> None:
        redis_replicas.write(self.r, "SET", f"{self.prefix}:j:{name}:fenced", 1)

    @unavailable("dropping a journal")
    def drop_journal(self, name: str) -> None:
        """The journal's keys but its fence, which outlives it (store.py)."""
        key = f"{self.prefix}:j:{name}"
        redis_replicas.write(self.r, "DEL", key, f"{key}:last", f"{key}:quarantine",
                             f"{key}:gaps", f"{key}:trimmed", f"{key}:owner")

    @unavailable("writing meta")
    def put_meta(self, key: str, blob: bytes) -> None:
        redis_chunks.put(self.r, redis_chunks.Value(self.prefix, "m", key), blob)

    def decision_log(self, name: str) -> RedisLog:
        return RedisLog(self.r, self.prefix, name, self._erasures)

    @unavailable("listing decision logs")
    def decision_logs(self) -> list[str]:
        """The names; an erasure pass lists them first, so this begins one (redis_log.py)."""
        self._erasures.begin()
        return sorted(n.decode() for n in self.r.smembers(f"{self.prefix}:d"))

    @unavailable("reading meta")
    def get_meta(self, key: str) -> bytes | None:
        return redis_chunks.get(self.r, redis_chunks.Value(self.prefix, "m", key))

    def erased(self) -> None:
        redis_aof.rewrite(self.r)  # redis_aof.py: the AOF forgets what was erased

    @unavailable("claiming the store")
    def claim(self, owner: str, holder: str) -> None:
        """A lease: `<prefix>:owner`, msgpack of the owner, `holder` and a count that every
        claim changes, set for LEASE_S (ownership.py renews it) under WATCH, unless another
        owner's is there (StoreInUse, with that lease). Looked at again while the key
        changes before the EXEC (claimed, renewed, released or run out meanwhile), up to
        SETTLE_TRIES times, then StoreUnavailable: Kairos writes it once every RENEW_S or
        so, so a key that changed within each of those round trips has a writer that is
        not a controller's, for an operator to see (a renewal tries again RENEW_S later).

        A lease that does not decode is StoreCorrupt, and nothing is written: it may be
        another cluster's, damaged, and set over it two clusters would write to one store.
        One damaged in place runs out within LEASE_S, and a claim then takes the store; one
        written outside Kairos without an expiry stays until an operator deletes the key."""
        key = f"{self.prefix}:owner"
        lease = msgpack.packb([owner, holder, next(_claims)])
        for _ in range(SETTLE_TRIES):
            with redis_replicas.pipeline(self.r) as tx, contextlib.suppress(redis.WatchError):
                tx.watch(key)
                held = tx.get(key)
                if held is not None:
                    held_by, held_as = _lease(key, held)
                    if held_by != owner:
                        raise StoreInUse.of(self.url, held_as, held)
                tx.multi()
                tx.set(key, lease, px=round(LEASE_S * 1000))
                tx.execute()
                return
        raise StoreUnavailable(f"redis: claiming the store: {key} kept changing (claimed, "
                               f"renewed or released by another) during each of "
                               f"{SETTLE_TRIES} tries")

    @unavailable("releasing the store")
    def release(self, owner: str) -> None:
        """Delete the lease if it is `owner`'s; StoreCorrupt for one that does not decode
        (`claim`), left as it is."""
        key = f"{self.prefix}:owner"
        with redis_replicas.pipeline(self.r) as tx, contextlib.suppress(redis.WatchError):
            tx.watch(key)
            held = tx.get(key)
            if held is not None and _lease(key, held)[0] == owner:
                tx.multi()
                tx.delete(key)
                tx.execute()

    @unavailable("reading the claim on the store")
    def claimed_by(self) -> tuple[str, str] | None:
        """The lease `claim` set, while it has not run out: a GET, nothing written.
        StoreCorrupt for one that does not decode (`claim`)."""
        key = f"{self.prefix}:owner"
        held = self.r.get(key)
        return None if held is None else _lease(key, held)
