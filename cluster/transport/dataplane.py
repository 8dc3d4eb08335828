"""The data path between clients and shards: msgpack frames over TCP, beside Ray.

Ray places, restarts and controls the shards, and every control and admin call stays a Ray
call. Request batches do not: on this 2-core machine a Ray actor call costs about 1.7 ms of CPU
(0.8 ms in the caller, 1.0 ms in the actor), a msgpack frame over a TCP connection about
0.1 ms, so a Ray hop per batch capped a gateway at a few hundred requests per second (Ray's own
compiled graphs bypass the actor-call path for the same reason). Each shard serves its requests
on a port of its node; a client asks the shard for the address, a secret and (with TLS) a
certificate's fingerprint through Ray, connects once and keeps the connection. Off loopback
the connection is TLS, the shard's certificate pinned (pinned.py), and all below runs in it.

The port is open to whoever reaches the node, so nothing a peer sends is parsed before it has
proved it knows the secret, which only callers Ray authorised can learn and which changes with
each incarnation (a client never talks to a restarted shard's predecessor). The handshake has
fixed layouts, read with `readexactly`, and never carries the secret:

    shard  -> client  MAGIC, PROTOCOL (u16), shard nonce (32 bytes)
    client -> shard   MAGIC, PROTOCOL, client nonce (32 bytes), proof("client")
    shard  -> client  1, proof("shard")                 (the shard knows the secret too)
                   or 0, reason length (u8), reason     (then the shard closes)

where proof(side) = HMAC-SHA256(secret, b"kairos-plane <side> <PROTOCOL> " + shard nonce +
client nonce). Which connections may wait for their handshake, and for how long (HANDSHAKE_S
at most), admission.py decides.

Then frames are msgpack arrays: `[call, session, seq, requests, routed]` answered
`[call, results]` or `[call, None, error]`, unpacked with explicit limits (codec.py) so that
a header cannot make the receiver allocate more than the limits allow. Requests and results
are protocol.py's requests and replies, which pack as plain arrays; this module carries them
as such, and each end names them again (`request_from`, `reply_from`). Frames on one
connection are read in order, and `session`/`seq` order a sender's batches exactly as they did
over Ray. A shard serves PLANE_CONNECTIONS connections at once (it closes more unread) and
works on PLANE_INFLIGHT_CALLS calls per open connection at once (past that it reads the
connection no further than a chunk: TCP pushes back on the sender); a connection's calls
still running when it closes are cancelled.
Either end drops a connection whose peer took nothing it wrote for PLANE_CALL_S, with the bytes
not yet sent: a stopped process keeps its connections open and would hold them for good.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import secrets
import socket
import ssl
import struct
from typing import Awaitable, Callable

from kairos.cluster.settings import (PLANE_CALL_S, PLANE_CONNECTIONS, PLANE_CONTAINER_LEN,
                                     PLANE_FRAME_BYTES, PLANE_INFLIGHT_CALLS)
from kairos.cluster.shard.sequencer import NotTaken
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport import pinned
from kairos.cluster.transport.admission import Handshakes
from kairos.cluster.transport.backend import NotSent
from kairos.cluster.transport.codec import (_BAD_FRAME, Reading, _call_frame, _frames, _pack,
                                            read_ahead)

log = logging.getLogger("kairos.dataplane")
# 3: a challenge-response handshake of fixed layouts; 4: outcomes carry a convert's value; 5: a
# Decide says if it is logged; 6: a Retire if its forget is finished, TLS off loopback (pinned.py);
# 7: Resolve.for_forget, Retire.when, Bury.finished; 8: Decide.expires; 9: a Forget of an
# anonymous customer whose link is unsettled answers MERGED (a client of 8 would follow it and
# forget the link's customer); 10: Forgotten.merged_into; 11: a Merge answers whether it bound
# the link (one with no state too); 12: Event.via, Outcome.via, Claim.when (a shard of 11 would
# answer every event Invalid). Others refuse each other
PROTOCOL = 12
MAGIC = b"KAIROSDP"
NONCE_BYTES = 32
_CHALLENGE = struct.Struct(f">8sH{NONCE_BYTES}s")
_RESPONSE = struct.Struct(f">8sH{NONCE_BYTES}s32s")
# A peer that vanished without closing (its node lost power) is noticed by the kernel after
# UNACKED_S (TCP_USER_TIMEOUT) without an acknowledgement of what was sent or, the connection
# idle, an answer to keepalive's probes (sent after IDLE s of silence, every INTERVAL s; with a
# user timeout set Linux gives up at it, not after COUNT probes), so that a call on a pooled
# connection to a node gone finds it closed (not sent) rather than waiting out PLANE_CALL_S. A
# peer alive that reads nothing for as long (a zero window: its loop stalled with megabytes
# buffered) is cut off the same way, before PLANE_CALL_S: noticing a vanished node in 10 s,
# not 35, is worth that.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 1, 3
UNACKED_S = 10
HANDSHAKE_S = 10.0  # to connect and be greeted, or to greet
REFUSAL_S = 1.0  # for a refused peer's socket to take the reason, before it is dropped
# connections the kernel queues for accepting (asyncio's default is 100): a burst of connects
# past it waits for SYN retries, a second or more. Linux caps it at net.core.somaxconn (4096
# since 5.4, 128 before: raise it there for the full queue). A flood faster than a shard
# accepts fills any queue; that takes the network's defences (a per-source connection limit).
LISTEN_BACKLOG = 1024
# A shard warns of batches it refuses for their sender's doing (replays, gaps, session names
# too long) once in this long at most: a client gone wrong may send a stream of them
REFUSED_LOG_S = 10.0

Handler = Callable[[str, int, list, list], Awaitable[list]]


class PlaneClosed(ConnectionError):
    """The connection to a shard closed; what was in flight on it has no answer."""


class PlaneNotSent(PlaneClosed, NotSent):
    """The connection had closed before a call was written: the call never left."""


class ShardFailed(Exception):
    """The shard failed answering one call (a bug, or a batch out of its session's turn);
    the connection stays."""


def _proof(secret: bytes, side: bytes, shard_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, b"kairos-plane %s %d " % (side, PROTOCOL) + shard_nonce
                    + client_nonce, hashlib.sha256).digest()


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                          ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", KEEPALIVE_COUNT),
                          ("TCP_USER_TIMEOUT", UNACKED_S * 1000)):
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection in order, dropping what it has not sent yet: a plain close waits
    for a peer that stopped reading to take it, which may be never, and keeps the socket and
    the bytes meanwhile; an abort also wakes whatever waits in drain(). A TLS transport's
    buffer leaves out what its socket holds, so where the peer may be gone or not reading,
    `_drop`."""
    if writer.transport.get_write_buffer_size():
        _drop(writer)
    else:
        writer.close()


def _drop(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once: a TLS close waits for the peer's close_notify (asyncio's
    ssl_shutdown_timeout, 30 s), keeping the socket and what it holds meanwhile. Closing it
    after this does nothing."""
    writer.transport.abort()


class _Refused(Exception):
    """A peer failed the handshake; the reason it is told."""


class _Mismatch(Exception):
    """A shard of another protocol: another Kairos version, which a rolling upgrade runs for a
    while (each connection to it is refused: warned of once in a while)."""


_MISMATCHES = ThrottledWarning(log, REFUSED_LOG_S)


class PlaneServer:
    """A shard's end: answers each frame with `handle(session, seq, requests, routed)`.
    `secret` is what clients must prove they know (`PlaneConnection.open`), `fingerprint` its
    TLS certificate's, once started (None: plaintext, pinned.wanted)."""

    def __init__(self, handle: Handler):
        self._handle = handle
        self.secret = secrets.token_bytes(32)  # this incarnation's: a restart makes another
        self.fingerprint: bytes | None = None
        self._tls: ssl.SSLContext | None = None
        self._server: asyncio.Future | None = None
        # connections waiting for their handshake, and those being served
        self._greeting = Handshakes(_RESPONSE.size)
        self._serving: set[asyncio.StreamWriter] = set()
        self._refusals = ThrottledWarning(log, REFUSED_LOG_S)

    async def start(self, host: str) -> tuple[str, int]:
        """Listen (once, however many ask at the same time); the address."""
        if self._server is None:
            if pinned.wanted(host):
                self._tls, self.fingerprint = pinned.server_context()
            self._server = asyncio.ensure_future(asyncio.start_server(self._serve, host, 0,
                                                                   backlog=LISTEN_BACKLOG))
        starting = self._server
        try:
            server = await asyncio.shield(starting)
        except Exception:
            if self._server is starting:  # a failed bind (out of descriptors): tried again
                self._server = None
            raise
        return server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # past the cap a connection is closed unread: a flood costs an accept and a close
            if len(self._serving) < PLANE_CONNECTIONS and await self._admitted(reader, writer):
                self._serving.add(writer)
                await self._calls(reader, writer)
        except (OSError,) + _BAD_FRAME as exc:  # OSError: resets, timeouts
            log.warning("data plane connection dropped: %s", exc)
            _drop(writer)
        finally:
            self._serving.discard(writer)
            _close(writer)

    async def _admitted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> bool:
        """Whether the peer proved it knows the secret (if not, it was told why when it
        got that far)."""
        peer = writer.get_extra_info("peername")
        if peer is None or not await self._greeting.admit(reader, writer, peer[0]):  # None: reset
            return False
        try:
            _keepalive(writer)
            async with asyncio.timeout(HANDSHAKE_S):
                if self._tls is not None:  # after admission, which bounds a flood's cost;
                    # in the step admission let it in, before the loop reads it (which
                    # would take a ClientHello as plaintext, and TLS would never see it)
                    await pinned.start_tls(writer, self._tls)
                await self._greet(reader, writer)
            return True
        except _Refused as exc:
            reason = str(exc).encode()[:255]
            writer.write(b"\x00" + bytes([len(reason)]) + reason)
            log.debug("refused a data plane handshake: %s", exc)  # strangers: no log flood
            # the reason handed to the kernel, then dropped: a TLS close would wait 30 s for a
            # stranger's close_notify, its socket held past admission's caps all along
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(REFUSAL_S):
                    await writer.drain()
            _drop(writer)
        except (OSError, EOFError) as exc:  # closed, reset, made room for another, too slow
            log.debug("a data plane handshake went: %r", exc)
            _drop(writer)
        finally:
            self._greeting.forget(writer)
        return False

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        shard_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(_CHALLENGE.pack(MAGIC, PROTOCOL, shard_nonce))
        magic, protocol, client_nonce, proof = _RESPONSE.unpack(
            await reader.readexactly(_RESPONSE.size))
        if magic != MAGIC:
            raise _Refused("not a data plane client")
        if protocol != PROTOCOL:
            raise _Refused(f"this shard speaks protocol {PROTOCOL}, the client {protocol}: run "
                           f"one Kairos version")
        if not hmac.compare_digest(proof, _proof(self.secret, b"client", shard_nonce,
                                                 client_nonce)):
            raise _Refused("wrong proof of this shard's secret")
        if len(self._serving) >= PLANE_CONNECTIONS:
            raise _Refused(f"this shard serves {PLANE_CONNECTIONS} connections already")
        writer.write(b"\x01" + _proof(self.secret, b"shard", shard_nonce, client_nonce))

    async def _calls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve the connection's calls until it closes; then cancel those still running,
        whose answers could not be written: a client that reconnects must not leave calls
        behind, PLANE_INFLIGHT_CALLS a connection at a time. The handler takes cancelling
        (ShardHost.handle: a batch waiting for its turn never has it, one queued is done)."""
        slots = asyncio.Semaphore(PLANE_INFLIGHT_CALLS)
        answering: set[asyncio.Task] = set()
        fed = Reading()
        try:
            async for frame in _frames(reader, fed):
                call = _call_frame(frame)
                if not slots.locked():
                    await slots.acquire()
                # at the cap the connection is read no further than a chunk ahead, which
                # shows a peer that closed meanwhile, unless it wrote past that
                elif not await read_ahead(reader, fed, slots.acquire()):
                    return
                task = asyncio.get_running_loop().create_task(self._answer(writer, slots, *call))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            for task in answering:
                task.cancel()

    async def _answer(self, writer: asyncio.StreamWriter, slots: asyncio.Semaphore, call: int,
                      session: str, seq: int, requests: tuple, routed: tuple) -> None:
        try:
            frame = _pack([call, await self._handle(session, seq, requests, routed)])
            if len(frame) > PLANE_FRAME_BYTES:
                raise OverflowError(f"the answer takes {len(frame)} bytes, over "
                                    f"PLANE_FRAME_BYTES ({PLANE_FRAME_BYTES})")
        except Exception as exc:  # the caller learns it at once
            if isinstance(exc, NotTaken):  # its sender's doing
                self._refusals.warn("refused a data plane call: %s", exc)
            else:  # a bug, not bad input
                log.exception("answering a data plane call failed")
            frame = _pack([call, None, f"{exc.__class__.__name__}: {exc}"])
        try:
            if not writer.is_closing():
                writer.write(frame)
                # a peer that does not read holds its slots, not memory, and not for good
                async with asyncio.timeout(PLANE_CALL_S):
                    await writer.drain()
        except TimeoutError:  # before OSError, which it is
            log.warning("data plane connection dropped: its peer read no answer for %g s",
                        PLANE_CALL_S)
            _drop(writer)
        except OSError:
            pass  # the connection went: its reader ends it
        finally:
            slots.release()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None and self._server.done() and not self._server.exception():
            self._server.result().close()
        for writer in [*self._greeting.dropped(), *self._serving]:
            _close(writer)


class PlaneConnection:
    """A client's connection to one shard; calls may overlap, each gets its own answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writer = writer
        self._frames = _frames(reader, Reading())
        self._calls = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._lost = False  # a call written on it went unanswered
        self._reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, host: str, port: int, secret: bytes, fingerprint: bytes | None = None
                   ) -> "PlaneConnection":
        """Connect to a shard and prove both ends know the shard's `secret`; over TLS if
        the shard published its certificate's `fingerprint`, refusing (PlaneClosed) a peer
        whose certificate has another before the handshake reads or sends anything, and a
        shard off loopback that published none (pinned.plaintext_refused)."""
        try:
            if fingerprint is None and (refusal := pinned.plaintext_refused(host)):
                raise _Mismatch(refusal)
            async with asyncio.timeout(HANDSHAKE_S):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=pinned.client_context() if fingerprint else None)
                try:
                    if fingerprint:
                        pinned.check(writer.get_extra_info("ssl_object"), fingerprint)
                    _keepalive(writer)
                    await cls._handshake(reader, writer, secret)
                except BaseException:
                    _drop(writer)
                    raise
        except TimeoutError:
            raise PlaneClosed(f"{host}:{port} did not answer within {HANDSHAKE_S:g} s") from None
        except _Refused as exc:
            raise PlaneClosed(f"{host}:{port} refused the handshake: {exc}") from None
        except _Mismatch as exc:
            _MISMATCHES.warn("data plane %s:%s: %s", host, port, exc)
            raise PlaneClosed(f"{host}:{port}: {exc}") from None
        except EOFError:
            raise PlaneClosed(f"{host}:{port} closed the connection during the handshake") \
                from None
        except OSError as exc:  # refused, reset, unreachable
            raise PlaneClosed(f"{host}:{port}: the connection failed: {exc}") from None
        connection = cls(reader, writer)
        connection._reader = asyncio.get_running_loop().create_task(connection._read())
        return connection

    @staticmethod
    async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         secret: bytes) -> None:
        magic, protocol, shard_nonce = _CHALLENGE.unpack(
            await reader.readexactly(_CHALLENGE.size))
        if magic != MAGIC:
            raise _Refused("it is not a data plane shard")
        if protocol != PROTOCOL:
            raise _Mismatch(f"the shard speaks protocol {protocol}, this client {PROTOCOL}: "
                            f"run one Kairos version")
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(_RESPONSE.pack(MAGIC, PROTOCOL, client_nonce,
                                    _proof(secret, b"client", shard_nonce, client_nonce)))
        if await reader.readexactly(1) != b"\x01":
            reason = await reader.readexactly((await reader.readexactly(1))[0])
            raise _Refused(reason.decode(errors="replace"))
        if not hmac.compare_digest(await reader.readexactly(32),
                                   _proof(secret, b"shard", shard_nonce, client_nonce)):
            raise _Refused("it did not prove it knows the shard's secret")

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    async def call(self, session: str, seq: int, requests: list, routed: list[int]) -> list:
        """The shard's results for a batch. PlaneNotSent if the connection had closed before
        (`gapped` if calls written on it went unanswered: `session` may have a gap);
        OverflowError for a batch over the limits (nothing sent); PlaneClosed, and the
        connection dropped, if the answer takes longer than PLANE_CALL_S."""
        if self.closed:  # then nothing is written: the call never leaves
            unsent = PlaneNotSent("the connection is closed")
            unsent.gapped = self._lost or bool(self._pending)
            raise unsent
        if len(requests) > PLANE_CONTAINER_LEN:
            raise OverflowError(f"a batch of {len(requests)} requests is over "
                                f"PLANE_CONTAINER_LEN ({PLANE_CONTAINER_LEN})")
        frame = _pack([call := next(self._calls), session, seq, requests, routed])
        if len(frame) > PLANE_FRAME_BYTES:
            raise OverflowError(f"the batch takes {len(frame)} bytes, over PLANE_FRAME_BYTES "
                                f"({PLANE_FRAME_BYTES})")
        future = self._pending[call] = asyncio.get_running_loop().create_future()
        self._writer.write(frame)
        try:
            # the write under the deadline too: a shard that stopped reading (kill -STOP, a
            # blocked loop) would hold a call in drain() for good, and the calls behind it
            async with asyncio.timeout(PLANE_CALL_S):
                await self._writer.drain()
                return await future
        except TimeoutError:  # before OSError, which it is
            failure = PlaneClosed(f"the shard did not answer within {PLANE_CALL_S:g} s")
        except PlaneClosed:
            raise
        except OSError as exc:
            failure = PlaneClosed(f"the connection failed: {exc}")
        except asyncio.CancelledError:  # its caller gave up; the shard may take it all the same
            self._unanswered(call)
            raise
        self._unanswered(call)
        _drop(self._writer)  # the reader fails every other call on it
        raise failure

    def _unanswered(self, call: int) -> None:
        """Forget a call written on the connection whose caller will not learn its answer:
        its batch may have been taken, so its session may have a gap (`gapped`)."""
        self._pending.pop(call, None)
        self._lost = True

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
        except (OSError,) + _BAD_FRAME as exc:  # OSError: resets, timeouts
            reason = f"the connection failed: {exc}"
            _drop(self._writer)
        finally:
            _close(self._writer)
            self._lost |= bool(self._pending)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(PlaneClosed(reason))
            self._pending.clear()

    async def close(self) -> None:
        _close(self._writer)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
