"""Writes that a Redis server's replicas hold before Kairos relies on them (settings.py,
KAIROS_REDIS_REPLICAS).

Without it, "acknowledged" means "in the primary's AOF": a failover to a replica loses what
the replica had not received, a fence among it (two writers on one journal). With
REDIS_REPLICAS > 0 each write Kairos acknowledges or relies on is followed, on its own
connection, by `WAIT <replicas> <timeout>`: the journal's and every guarded write's MULTI/EXEC
(redis_journal.py `_commit`), and the store's other writes through `pipeline` or `write`.
WAIT waits for the replication offset its connection last wrote at (Redis 7.0 and later: that
connection's own writes; on 6.2, which Kairos installs, the server's offset when that
connection's last command ran, so every write before it, any connection's; a replica's
acknowledgement of an offset covers every write before it either way). Fewer replicas
acknowledging within REDIS_REPLICAS_WAIT_S is ReplicasBehind (StoreUnavailable, naming the
write: redis_errors.py): the write ran on the primary but is not acknowledged (the journal
takes its batch back: redis_journal.py `_settled`). With 0 nothing is sent and these are
redis-py's own calls.

A pipeline's WAIT whose reply is lost (the connection dropped, or timed out) is ReplicasBehind
too, never a ConnectionError: it runs inside redis-py's retry of the pipeline's execution, which
would send a transaction whose EXEC ran once more, without the WATCH that EXEC consumed (a
lease released or claimed over another cluster's, meta switched over a newer save's). The store's
client is built with no retries either (redis_store.py); this holds where a pool has some. The
journal's own connections (`_commit`) have no retry layer: a journal batch whose WAIT reply is
lost is settled as one whose reply was lost (redis_journal.py `_settled`).

Not acknowledged is not undone: a batch whose WAIT failed stays on the primary until the
journal takes it back, one more WAITed write, up to REDIS_REPLICAS_WAIT_S later. A shard that
fences the journal within that window (a takeover as the writer's round fails) replays the
batch, answered UNAVAILABLE, and a retry of its round sent to that heir applies it again
unless it carries an idempotency key (the window redis_journal.py's text names for a lost
reply, here as long as a WAIT).

Plain WAIT says the replicas received the write, not that they fsynced it: a replica that
crashes with the primary may still lose it (Redis 7.2's WAITAOF would say that, too). A journal
opened on a server that reports fewer connected replicas than asked for (INFO replication) is
warned of once while that lasts, not refused: replicas reconnect, and until then every write
fails with ReplicasBehind, which says why.

`pipeline` overrides two private methods of redis-py's Pipeline, checked at import where WAIT
is asked for (a renamed one would silently stop WAIT for most writes); pyproject.toml bounds
redis-py's version.
"""
from __future__ import annotations

import logging
from typing import Any

import redis

from kairos.cluster.settings import REDIS_REPLICAS, REDIS_REPLICAS_WAIT_S
from kairos.cluster.storage.redis_errors import ReplicasBehind

log = logging.getLogger("kairos.store")
REPLICAS = REDIS_REPLICAS
WAIT_MS = max(1, round(REDIS_REPLICAS_WAIT_S * 1000))  # WAIT's 0 would wait for ever
_short: set[tuple] = set()  # (host, port, path) warned of running fewer replicas than asked


def wait(connection: redis.connection.AbstractConnection) -> None:
    """After a write on `connection`: ReplicasBehind unless REPLICAS replicas hold it within
    WAIT_MS (nothing sent where REPLICAS is 0). Only after a write that ran: WAIT after one
    that did not waits on the connection's older writes, out to its timeout where a replica
    is down."""
    if not REPLICAS:
        return
    connection.send_command("WAIT", REPLICAS, WAIT_MS)
    try:
        acked = connection.read_response()
    except redis.exceptions.ResponseError as exc:  # NOPERM, or WAIT renamed away
        raise ReplicasBehind(f"the server refused WAIT ({exc}), which "
                             f"KAIROS_REDIS_REPLICAS={REPLICAS} sends after each write: allow "
                             f"the store's user +wait; the write is not acknowledged") from exc
    if acked < REPLICAS:
        raise ReplicasBehind(f"{acked} of the {REPLICAS} replicas KAIROS_REDIS_REPLICAS "
                             f"asks for acknowledged a write within {WAIT_MS} ms "
                             f"(KAIROS_REDIS_REPLICAS_WAIT_S): it is not acknowledged")


# redis-py's private Pipeline methods `_Waiting` overrides: were one renamed, most writes would
# go without WAIT and nothing would say so; so where WAIT is asked for, a redis-py without them
# is refused at import (where it is not, `_Waiting` is never used: every store opens as before)
_OVERRIDDEN = ("_execute_transaction", "_execute_pipeline")
_missing = [m for m in _OVERRIDDEN if not callable(getattr(redis.client.Pipeline, m, None))]
if _missing and REPLICAS:
    raise ImportError(f"redis-py {redis.__version__}'s Pipeline has no "
                      f"{', '.join(_missing)}, which Kairos overrides to WAIT after each write "
                      f"that KAIROS_REDIS_REPLICAS={REPLICAS} asks for (redis_replicas.py): use "
                      f"a redis-py that has them, or KAIROS_REDIS_REPLICAS=0")


class _Waiting(redis.client.Pipeline):
    """A pipeline whose every execution (a transaction, or plain commands) is followed by
    `wait` on the connection it ran on, before the connection goes back to the pool."""

    def _execute_transaction(self, connection, *args) -> list:
        return _waited(connection, super()._execute_transaction(connection, *args))

    def _execute_pipeline(self, connection, *args) -> list:
        return _waited(connection, super()._execute_pipeline(connection, *args))


def _waited(connection: redis.connection.AbstractConnection, replies: list) -> list:
    """`replies` once `wait` says the replicas hold what the execution wrote. A WAIT whose
    reply is lost is ReplicasBehind, which redis-py's retry of the execution lets through
    (the module's text)."""
    try:
        wait(connection)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        connection.disconnect()  # any reply not read
        raise ReplicasBehind(f"the reply of the WAIT KAIROS_REDIS_REPLICAS={REPLICAS} sends "
                             f"after each write was lost ({exc}): the write ran on the "
                             f"primary; it is not acknowledged") from exc
    return replies


def pipeline(client: redis.Redis, transaction: bool = True) -> redis.client.Pipeline:
    """`client.pipeline(transaction)` for writes: each `execute` followed by `wait` (reads in
    it, immediate ones under WATCH included, are sent as ever)."""
    if not REPLICAS:
        return client.pipeline(transaction=transaction)
    return _Waiting(client.connection_pool, client.response_callbacks, transaction, None)


def write(client: redis.Redis, *command: Any) -> Any:
    """One write command's reply, the command followed by `wait` on its connection."""
    if not REPLICAS:
        return client.execute_command(*command)
    with pipeline(client, transaction=False) as pipe:
        return pipe.execute_command(*command).execute()[0]


def check(client: redis.Redis) -> None:
    """Warn, once while it lasts, if the server reports fewer connected replicas than REPLICAS
    (the module's text). A server that refuses INFO is not checked: the writes' WAIT says."""
    if not REPLICAS:
        return
    kwargs = client.connection_pool.connection_kwargs
    server = tuple(kwargs.get(k) for k in ("host", "port", "path"))
    try:
        connected = int(client.info("replication").get("connected_slaves", 0))
    except redis.exceptions.ResponseError:
        return
    if connected >= REPLICAS:
        _short.discard(server)  # so that a later shortage is warned of again
    elif server not in _short:
        _short.add(server)
        log.warning("the Redis server reports %d connected replicas, KAIROS_REDIS_REPLICAS asks "
                    "for %d: every write fails (the store UNAVAILABLE) until enough replicas "
                    "are connected and acknowledge it", connected, REPLICAS)
