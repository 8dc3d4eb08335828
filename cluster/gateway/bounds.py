"""Bounds on the calls a gateway runs at once besides DecisionService's (calls.InflightLimit
counts those): AdminService calls, ADMIN_CALLS of them; and the streams of the services open
without a key, OPEN_STREAMS of each method (grpc.health's Watch, reflection's). Past a bound, a
call is refused RESOURCE_EXHAUSTED before its request is parsed.

Admin calls pass the in-flight limit and the shedding (an operator must reach a saturated
cluster), yet one may be heavy (a catalog compiled from a 1 MiB text, a page of the decision
log): unbounded, the callers of a status:read key alone could starve the event loop every
Decide waits on. An open stream holds a task and tens of KiB until its caller leaves: anyone
could open thousands (8,000 health watches took a gateway from 115 to 274 MiB). Health's Check
stays open and unbounded (it is unary): Kubernetes' probes call it without a key. grpc's
max_concurrent_streams bounds each connection too (server.py)."""
from __future__ import annotations

import inspect

import grpc

from kairos.cluster.gateway.calls import fail

ADMIN_CALLS = 8  # AdminService calls a gateway runs at once (decision log exports: 4 of them)
OPEN_STREAMS = 1024  # of each open streaming method (a client-side health check holds one)
_ADMIN = "/kairos.v1.AdminService/"
_OPEN_STREAMING = frozenset({"/grpc.health.v1.Health/Watch",
                             "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"})


class Bounds(grpc.aio.ServerInterceptor):
    """Counts the bounded calls running, by group (admin calls; each open streaming method),
    and refuses those past their group's bound. Each method's handler is wrapped once (the
    parsing interceptor's reason)."""

    def __init__(self, gateway: str):
        self.gateway = gateway
        self.running: dict[str, int] = {}
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        method = details.method
        if handler is None or not (method.startswith(_ADMIN) or method in _OPEN_STREAMING):
            return handler
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            group, limit = (("admin calls", ADMIN_CALLS) if method.startswith(_ADMIN) else
                            (f"{method[1:]} streams", OPEN_STREAMS))
            known = self._wrapped[method] = (handler, self._bounded(handler, group, limit))
        return known[1]

    def _bounded(self, handler: grpc.RpcMethodHandler, group: str, limit: int
                 ) -> grpc.RpcMethodHandler:
        kinds = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        run = (handler.unary_unary or handler.unary_stream or handler.stream_unary
               or handler.stream_stream)

        async def bounded(request, context):
            await self._enter(group, limit, context)
            try:
                answer = run(request, context)
                if not inspect.isasyncgen(answer):
                    return await answer
                async for each in answer:  # as writes: the wrapper is one kind for all
                    await context.write(each)
            finally:
                self.running[group] -= 1
        return make[handler.request_streaming, handler.response_streaming](bounded, **kinds)

    async def _enter(self, group: str, limit: int, context) -> None:
        running = self.running.get(group, 0)
        if running >= limit:
            await fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"gateway {self.gateway} runs {running} {group} at once, its limit: try "
                       f"again in a moment")
        self.running[group] = running + 1
