"""A shard's data plane under hostile traffic (issue: hardening, item 2), on real sockets: whatever
strangers or authenticated peers send, the shard keeps serving a legitimate client and its
memory stays bounded. The shard's server runs in a process of its own, so that its memory is
not the test process's, whose heap holds whatever the suite's earlier tests left in it."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import hmac
import multiprocessing
import os
import struct

import msgpack
import psutil

from kairos.cluster.settings import PLANE_FRAME_BYTES
from kairos.cluster.transport.dataplane import PlaneConnection, PlaneServer

RSS_GROWTH_LIMIT = 50 << 20


def _rss() -> int:
    """This process's resident memory once freed memory is given back: glibc keeps freed
    blocks (a dropped frame's buffers) in its arenas until asked to trim them, which counted
    memory nothing holds any more and made the bound flaky."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measured as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


async def _echo(session: str, seq: int, requests: tuple, routed: tuple) -> list:
    return [("ok", seq, request) for request in requests]


def _serve(pipe) -> None:
    """The shard's side: a data plane server that sends its address and secret, then its RSS
    whenever asked, until told to stop."""
    async def main():
        server = PlaneServer(_echo)
        pipe.send((await server.start("127.0.0.1"), server.secret))
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, pipe.recv) == "rss":
            pipe.send(_rss())
        server.close()
    asyncio.run(main())


async def _answers(address: tuple[str, int], secret: bytes) -> None:
    """A legitimate client connects and gets its answer."""
    connection = await PlaneConnection.open(*address, secret)
    assert await asyncio.wait_for(connection.call("s", 0, [("event", 1)], [1]), 10) == \
        (("ok", 0, ("event", 1)),)
    await connection.close()


async def _dropped(address: tuple[str, int], payload: bytes, secret: bytes | None,
                   times: int = 1) -> None:
    """Send `payload` `times` over (after the handshake when given the secret) and expect the
    shard to close the connection. Each piece is drained before the next."""
    reader, writer = await asyncio.open_connection(*address)
    if secret is not None:
        await _handshake(reader, writer, secret)
    try:
        for _ in range(times):
            writer.write(payload)
            await writer.drain()
        writer.write_eof()  # a frame left incomplete is dropped at once, not after a timeout
        async with asyncio.timeout(5):
            while await reader.read(1 << 16):
                pass
    except OSError:  # closed with what we sent still unread (reset, or gone): dropped too
        pass
    writer.close()


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     secret: bytes) -> None:
    """The handshake as dataplane.py's docstring lays it out, written independently."""
    magic, protocol, shard_nonce = struct.unpack(">8sH32s", await reader.readexactly(42))
    client_nonce = os.urandom(32)
    tag = hmac.new(secret, b"kairos-plane client %d " % protocol + shard_nonce + client_nonce,
                   hashlib.sha256).digest()
    writer.write(struct.pack(">8sH32s32s", magic, protocol, client_nonce, tag))
    assert await reader.readexactly(1) == b"\x01"
    expected = hmac.new(secret, b"kairos-plane shard %d " % protocol + shard_nonce
                        + client_nonce, hashlib.sha256).digest()
    assert await reader.readexactly(32) == expected


def _nested_exts(depth: int) -> bytes:
    """A Decision ext holding a Decision ext holding ... `depth` deep."""
    payload = msgpack.packb(None)
    for _ in range(depth):
        payload = msgpack.packb(msgpack.ExtType(1, payload))
    return payload


HOSTILE = {
    "garbage": os.urandom(4096),
    "an array header claiming 2^32 elements": b"\xdd\xff\xff\xff\xff",
    "a map header claiming 2^32 entries": b"\xdf\xff\xff\xff\xff",
    "deeply nested arrays": b"\x91" * 100_000,
    "arrays of 65,535 elements nested 1,000 deep": b"\xdc\xff\xff" * 1000,
    "deeply nested exts": _nested_exts(2000),
    "an unknown ext": msgpack.packb([0, "s", 0, (msgpack.ExtType(99, b"x"),), (1,)]),
    "a frame of the wrong shape": msgpack.packb([1, 2, 3]),
}


def test_hostile_traffic_and_a_connection_flood_leave_the_shard_serving_in_bounded_memory():
    pipe, theirs = multiprocessing.get_context("spawn").Pipe()
    shard = multiprocessing.get_context("spawn").Process(target=_serve, args=(theirs,))
    shard.start()

    def rss() -> int:
        pipe.send("rss")
        return pipe.recv()

    async def main():
        address, secret = pipe.recv()
        await _answers(address, secret)
        before = rss()
        for key in (None, secret):  # from strangers, then from authenticated peers
            for name, payload in HOSTILE.items():
                await _dropped(address, payload, key)
            await _dropped(address, os.urandom(1 << 20), key,  # a frame over the limit
                           times=PLANE_FRAME_BYTES // (1 << 20) + 2)
            await _answers(address, secret)
        flood = [await asyncio.open_connection(*address) for _ in range(500)]  # held, silent
        await _answers(address, secret)  # the oldest waiting handshakes made room
        for _, writer in flood:
            writer.close()
        await _answers(address, secret)
        grown = rss() - before
        assert grown < RSS_GROWTH_LIMIT, f"RSS grew by {grown >> 20} MiB"

    try:
        asyncio.run(main())
    finally:
        pipe.send("stop")
        shard.join(30)
