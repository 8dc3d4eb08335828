"""Writes that a Redis server's replicas hold before Kairos relies on them (settings.py,
KAIROS_REDIS_REPLICAS).

Without it, "acknowledged" means "in the primary's AOF": a failover to a replica loses what
the replica had not received, a fence among it (two writers on one journal). With
REDIS_REPLICAS > 0 each write Kairos acknowledges or relies on is followed, on its own
connection, by `WAIT <replicas> <timeout>` (WAIT counts the writes of the connection it is sent
on; a replica's acknowledgement of an offset covers every write before it, any connection's):
the journal's and every guarded write's MULTI/EXEC (redis_journal.py `_commit`), and the
store's other writes through `pipeline` or `write`. Fewer replicas acknowledging within
REDIS_REPLICAS_WAIT_S is ReplicasBehind (StoreUnavailable): the write ran on the primary but
is not acknowledged (the journal takes its batch back: redis_journal.py `_settled`). With 0
nothing is sent and these are redis-py's own calls.

Plain WAIT says the replicas received the write, not that they fsynced it: a replica that
crashes with the primary may still lose it (Redis 7.2's WAITAOF would say that, too). A journal
opened on a server that reports fewer connected replicas than asked for (INFO replication) is
warned of once while that lasts, not refused: replicas reconnect, and until then every write
fails with ReplicasBehind, which says why.
"""
from __future__ import annotations

import logging
from typing import Any

import redis

from kairos.cluster.settings import REDIS_REPLICAS, REDIS_REPLICAS_WAIT_S
from kairos.cluster.storage.store import StoreUnavailable

log = logging.getLogger("kairos.store")
REPLICAS = REDIS_REPLICAS
WAIT_MS = max(1, round(REDIS_REPLICAS_WAIT_S * 1000))  # WAIT's 0 would wait for ever
_short: set[tuple] = set()  # (host, port, path) warned of running fewer replicas than asked


class ReplicasBehind(StoreUnavailable):
    """A write ran on the primary, but fewer replicas than KAIROS_REDIS_REPLICAS said they
    hold it in time: it is not acknowledged (a failover may lose it, or keep it)."""


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
        raise ReplicasBehind(f"redis: the server refused WAIT ({exc}), which "
                             f"KAIROS_REDIS_REPLICAS={REPLICAS} sends after each write: allow "
                             f"the store's user +wait; the write is not acknowledged") from exc
    if acked < REPLICAS:
        raise ReplicasBehind(f"redis: {acked} of the {REPLICAS} replicas KAIROS_REDIS_REPLICAS "
                             f"asks for acknowledged a write within {WAIT_MS} ms "
                             f"(KAIROS_REDIS_REPLICAS_WAIT_S): it is not acknowledged")


class _Waiting(redis.client.Pipeline):
    """A pipeline whose every execution (a transaction, or plain commands) is followed by
    `wait` on the connection it ran on, before the connection goes back to the pool."""

    def _execute_transaction(self, connection, *args) -> list:
        return _waited(connection, super()._execute_transaction(connection, *args))

    def _execute_pipeline(self, connection, *args) -> list:
        return _waited(connection, super()._execute_pipeline(connection, *args))


def _waited(connection: redis.connection.AbstractConnection, replies: list) -> list:
    wait(connection)
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
