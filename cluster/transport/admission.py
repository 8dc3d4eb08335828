"""Which connections a shard's data plane lets wait for their handshake (dataplane.py).

A connection costs the shard a socket and a task while it waits for its peer's handshake
response (HANDSHAKE_S at most), and anyone who reaches the node can open one. So at most
PLANE_HANDSHAKES wait at once, a quarter of them (`per_source`) from one source (an IPv4
address, or an IPv6 /64: a host or a site is given a /64 at least, and can pick from it at
will), so that a stranger's flood cannot crowd out other addresses. Legitimate clients often
share an address (every process on a Ray node, a local cluster on 127.0.0.1, clients behind
NAT), and many open at once after a shard restarts, so the per-source cap is generous.

To make room a connection that has waited GRACE_S is dropped, the longest waiting, from the
newcomer's source first (and only from it once that source is at its cap): a client answers
its greeting within milliseconds, so a connection that old is most likely a silent flood's.
With none that old, a newcomer whose source holds fewer than the source with the most (less
one) takes the longest waiting of that source's, however young: otherwise a few sources at
their cap, opening again faster than GRACE_S, would turn every other source away. Else the
newcomer is turned away rather than a connection under way. One whose response has arrived
is never dropped.

That cap bounds how many handshakes are under way, not how many a source starts per second,
and over TLS each costs the shard's serving loop about 0.6 ms of CPU (an ECDHE and an ECDSA
signature, for a ClientHello a flood replays at no cost of its own; plaintext, 0.14 ms). So
before all that a source may open PLANE_CONNECTIONS connections at once (the most a shard
serves: every client of a node reconnecting after a restart fits), and then
PLANE_CONNECT_RATE a second (`ConnectRate`). A connection past it is held unread (no TLS, no
read) until its source's next token, first come first served, GRACE_S at most, and counts
against the caps above meanwhile, so that a flood of them is dropped as any. Closing it at once
instead let a stranger sharing a client's source (a Ray node, a NAT, an IPv6 /64) lock that
client out: connecting and closing in a loop, it won every token. So a held connection whose
peer closed it is dropped and takes no token. The limit is per source only: enough sources
past their burst still fill a shard's loop with TLS handshakes.

A source that keeps its connections open and silent and opens another as soon as one closes
does lock out the clients that share it: its newcomers take the place of its connections as
they reach GRACE_S, and a client's finds none that old and is turned away. Connections turned
away are accepted and closed, at the shard's cost (a plaintext shard spent about half a core on
one such source). Charging them to their source's rate would save none of that (the accept is
paid), and would lock the source's clients out long after the flood stopped (thousands of
attempts a second, repaid at PLANE_CONNECT_RATE); a per-source connection limit in the
network is what bounds it.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import sys
import termios
import time
from collections import OrderedDict
from typing import Iterable, Iterator

from kairos.cluster.settings import PLANE_CONNECT_RATE, PLANE_CONNECTIONS, PLANE_HANDSHAKES
from kairos.cluster.throttled import ThrottledWarning

log = logging.getLogger("kairos.dataplane")

# A client's response comes one round trip after its greeting; a second is ample on a loaded
# node, and a flood's connection that young is turned away instead of one under way.
GRACE_S = 1.0
# Asks the kernel how many bytes a socket holds unread (Linux, the BSDs); where it is missing
# a response counts as arrived once read
_FIONREAD = getattr(termios, "FIONREAD", None)
# Sources whose rate is kept, the least recently seen forgotten past it (it gets its burst
# back): more sources than that opening connections at once defeat any per-source limit, and
# the table stays a few MiB
SOURCES_KEPT = 16_384
# Asks the kernel a connection's TCP state (Linux): where it is missing a held connection whose
# peer left is found out only when its token comes
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_ESTABLISHED = 1  # tcp_info's first byte, Linux's TCP_ESTABLISHED (the BSDs number it 4)
# How many of a source's held connections, the longest held first, a newcomer past the caps
# checks for one whose peer left: a connect-and-close flood's are all gone, and checking them
# all would make each newcomer of a flood that keeps its own open cost a scan of the cap
REAPED_OF = 4
REFUSED_LOG_S = 10.0  # the most often connections closed past their source's rate are logged


def per_source() -> int:
    """How many connections from one source may wait at once (read from the setting each
    time: tests change it)."""
    return max(1, PLANE_HANDSHAKES // 4)


def source_of(host: str) -> str:
    """The source a connection from `host` counts against: its IPv4 address (also when it
    came to an IPv6 socket, as ::ffff:a.b.c.d), or its IPv6 address's /64."""
    address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone (%eth0)
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def responded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> bool:
    """Whether `size` bytes of a client's handshake response have arrived (read into `reader`
    or still in the kernel): its handshake ends without waiting for the client."""
    # StreamReader tells what it holds no other way; a version without it: the kernel's only
    arrived = len(getattr(reader, "_buffer", b""))
    if _FIONREAD is not None:
        # ValueError: closed (descriptor -1); AttributeError: a transport without a socket
        with contextlib.suppress(OSError, ValueError, AttributeError):
            arrived += struct.unpack("i", fcntl.ioctl(writer.get_extra_info("socket").fileno(),
                                                      _FIONREAD, bytes(4)))[0]
    return arrived >= size


def left(writer: asyncio.StreamWriter) -> bool:
    """Whether a connection's peer closed or reset it, told without reading it (also when
    its data is unread, as a flood's ClientHello sent before closing)."""
    if _TCP_INFO is None:
        return False
    # OSError: gone already; ValueError: closed (descriptor -1); AttributeError: no socket
    try:
        state = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)
    except (OSError, ValueError, AttributeError):
        return True
    return state[0] != _ESTABLISHED


class ConnectRate:
    """Whether a source may open another connection: a token bucket per source, as the
    generic cell rate algorithm keeps it (one time per source: when its bucket is full again,
    a source whose bucket is full needing no entry)."""

    def __init__(self) -> None:
        self._full_at: OrderedDict[str, float] = OrderedDict()  # least recently seen first

    def wait_s(self, source: str) -> float:
        """0 if `source` may open a connection now (its token taken), else the seconds until
        its next token."""
        now = time.monotonic()
        spacing = 1 / PLANE_CONNECT_RATE  # read each time, as per_source's: tests change it
        while self._full_at and (next(iter(self._full_at.values())) <= now
                                 or len(self._full_at) >= SOURCES_KEPT):
            self._full_at.popitem(last=False)
        full_at = max(self._full_at.pop(source, now), now) + spacing
        # a microsecond early counts as on time: the sums round, and a wait that rounds to
        # 1e-17 s would be waited for again and again
        if (wait := full_at - now - PLANE_CONNECTIONS * spacing) <= 1e-6:
            self._full_at[source] = full_at
            return 0.0
        self._full_at[source] = full_at - spacing
        return wait


class Handshakes:
    """The connections waiting for their handshake, oldest first. `response` is the size of
    a client's handshake response."""

    def __init__(self, response: int):
        self._response = response
        # each connection's reader, address and when it came
        self._waiting: dict[asyncio.StreamWriter, tuple[asyncio.StreamReader, str, float]] = {}
        self._sources: dict[str, dict[asyncio.StreamWriter, None]] = {}  # each's, oldest first
        self._rate = ConnectRate()
        # each source's connections held past its rate, oldest first, and each's turn (True:
        # its token came; False: dropped), and the sources whose next token a timer awaits
        self._held: dict[str, dict[asyncio.StreamWriter, asyncio.Future]] = {}
        self._timed: set[str] = set()
        self._refusals = ThrottledWarning(log, REFUSED_LOG_S)

    def __iter__(self) -> Iterator[asyncio.StreamWriter]:
        return iter(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    host: str) -> bool:
        """Let a connection from `host` wait for its handshake, if there is room or room can
        be made, once its source is within its rate (held unread till then, GRACE_S at most);
        `forget` it once its handshake ends. Call it in the connection's first step, before the
        loop reads it."""
        source = source_of(host)
        own = self._sources.get(source, {})
        if len(own) >= per_source():
            room = self._reaped(source) or self._dropped_from(own)
        elif len(self._waiting) >= PLANE_HANDSHAKES:
            room = (self._reaped(source) or self._dropped_from(own)
                    or self._dropped_from(self._waiting) or self._fair_share_made(len(own)))
        else:
            room = True
        if not room:
            return False
        self._waiting[writer] = (reader, source, time.monotonic())
        self._sources.setdefault(source, {})[writer] = None
        if source not in self._held:
            if not (wait := self._rate.wait_s(source)):
                return True
            self._release_in(source, wait)
        return await self._token_came(writer, source)

    async def _token_came(self, writer: asyncio.StreamWriter, source: str) -> bool:
        """Whether `writer`, held unread, got its source's token within GRACE_S (if not, it
        is forgotten)."""
        turn = asyncio.get_running_loop().create_future()
        self._held.setdefault(source, {})[writer] = turn
        writer.transport.pause_reading()
        granted = False
        try:
            async with asyncio.timeout(GRACE_S):
                granted = await turn
        except TimeoutError:
            self._refusals.warn("closed a data plane connection from %s, past its rate of %g a "
                                "second for %g s", source, PLANE_CONNECT_RATE, GRACE_S)
        finally:
            if not granted:
                self.forget(writer)
        if granted:
            writer.transport.resume_reading()  # read by the handshake, in this same step
        return granted

    def _release_in(self, source: str, wait: float) -> None:
        if source not in self._timed:
            self._timed.add(source)
            asyncio.get_running_loop().call_later(wait, self._release, source)

    def _release(self, source: str) -> None:
        """Give `source`'s tokens to its held connections, the longest held first; one whose
        peer left (or whose wait ended) is forgotten and takes none."""
        self._timed.discard(source)
        while held := self._held.get(source):
            writer, turn = next(iter(held.items()))
            if turn.done() or left(writer):
                self.forget(writer)
            elif wait := self._rate.wait_s(source):
                self._release_in(source, wait)
                return
            else:
                self._unheld(writer, source)
                turn.set_result(True)

    def _reaped(self, source: str) -> bool:
        """Whether one of the first REAPED_OF connections `source` holds, one whose peer left,
        was dropped."""
        for writer in list(self._held.get(source, {}))[:REAPED_OF]:
            if left(writer):
                self.forget(writer)
                return True
        return False

    def _unheld(self, writer: asyncio.StreamWriter, source: str) -> asyncio.Future | None:
        """`writer`'s turn, if it was held, no longer held."""
        held = self._held.get(source, {})
        turn = held.pop(writer, None)
        if not held:
            self._held.pop(source, None)
        return turn

    def _answered(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  source: str) -> bool:
        """Whether a connection's handshake response arrived: never a held one's (what it
        sent, a ClientHello say, is no response: it was not greeted)."""
        return writer not in self._held.get(source, {}) and responded(reader, writer,
                                                                      self._response)

    def _dropped_from(self, waiting: Iterable[asyncio.StreamWriter]) -> bool:
        """Whether one of `waiting` (oldest first) was dropped: the longest waiting of those
        that waited GRACE_S and whose response has not arrived."""
        came_by = time.monotonic() - GRACE_S
        for writer in waiting:
            reader, source, came = self._waiting[writer]
            if came > came_by:
                return False  # the rest came later still
            if not self._answered(reader, writer, source):
                self.forget(writer)
                writer.close()
                return True
        return False

    def _fair_share_made(self, held: int) -> bool:
        """Whether the source with the most waiting, holding more than one past `held` (the
        newcomer's source's), gave up its longest waiting one whose response has not arrived,
        however young: a few sources at their cap fill the table, and a flood that opens its
        connections again within GRACE_S keeps every one too young to drop. A source never
        gives up one to a source that would then hold more than it."""
        most = max(self._sources.values(), key=len)
        if len(most) <= held + 1:
            return False
        for writer in most:
            reader, source, _ = self._waiting[writer]
            if not self._answered(reader, writer, source):
                self.forget(writer)
                writer.close()
                return True
        return False

    def dropped(self) -> list[asyncio.StreamWriter]:
        """Every connection waiting, each forgotten (a held one's wait ends at once): the
        server closes them as it stops."""
        writers = list(self._waiting)
        for writer in writers:
            self.forget(writer)
        return writers

    def forget(self, writer: asyncio.StreamWriter) -> None:
        _, source, _ = self._waiting.pop(writer, (None, None, None))
        if source is not None:
            own = self._sources[source]
            del own[writer]
            if not own:
                del self._sources[source]
            if (turn := self._unheld(writer, source)) is not None and not turn.done():
                turn.set_result(False)  # dropped while held
