"""The data path between clients and shards: msgpack frames over TCP, beside Ray.

Ray places, restarts and controls the shards, and every control and admin call stays a Ray
call. Request batches do not: on this 2-core machine a Ray actor call costs about 1.7 ms of CPU
(0.8 ms in the caller, 1.0 ms in the actor), a msgpack frame over a TCP connection about
0.1 ms, so a Ray hop per batch capped a gateway at a few hundred requests per second (Ray's own
compiled graphs bypass the actor-call path for the same reason). Each shard serves its requests
on a port of its node; a client asks the shard for the address through Ray, connects once and
keeps the connection. The connection carries the shard's incarnation, learnt through Ray, as a
handshake, so a client never talks to a restarted shard's predecessor, and nobody without Ray
access can send a frame.

Frames are msgpack arrays: the handshake `[PROTOCOL, incarnation]` answered `[True]` (or
`[False, reason]` before the server closes), then `[call, session, seq, requests, routed]`
answered `[call, results]` or `[call, None, error]`. Requests and results are protocol.py's
requests and replies, which pack as plain arrays; this module carries them as such, and each
end names them again (`request_from`, `reply_from`). Frames on one connection are read in
order, and `session`/`seq` order a sender's batches exactly as they did over Ray.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from dataclasses import fields
from typing import Any, Awaitable, Callable

import msgpack
import numpy as np

from kairos.core.decision import Decision, Dropped, Explanation, RankedAction

log = logging.getLogger("kairos.dataplane")
# 2: requests and replies as protocol.py names them (a Take carries its state field, an
# EventAck always four fields); a client and a shard of different versions refuse each other
PROTOCOL = 2
READ_CHUNK = 1 << 16
# A peer that vanished without closing (its node lost power) is noticed after about
# IDLE + INTERVAL × COUNT seconds of silence by TCP keepalive, or, while frames wait for its
# acknowledgement (when keepalive sends nothing), after UNACKED_S.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 1, 3
UNACKED_S = 10
HANDSHAKE_S = 10.0  # to connect and be greeted, or to greet

# The runtime's values that msgpack has no type for, as ext types (their fields in order).
_TYPES = (Decision, RankedAction, Explanation, Dropped)
_CODES = {cls: code for code, cls in enumerate(_TYPES, start=1)}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _TYPES}
_ACTIONS = _FIELDS[Decision].index("actions")

Handler = Callable[[str, int, list, list], Awaitable[list]]


class PlaneClosed(ConnectionError):
    """The connection to a shard closed; what was in flight on it has no answer."""


class ShardFailed(Exception):
    """The shard failed answering one call (a bug, not bad input); the connection stays."""


def _default(value: Any) -> Any:
    cls = type(value)
    code = _CODES.get(cls)
    if code is not None:
        fields_ = [getattr(value, name) for name in _FIELDS[cls]]
        if cls is Decision:  # the common case: its actions as plain arrays (3x cheaper)
            fields_[_ACTIONS] = [[getattr(a, name) for name in _FIELDS[RankedAction]]
                                 for a in value.actions]
        return msgpack.ExtType(code, _pack(fields_))
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"the data plane cannot carry a {cls.__name__}")


def _ext(code: int, data: bytes) -> Any:
    if not 1 <= code <= len(_TYPES):
        return msgpack.ExtType(code, data)
    fields_ = msgpack.unpackb(data, ext_hook=_ext, use_list=False, strict_map_key=False)
    if code == _CODES[Decision]:
        fields_ = list(fields_)
        fields_[_ACTIONS] = tuple(RankedAction(*a) for a in fields_[_ACTIONS])
    return _TYPES[code - 1](*fields_)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default)


def _unpacker() -> msgpack.Unpacker:
    # use_list=False: arrays come out as tuples, which protocol.py's types are built from
    return msgpack.Unpacker(ext_hook=_ext, use_list=False, strict_map_key=False)


async def _frames(reader: asyncio.StreamReader, unpacker: msgpack.Unpacker):
    """The frames a connection carries, until it closes."""
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            return
        unpacker.feed(data)
        for frame in unpacker:
            yield frame


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                          ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", KEEPALIVE_COUNT),
                          ("TCP_USER_TIMEOUT", UNACKED_S * 1000)):
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class PlaneServer:
    """A shard's end: answers each frame with `handle(session, seq, requests, routed)`."""

    def __init__(self, handle: Handler, incarnation: str):
        self._handle = handle
        self._incarnation = incarnation
        self._server: asyncio.Future | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen (once, however many ask at the same time); the address."""
        if self._server is None:
            self._server = asyncio.ensure_future(asyncio.start_server(self._serve, host, 0))
        server = await asyncio.shield(self._server)
        return server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _keepalive(writer)
        frames = _frames(reader, _unpacker())
        try:
            async with asyncio.timeout(HANDSHAKE_S):
                hello = await anext(frames, None)
            if hello != (PROTOCOL, self._incarnation):
                writer.write(_pack([False, f"expected protocol {PROTOCOL} and this shard's "
                                           f"incarnation, got {hello!r:.80}"]))
                return
            writer.write(_pack([True]))
            async for call, session, seq, requests, routed in frames:
                asyncio.get_running_loop().create_task(
                    self._answer(writer, call, session, seq, requests, routed))
        except (OSError, ValueError, TypeError) as exc:  # OSError: resets, timeouts
            log.warning("data plane connection dropped: %s", exc)
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, call: int, session: str, seq: int,
                      requests: list, routed: list) -> None:
        try:
            frame = _pack([call, await self._handle(session, seq, requests, routed)])
        except Exception as exc:  # a bug, not bad input: the caller learns it at once
            log.exception("answering a data plane call failed")
            frame = _pack([call, None, f"{exc.__class__.__name__}: {exc}"])
        if not writer.is_closing():
            writer.write(frame)

    def close(self) -> None:
        if self._server is not None and self._server.done() and not self._server.exception():
            self._server.result().close()


class PlaneConnection:
    """A client's connection to one shard; calls may overlap, each gets its own answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writer = writer
        self._frames = _frames(reader, _unpacker())
        self._calls = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, host: str, port: int, incarnation: str) -> "PlaneConnection":
        try:
            async with asyncio.timeout(HANDSHAKE_S):
                reader, writer = await asyncio.open_connection(host, port)
                _keepalive(writer)
                connection = cls(reader, writer)
                writer.write(_pack([PROTOCOL, incarnation]))
                answer = await anext(connection._frames, None)
        except TimeoutError:
            raise PlaneClosed(f"{host}:{port} did not answer within {HANDSHAKE_S:g} s") from None
        if answer != (True,):
            writer.close()
            raise PlaneClosed(f"{host}:{port} refused the handshake: "
                              f"{answer[1] if answer else 'closed'}")
        connection._reader = asyncio.get_running_loop().create_task(connection._read())
        return connection

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    async def call(self, session: str, seq: int, requests: list, routed: list[int]) -> list:
        if self.closed:
            raise PlaneClosed("the connection is closed")
        call = next(self._calls)
        frame = _pack([call, session, seq, requests, routed])
        future = self._pending[call] = asyncio.get_running_loop().create_future()
        self._writer.write(frame)
        try:
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(call, None)
            raise PlaneClosed(f"the connection failed: {exc}") from exc
        return await future

    async def _read(self) -> None:
        reason = "the shard closed the connection"
        try:
            async for call, results, *error in self._frames:
                future = self._pending.pop(call, None)
                if future is None or future.done():  # its caller gave up
                    continue
                if error:
                    future.set_exception(ShardFailed(f"the shard failed: {error[0]}"))
                else:
                    future.set_result(results)
        except (OSError, ValueError, TypeError) as exc:  # OSError: resets, timeouts
            reason = f"the connection failed: {exc}"
        finally:
            self._writer.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(PlaneClosed(reason))
            self._pending.clear()

    async def close(self) -> None:
        self._writer.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
