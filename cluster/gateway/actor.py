"""The gateway as a Ray actor, one per node: kairos.v1 over gRPC, and the sink shards push
watched decisions to.

All gateways are equal: each routes any customer through its own KairosClient, which batches
per shard and keeps each customer's order.

The actor is created with all it needs to serve (host, port, where its API keys and TLS files
are) and starts serving from its constructor, so when Ray restarts its process
(max_restarts=-1) it serves again, on the same port: a port of 0 binds a free one the first
time and the one bound before after a restart (kept in the node's Ray session directory).
Secrets never travel as task arguments: the actor reads the keys from a file or an environment
variable of its own process, and the TLS key from its file. `start()` waits until it serves and
answers the port.

Health (grpc.health.v1, what readiness probes and load balancers read) answers SERVING only
while the gateway can route: once its client has the controller's partition map and it has the
catalog (a gateway that starts while the controller has published no map yet would fail every
call), and while its owner wants it to (a shard's endpoint: while the shard says so). Once
drained or stopped it answers NOT_SERVING for good.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Callable, Sequence

import grpc
import ray

from kairos.core.decision import Decision

from kairos.cluster import pauses
from kairos.cluster.gateway.admission import Shedder
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import Tls, serve, set_health
from kairos.cluster.metrics import GatewayMetrics
from kairos.cluster.remembered import Remembered
from kairos.cluster.secret_files import check_secret_file
from kairos.cluster.settings import PAUSES_CHECK_S
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.ray_backend import Gone, RayBackend, sink_name

log = logging.getLogger("kairos.gateway")
ROUTABLE_CHECK_S = 0.05  # how often a gateway without a map yet looks whether it has one


def read_keys(keys_file: str | None, keys_env: str | None) -> str | None:
    """The API keys' text: from the file, else the environment variable (None: auth off).
    SecretFileError for a file others may read: each node's gateway checks the file on its
    own node, which the command line's check never saw."""
    if keys_file:
        check_secret_file(keys_file, "the API keys file (--keys)")
        with open(keys_file, encoding="utf-8") as f:
            return f.read()
    return os.environ.get(keys_env) if keys_env else None


class GatewayServer:
    """What the actor does, without Ray: serve on construction (within a running event loop),
    on `backend`, on the port bound before when there was one (`remembered`)."""

    def __init__(self, name: str, host: str | None = None, port: int = 0,
                 keys_file: str | None = None, keys_env: str | None = None,
                 tls_files: tuple[str, str, str | None] | None = None,
                 backend=None, remembered: Remembered | None = None, node: str | None = None,
                 of_shard: bool = False, ports: tuple[int, int] | None = None,
                 interceptors: Callable[[Gateway], Sequence[grpc.aio.ServerInterceptor]]
                 = lambda gateway: ()):
        self.name = name
        # its watch streams die with this process: a restart by Ray is another sink
        self.incarnation = uuid.uuid4().hex[:12]
        self.of_shard = of_shard  # a shard's own endpoint (shard/api.py), not a gateway
        self.node = node
        self.gateway: Gateway | None = None
        self.server: grpc.aio.Server | None = None
        self.checker = None
        self._pauses: asyncio.Future | None = None
        self.metrics: GatewayMetrics | None = None  # set where Ray exports them
        self._backend = backend
        self._remembered = remembered
        self._interceptors = interceptors  # more, next to the handlers (a shard's: api.py)
        self._wanted = not of_shard  # SERVING wanted by its owner (a shard's: once it says)
        self._draining = False  # unready() or stop(): NOT_SERVING for good
        self._shown: bool | None = None  # what health answers now (None: not serving yet)
        self._health = asyncio.Lock()  # one health change at a time, each from the latest state
        self._routable: asyncio.Future | None = None
        self._serving: asyncio.Future | None = None
        if host is not None:
            self._serving = asyncio.ensure_future(
                self._serve(host, port, keys_file, keys_env, tls_files, ports))

    async def _serve(self, host: str, port: int, keys_file: str | None, keys_env: str | None,
                     tls_files: tuple[str, str, str | None] | None,
                     ports: tuple[int, int] | None) -> int:
        try:
            auth = Auth.load(read_keys(keys_file, keys_env))
            tls = Tls.from_files(*tls_files) if tls_files else None
            backend = self._backend if self._backend is not None else RayBackend()
            client = await KairosClient(backend).connect()
            self.gateway = Gateway(self.name, client, backend, self.node)
            self.gateway.watches.sink = sink_name(self.name, self.incarnation)
            if self.of_shard:
                # The loop is the shard's: busy with the rounds gateways send as well, which
                # refusing this endpoint's calls would not relieve (the host's queue bounds
                # those). A late loop still sheds.
                self.gateway.shedder = Shedder(busy_target=1.0)
            await self.gateway.refresh_catalog()
            kept = self._remembered.recall(("port",)) if port == 0 and self._remembered \
                else None
            if kept is not None:
                port = kept["port"]  # restarted: the port it served on before
            self.server, self.checker, bound = await serve(
                self.gateway, auth, host, port, tls, admin=not self.of_shard, ports=ports,
                interceptors=tuple(self._interceptors(self.gateway)), serving=False)
            self._shown = False
            # what set_serving, unready or the map changed while serve() started the server
            await self._show_health()
            if self._remembered:
                self._remembered.keep({"port": bound})
        except Exception:
            log.exception("%s could not start serving on %s (port %s)", self.name, host,
                          port or (ports and f"{ports[0]}-{ports[1]}") or "any")
            if self.gateway is not None:
                await self.gateway.close()  # its client follows the map no more
            raise
        pauses.settle()
        self._pauses = asyncio.ensure_future(self._housekeeping())
        if not self.gateway.routable:
            log.info("%s has no partition map yet: NOT_SERVING until the controller "
                     "publishes one", self.name)
            self._routable = asyncio.ensure_future(self._until_routable())
        log.info("%s serving kairos.v1 on %s:%d", self.name, host, bound)
        return bound

    async def start(self) -> int:
        """The port it serves on, once it does (raises what stopped it from serving)."""
        if self._serving is None:
            raise RuntimeError(f"{self.name} was created without a host to serve on")
        return await asyncio.shield(self._serving)

    def pid(self) -> int:
        return os.getpid()

    async def _housekeeping(self) -> None:
        """Keep collection pauses short; report the metrics (in a Ray actor)."""
        while True:
            await asyncio.sleep(PAUSES_CHECK_S)
            pauses.keep_short()
            if self.metrics is not None:
                self.metrics.flush(self.gateway.fallbacks, self.gateway.shedder,
                                   self.gateway.watches_refused)

    async def deliver(self, decisions: list[Decision], incarnation: str | None = None) -> None:
        """Pushes for this process's watch streams (and the forgets' word to end some:
        streams.py); Gone if they are for another `incarnation` (an earlier process of this
        actor: its streams, and so their watches, are gone)."""
        if incarnation is not None and incarnation != self.incarnation:
            raise Gone(f"{self.name}: incarnation {incarnation} is gone (this is "
                       f"{self.incarnation})")
        if self.gateway is not None:
            self.gateway.watches.deliver(decisions)

    async def _until_routable(self) -> None:
        """Health as it stands once the gateway can route (its client follows the map by long
        poll; this only looks whether it came)."""
        while not self.gateway.routable:
            await asyncio.sleep(ROUTABLE_CHECK_S)
        log.info("%s has the partition map (version %d)", self.name,
                 self.gateway.client.version)
        await self._show_health()

    async def _show_health(self) -> None:
        """Have health answer what the state says: NOT_SERVING for good once draining, else
        SERVING while the owner wants it and the gateway can route."""
        async with self._health:
            if self.checker is None:
                return  # serving starts with NOT_SERVING and then shows the state
            if self._draining:
                await self.checker.enter_graceful_shutdown()
                return
            serving = self._wanted and self.gateway.routable
            if serving != self._shown:
                self._shown = serving
                await set_health(self.checker, serving, admin=not self.of_shard)

    async def set_serving(self, serving: bool) -> None:
        """Whether health may answer SERVING from now on (a shard's endpoint: while its shard
        has recovered and owns partitions): it does once the gateway can route, unless it
        is draining or stopped."""
        self._wanted = serving
        await self._show_health()

    async def unready(self) -> None:
        """Health answers NOT_SERVING from now on (load balancers and readiness probes take
        this gateway out), while calls are still served: the first step of a node's drain."""
        self._draining = True
        await self._show_health()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Graceful: health says NOT_SERVING, calls in flight finish, then the server stops."""
        self._draining = True
        if self.server is not None:
            await self._show_health()
            await self.server.stop(grace_s)
            if self._routable is not None:
                self._routable.cancel()
            await self.gateway.close()
            self._pauses.cancel()


@ray.remote(num_cpus=0, max_restarts=-1)
class GatewayActor(GatewayServer):
    """A gateway on one node, named kairos-gateway-<n>; shards push watch changes to it."""

    def __init__(self, name: str, host: str | None = None, port: int = 0,
                 keys_file: str | None = None, keys_env: str | None = None,
                 tls_files: tuple[str, str, str | None] | None = None):
        super().__init__(name, host, port, keys_file, keys_env, tls_files,
                         remembered=Remembered.of_actor(f"{name}.port") if host is not None
                         else None,
                         node=ray.get_runtime_context().get_node_id())
        self.metrics = GatewayMetrics(name)
