"""Requests parsed by the gateway's own code, after the call was admitted.

grpc parses a request before the handler runs, and a request that is not the message (random
bytes, a truncated message, a string field holding invalid UTF-8) then ends the call with
UNKNOWN, as if Kairos had failed. This interceptor, the last before the handlers, hands them
the raw bytes' parse instead, so such a request gets INVALID_ARGUMENT naming the message it
should have been; the interceptors before it (keys, capacity) never parse at all.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from kairos.core.errors import InputError

Parse = Callable[[bytes], Any]


class Wrappers:
    """An interceptor's wrapper of each method's handler, built once: building it for every
    call cost a few % of a Decide's CPU in the gateway."""

    def __init__(self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]
                 ) -> None:
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def of(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._wrap(handler, method))
        return known[1]


class ParseInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrappers = Wrappers(lambda handler, method: _parsing(handler))

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None \
                or not details.method.startswith("/kairos.v1."):
            return handler
        return self._wrappers.of(handler, details.method)


def _parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse: Parse = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        async def unary_unary(data: bytes, context):
            return await handler.unary_unary(await _one(parse, data, context), context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if handler.unary_stream:
        async def unary_stream(data: bytes, context):
            async for answer in handler.unary_stream(await _one(parse, data, context), context):
                yield answer
        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if handler.stream_unary:
        async def stream_unary(requests, context):
            try:
                return await handler.stream_unary(_each(parse, requests), context)
            except InputError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)

    async def stream_stream(requests, context):
        try:
            async for answer in handler.stream_stream(_each(parse, requests), context):
                yield answer
        except InputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)


async def _one(parse: Parse, data: bytes, context) -> Any:
    try:
        return parse(data)
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _reason(parse, exc))


async def _each(parse: Parse, requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """The stream's messages; InputError (INVALID_ARGUMENT, through the handler's own error
    path or the wrapper above) at the first that does not parse."""
    async for data in requests:
        try:
            yield parse(data)
        except DecodeError as exc:
            raise InputError("request", _reason(parse, exc)) from None


def _reason(parse: Parse, exc: DecodeError) -> str:
    message = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = message.full_name if message is not None else "the request message"
    return f"not a valid {name} ({exc})"
