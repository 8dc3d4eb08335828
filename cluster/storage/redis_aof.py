"""Erasure reaching a Redis server's append-only file (RedisStore.erased).

ForgetCustomer's erasure rewrites the journal's batches and the partitions' snapshots, and
deletes homes and decision-log entries; on Redis these are commands, and the AOF keeps every
command the server ran (a ZREM and HDEL name what they remove, a snapshot written over keeps
its old value) until the server rewrites it from its data. So once an erasure is done the
store asks for BGREWRITEAOF (`rewrite`), best effort and throttled per server: at most one
every REWRITE_EVERY_S; one asked for sooner starts when that time is up, standing for every
erasure before it (a burst of forgets starts one or two). A rewrite already under way may have
forked before the erasure, so it is asked for again (the same way). A server without an AOF
(appendonly no) has nothing to rewrite. Asked by durability.py at the end of `erase` and
after the snapshot that stops naming a customer erased from the logs, and by
`RedisLog.erase`. A refusal (an ACL user without +bgrewriteaof, a renamed command) is warned
about once per server and user, and asked again at the next erasure; an unreachable server
(which the store's own calls report) is logged at INFO. A server's rewriter sends with the
client of the store that asked last, so a store opened with a rotated password replaces one
whose password the server no longer takes. A rewrite waiting out the throttle is a daemon
timer in this process: a process that exits first never sends it (the next erasure's, or
the server's own rewrite, drops what it would have).
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time

import redis

log = logging.getLogger("kairos.store")
REWRITE_EVERY_S = 60.0
_rewriters: dict[tuple, "_Rewriter"] = {}  # (host, port, path, user) -> its rewriter
_lock = threading.Lock()


def rewrite(client: redis.Redis) -> None:
    """Have the server behind `client` rewrite its AOF after the erasure just done (the
    module's text); it returns at once (the BGREWRITEAOF is sent from a thread of its own)."""
    kwargs = client.connection_pool.connection_kwargs
    server = tuple(kwargs.get(k) for k in ("host", "port", "path", "username"))
    with _lock:
        rewriter = _rewriters.setdefault(server, _Rewriter(client))
    rewriter.ask(client)


class _Rewriter:
    def __init__(self, client: redis.Redis):
        self.r = client  # the latest asker's: a rotated password is the one that works
        self._lock = threading.Lock()
        self._started = -math.inf  # when the last BGREWRITEAOF was sent (monotonic)
        self._pending: threading.Timer | None = None  # one to send, after every erasure asked
        self._warned = False  # a refusal logged (once: each erasure still asks)

    def ask(self, client: redis.Redis) -> None:
        with self._lock:
            self.r = client
            if self._pending is not None:
                return  # the one pending is sent after this erasure: it covers it
            wait = self._started + REWRITE_EVERY_S - time.monotonic()
            self._pending = threading.Timer(max(wait, 0.0), self._send)
            self._pending.daemon = True
            self._pending.start()

    def _send(self) -> None:
        with self._lock:
            self._pending, self._started, r = None, time.monotonic(), self.r
        try:
            with contextlib.suppress(redis.exceptions.ResponseError):  # INFO refused: try
                if r.info("persistence").get("aof_enabled") == 0:
                    return
            r.bgrewriteaof()
        except redis.exceptions.ResponseError as exc:
            if "in progress" in str(exc):  # it may have forked before the erasure
                self.ask(self.r)  # the latest asker's client
            elif not self._warned:
                self._warned = True
                log.warning("the Redis server refused BGREWRITEAOF (%s): its append-only file "
                            "keeps what ForgetCustomer erased until it is rewritten; allow the "
                            "store's user +bgrewriteaof, or rewrite it after forgets", exc)
        except redis.exceptions.RedisError as exc:  # unreachable: the store's own calls say so
            log.info("asking the Redis server to rewrite its append-only file after an "
                     "erasure failed (%s): what was erased stays in it until the next "
                     "erasure's rewrite, or the server's own", exc)
