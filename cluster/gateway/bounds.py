"""Bounds on the calls a gateway runs at once besides DecisionService's (calls.InflightLimit
counts those): AdminService calls, ADMIN_CALLS of them, the last ADMIN_RESERVED for keys with
the admin scope; and the streams of the services open without a key (grpc.health's Watch,
reflection's), OPEN_STREAMS of each method from all callers and settings.OPEN_STREAMS_PER_HOST
from one host: an IPv4 address or an IPv6 /64, as a shard's data plane counts its sources
(transport/admission.py; a host is given a /64 at least, and picks from it at will). A proxy,
a sidecar or SNAT in front of the gateway makes every client behind it one host. Past a
bound, a call is refused before its request is parsed: RESOURCE_EXHAUSTED, but a health Watch
UNIMPLEMENTED while health shows SERVING.

Admin calls pass the in-flight limit and the shedding (an operator must reach a saturated
cluster), yet one may be heavy (a catalog compiled from a 1 MiB text, a page of the decision
log): unbounded, the callers of a status:read key alone could starve the event loop every
Decide waits on, and read-only keys (status:read, log:read) holding every place would keep
operators from changing the cluster. An open stream holds a task and about 20 KiB until its
caller leaves: anyone could open thousands (8,000 health watches took a gateway from 115 to
274 MiB). Health's Check stays open and unbounded (it is unary): Kubernetes' probes call it
without a key. grpc's max_concurrent_streams bounds each connection too (server.py).

Every client channel configured with client-side health checks (k8s/README.md) holds a Watch
on each gateway it reaches, so a fleet of clients needs thousands, and a refused one must not
cost its client the gateway: grpc's clients mark a backend whose Watch fails unhealthy (and
try it again after a backoff), and a channel with no healthy backend fails every call, but
take UNIMPLEMENTED to mean health checking is off and the backend is healthy (grpc core's
health_check_client). That holds for the connection's whole life: its channel ignores the
gateway's NOT_SERVING from then on (a drain, a lost map) and leaves it only when the
connection closes. So a Watch past its bound is answered UNIMPLEMENTED only while health
shows SERVING; while it shows NOT_SERVING it is refused RESOURCE_EXHAUSTED, and the client
leaves the gateway as it should. Not a NOT_SERVING message before the end: a Watch that
answered once is retried at once, without backoff, and refused again at once. Each refusal
is counted (Gateway.watches_refused, by answer) and logged, throttled. The bound per host
keeps one caller from taking every place, but not every client: anyone, without a key, can
fill the pool while clients reconnect, so that their connections go without health checks.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from collections import Counter
from typing import Hashable
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health, health_pb2

from kairos.cluster.gateway.auth import has_scope
from kairos.cluster.gateway.calls import Gateway, fail
from kairos.cluster.gateway.parsing import Wrappers
from kairos.cluster.settings import OPEN_STREAMS_PER_HOST
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.admission import source_of

ADMIN_CALLS = 8  # AdminService calls a gateway runs at once (decision log exports: 4 of them)
ADMIN_RESERVED = 2  # ... of which keys without the admin scope may not take the last ones
OPEN_STREAMS = 8192  # of each open streaming method, from all callers (160 MiB of watches)
_ADMIN = "/kairos.v1.AdminService/"
_WATCH = "/grpc.health.v1.Health/Watch"
_OPEN_STREAMING = frozenset({_WATCH,
                             "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"})
REFUSED_LOG_S = 60.0  # the most often a refused Watch is logged (a full pool refuses many)
_REFUSED_WATCH = ThrottledWarning(logging.getLogger("kairos.gateway"), REFUSED_LOG_S)


class Bounds(grpc.aio.ServerInterceptor):
    """Counts the bounded calls running, by group (admin calls; each open streaming method,
    and each of those by host), and refuses those past their group's bound."""

    def __init__(self, gateway: Gateway, shown: health.aio.HealthServicer):
        self.gateway = gateway
        self.shown = shown  # what health answers
        self.running: Counter[Hashable] = Counter()
        self._wrappers = Wrappers(self._bounded)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        method = details.method
        if handler is None or not (method.startswith(_ADMIN) or method in _OPEN_STREAMING):
            return handler
        return self._wrappers.of(handler, method)

    def _bounded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kinds = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        run = (handler.unary_unary or handler.unary_stream or handler.stream_unary
               or handler.stream_stream)

        async def bounded(request, context):
            taken = await self._enter(method, context)
            try:
                answer = run(request, context)
                if not inspect.isasyncgen(answer):
                    return await answer
                async for each in answer:  # as writes: the wrapper is one kind for all
                    await context.write(each)
            finally:
                self.running.subtract(taken)
                for group in taken:
                    if not self.running[group]:  # hosts come and go
                        del self.running[group]
        return make[handler.request_streaming, handler.response_streaming](bounded, **kinds)

    async def _enter(self, method: str, context) -> list[Hashable]:
        """The groups a call of `method` takes a place in; it is refused past any of their
        bounds."""
        if method.startswith(_ADMIN):
            bounds = {"admin calls": ADMIN_CALLS if has_scope("admin") else
                      ADMIN_CALLS - ADMIN_RESERVED}
        else:
            group = f"{method[1:]} streams"
            bounds = {group: OPEN_STREAMS, (group, host_of(context.peer())): OPEN_STREAMS_PER_HOST}
        for group, limit in bounds.items():
            if (running := self.running[group]) >= limit:
                await self._refuse(method, context, running, group, limit)
        self.running.update(bounds.keys())
        return list(bounds)

    async def _refuse(self, method: str, context, running: int, group: Hashable, limit: int
                      ) -> None:
        whose = f"{group[0]} of {group[1]}" if isinstance(group, tuple) else group
        said = f"gateway {self.gateway.name} runs {running} {whose} at once, its limit"
        if method == _WATCH:  # the module's docstring
            serving = await self._serving()
            answer = "unimplemented" if serving else "resource_exhausted"
            self.gateway.watches_refused[answer] += 1
            _REFUSED_WATCH.warn("%s: a health Watch from %s refused %s", said, context.peer(),
                                answer.upper())
            if serving:
                await fail(context, grpc.StatusCode.UNIMPLEMENTED,
                           f"{said}: this Watch is not served (a client's health checking "
                           f"takes the gateway as serving); Check answers")
        if limit < ADMIN_CALLS and group == "admin calls":
            said += (f" for keys without the admin scope (its last {ADMIN_RESERVED} places "
                     f"are kept for operators)")
        await fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{said}: try again in a moment")

    async def _serving(self) -> bool:
        """Whether health answers SERVING for the whole server (""; grpc's servicer always
        knows that one, so its Check never needs the context it would abort)."""
        shown = await self.shown.Check(health_pb2.HealthCheckRequest(), None)
        return shown.status == health_pb2.HealthCheckResponse.SERVING


def host_of(peer: str) -> str:
    """The host a call from grpc's `peer` (`ipv4:10.0.0.7:51234`, `ipv6:%5B2001:db8::7%5D:51234`)
    counts against: its IPv4 address or its IPv6 address's /64; any other peer (a Unix
    socket's) is its own."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        with contextlib.suppress(ValueError):
            return source_of(unquote(address).rpartition(":")[0].strip("[]"))
    return peer
