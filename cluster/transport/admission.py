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
PLANE_CONNECT_RATE a second (`ConnectRate`); a connection past it is closed before any TLS.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import struct
import termios
import time
from collections import OrderedDict
from typing import Iterable, Iterator

from kairos.cluster.settings import PLANE_CONNECT_RATE, PLANE_CONNECTIONS, PLANE_HANDSHAKES

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


class ConnectRate:
    """Whether a source may open another connection: a token bucket per source, as the
    generic cell rate algorithm keeps it (one time per source: when its bucket is full again,
    a source whose bucket is full needing no entry)."""

    def __init__(self) -> None:
        self._full_at: OrderedDict[str, float] = OrderedDict()  # least recently seen first

    def allows(self, source: str) -> bool:
        """Whether `source` may open a connection now (taking its token if so)."""
        now = time.monotonic()
        spacing = 1 / PLANE_CONNECT_RATE  # read each time, as per_source's: tests change it
        while self._full_at and (next(iter(self._full_at.values())) <= now
                                 or len(self._full_at) >= SOURCES_KEPT):
            self._full_at.popitem(last=False)
        full_at = max(self._full_at.pop(source, now), now) + spacing
        allowed = full_at - now <= PLANE_CONNECTIONS * spacing
        self._full_at[source] = full_at if allowed else full_at - spacing
        return allowed


class Handshakes:
    """The connections waiting for their handshake, oldest first. `response` is the size of
    a client's handshake response."""

    def __init__(self, response: int):
        self._response = response
        # each connection's reader, address and when it came
        self._waiting: dict[asyncio.StreamWriter, tuple[asyncio.StreamReader, str, float]] = {}
        self._sources: dict[str, dict[asyncio.StreamWriter, None]] = {}  # each's, oldest first
        self._rate = ConnectRate()

    def __iter__(self) -> Iterator[asyncio.StreamWriter]:
        return iter(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              host: str) -> bool:
        """Let a connection from `host` wait for its handshake, if its source is within its
        rate and there is room or room can be made; `forget` it once its handshake ends."""
        if not self._rate.allows(source := source_of(host)):
            return False
        own = self._sources.get(source, {})
        if len(own) >= per_source():
            room = self._dropped_from(own)
        elif len(self._waiting) >= PLANE_HANDSHAKES:
            room = (self._dropped_from(own) or self._dropped_from(self._waiting)
                    or self._fair_share_made(len(own)))
        else:
            room = True
        if room:
            self._waiting[writer] = (reader, source, time.monotonic())
            self._sources.setdefault(source, {})[writer] = None
        return room

    def _dropped_from(self, waiting: Iterable[asyncio.StreamWriter]) -> bool:
        """Whether one of `waiting` (oldest first) was dropped: the longest waiting of those
        that waited GRACE_S and whose response has not arrived."""
        came_by = time.monotonic() - GRACE_S
        for writer in waiting:
            reader, _, came = self._waiting[writer]
            if came > came_by:
                return False  # the rest came later still
            if not responded(reader, writer, self._response):
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
            reader, _, _ = self._waiting[writer]
            if not responded(reader, writer, self._response):
                self.forget(writer)
                writer.close()
                return True
        return False

    def forget(self, writer: asyncio.StreamWriter) -> None:
        _, source, _ = self._waiting.pop(writer, (None, None, None))
        if source is not None:
            own = self._sources[source]
            del own[writer]
            if not own:
                del self._sources[source]
