"""Which connections a shard's data plane lets wait for their handshake (dataplane.py).

A connection costs the shard a socket and a task while it waits for its peer's handshake
response (HANDSHAKE_S at most), and anyone who reaches the node can open one. So at most
PLANE_HANDSHAKES wait at once, PLANE_HANDSHAKES_PER_SOURCE from one address, and the longest
waiting (from the newcomer's address first) is dropped to make room, so that idle connections
cannot lock clients out; one whose response has arrived is never dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from typing import Iterator

from kairos.cluster.settings import PLANE_HANDSHAKES, PLANE_HANDSHAKES_PER_SOURCE


def responded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> bool:
    """Whether `size` bytes of a client's handshake response have arrived (read into `reader`
    or still in the kernel): its handshake ends without waiting for the client."""
    arrived = len(reader._buffer)  # StreamReader tells this no other way
    with contextlib.suppress(OSError):
        arrived += struct.unpack("i", fcntl.ioctl(writer.get_extra_info("socket").fileno(),
                                                  termios.FIONREAD, bytes(4)))[0]
    return arrived >= size


class Handshakes:
    """The connections waiting for their handshake, oldest first. `response` is the size of
    a client's handshake response."""

    def __init__(self, response: int):
        self._response = response
        self._waiting: dict[asyncio.StreamWriter, tuple[asyncio.StreamReader, str]] = {}
        self._sources: dict[str, int] = {}  # connections waiting from each address

    def __iter__(self) -> Iterator[asyncio.StreamWriter]:
        return iter(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              source: str) -> bool:
        """Let a connection from `source` wait for its handshake, if there is room or room can
        be made; `forget` it once its handshake ends."""
        if not self._room_for(source):
            return False
        self._waiting[writer] = (reader, source)
        self._sources[source] = self._sources.get(source, 0) + 1
        return True

    def _room_for(self, source: str) -> bool:
        """Make room for a connection from `source` to wait for its handshake, if it takes
        dropping one: the longest waiting whose response has not arrived, from `source` if it
        has one (it must once it is at its cap), else from any address. False if none can go.
        """
        capped = self._sources.get(source, 0) >= PLANE_HANDSHAKES_PER_SOURCE
        if not capped and len(self._waiting) < PLANE_HANDSHAKES:
            return True
        waiting = sorted(self._waiting.items(), key=lambda item: item[1][1] != source)
        for writer, (reader, waited_from) in waiting:
            if capped and waited_from != source:
                break  # past its cap, an address makes room among its own only
            if not responded(reader, writer, self._response):
                self.forget(writer)
                writer.close()
                return True
        return False

    def forget(self, writer: asyncio.StreamWriter) -> None:
        _, source = self._waiting.pop(writer, (None, None))
        if source is not None:
            self._sources[source] -= 1
            if not self._sources[source]:
                del self._sources[source]
