"""A Redis store's configuration: its URL's parameters (`check_parameters`, redis_store.py),
and the server settings it depends on, read with CONFIG GET when a journal is opened for
writing (`check_server`, redis_journal.py), the first thing a shard's start or rebuild does:

- `maxmemory-policy` must be `noeviction`: under any other policy, memory pressure (the
  server's `maxmemory` reached, by Kairos's keys or anyone's) evicts keys, and a journal's
  fence, owner and last-LSN keys are keys like any other: a fenced journal whose fence was
  evicted took an append at LSN 1 from its old writer, which its heir never reads. With
  `noeviction` the server refuses writes instead (an OOM error: StoreUnavailable), and loses
  nothing. Anything else is refused (StoreUnavailable naming the setting), so the shard stays
  UNAVAILABLE, and tries again, until the operator sets it.
- with the journal policy "fsync", `appendonly yes` and `appendfsync always`: otherwise an
  acknowledged batch can be lost with the server; warned, not refused ("os" accepts less).

A server or ACL user that refuses CONFIG GET (managed Redis, `-config`), or a
Redis-compatible server that answers it with no value for a setting, is not an error: the
store warns once per server and user that it could not check, and what the operator must.
"""
from __future__ import annotations

import logging
import os

import redis

from kairos.cluster.storage.store import StoreUnavailable, redact

log = logging.getLogger("kairos.store")
_unchecked: set[tuple] = set()  # (host, port, path, user) whose settings were not checked
SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync")
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_PARAMETERS = (*TLS_FILES, "ssl_cert_reqs")


def check_parameters(url: str, scheme: str, query: dict[str, list[str]]) -> None:
    """Every parameter known, given once, TLS ones only with rediss://, files present."""
    for name, values in query.items():
        where = f"store {redact(url)}: parameter {name!r}"
        if name not in ("password", "db", *TLS_PARAMETERS):
            known = ", ".join(("prefix", "password", "db", *TLS_PARAMETERS))
            raise ValueError(f"{where} is unknown (known: {known})")
        if len(values) != 1:
            raise ValueError(f"{where} is given {len(values)} times")
        if name == "db" and (scheme != "unix" or not values[0].isdigit()):
            raise ValueError(f"{where}: a socket's (unix://) database, a number (redis:// and "
                             f"rediss:// name theirs after the host: /0)")
        if name in TLS_PARAMETERS and scheme != "rediss":
            raise ValueError(f"{where} needs TLS: use rediss://")
        if name in TLS_FILES and not os.access(values[0], os.R_OK):
            raise ValueError(f"{where}: {values[0]!r} is not a readable file on this node")
        if name == "ssl_cert_reqs" and values[0] not in ("none", "optional", "required"):
            raise ValueError(f"{where} must be none, optional or required")
    if query.get("ssl_cert_reqs") == ["none"]:
        log.warning("store %s: TLS without verifying the server's certificate "
                    "(ssl_cert_reqs=none)", redact(url))


def check_server(client: redis.Redis, key: str, policy: str) -> None:
    """Read the settings (one round trip) for the journal `key` opened with `policy`:
    StoreUnavailable unless `maxmemory-policy` is `noeviction` (or not given: warned); a
    warning for an "fsync" journal on a server that may lose acknowledged writes (the
    module's text)."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for name in SETTINGS:
                pipe.config_get(name)
            values = [reply.get(name) for name, reply in zip(SETTINGS, pipe.execute())]
    except redis.exceptions.ResponseError as exc:  # NOPERM, or CONFIG renamed away
        _warn_unchecked(client, f"refused CONFIG GET ({exc})")
        return
    missing = [name for name, value in zip(SETTINGS, values) if value is None]
    if missing:  # a Redis-compatible server without them: unchecked, as if refused
        _warn_unchecked(client, f"gave CONFIG GET no value for {', '.join(missing)}")
    eviction, aof, fsync = values
    if eviction not in ("noeviction", None):
        raise StoreUnavailable(
            f"journal {key}: the Redis server runs maxmemory-policy {eviction}, which evicts "
            f"keys under memory pressure (a journal's fence and owner among them); Kairos "
            f"writes to it only with maxmemory-policy noeviction (CONFIG SET maxmemory-policy "
            f"noeviction, and in its redis.conf)")
    if policy == "fsync" and None not in (aof, fsync) and (aof != "yes" or fsync != "always"):
        log.warning("journal %s: policy fsync, but the Redis server runs appendonly=%s "
                    "appendfsync=%s; acknowledged events survive a Redis crash only "
                    "with appendonly yes and appendfsync always", key, aof, fsync)


def _warn_unchecked(client: redis.Redis, why: str) -> None:
    kwargs = client.connection_pool.connection_kwargs
    server = (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("username"))
    if server in _unchecked:
        return
    _unchecked.add(server)
    log.warning("the Redis server %s, so Kairos could not check its "
                "settings: the operator must see that it runs maxmemory-policy noeviction "
                "(any other policy may evict a journal's fence and owner under memory "
                "pressure), and, for the journal policy fsync, appendonly yes and appendfsync "
                "always (acknowledged events survive a Redis crash only with these)", why)
