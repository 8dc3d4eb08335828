"""The data plane's frames (dataplane.py): msgpack arrays, unpacked with explicit limits
(settings PLANE_FRAME_BYTES, PLANE_CONTAINER_LEN) so that a header cannot make the receiver
allocate more than the limits allow, and the runtime's values msgpack has no type for (a
decision, its explanation and actions) carried as ext types of a fixed structure."""
from __future__ import annotations

import asyncio
from dataclasses import fields
from typing import Any, Awaitable, Callable, Iterator

import msgpack
import numpy as np

from kairos.core.decision import Decision, Dropped, Explanation, RankedAction

from kairos.cluster.settings import PLANE_CONTAINER_LEN, PLANE_FRAME_BYTES

READ_CHUNK = 1 << 16

# The limits of a frame, and of an ext's payload, which is unpacked whole (it needs no buffer
# limit, and nothing in it is longer than it is).
_EXT_LIMITS = dict(max_array_len=PLANE_CONTAINER_LEN, max_map_len=PLANE_CONTAINER_LEN)
_LIMITS = dict(max_buffer_size=PLANE_FRAME_BYTES, max_str_len=PLANE_FRAME_BYTES,
               max_bin_len=PLANE_FRAME_BYTES, max_ext_len=PLANE_FRAME_BYTES, **_EXT_LIMITS)
# What a malformed or over-limit frame raises while it is unpacked (BufferFull is no ValueError)
_BAD_FRAME = (ValueError, TypeError, msgpack.UnpackException)

# The runtime's values that msgpack has no type for, as ext types (their fields in order),
# and the ext types each may hold: a decision its explanation, an explanation its actions.
# Decoding follows this fixed structure, so nested exts cannot make it recurse any deeper.
_TYPES = (Decision, RankedAction, Explanation, Dropped)
_INNER = {Decision: (Explanation,), Explanation: (RankedAction, Dropped), RankedAction: (),
          Dropped: ()}
_CODES = {cls: code for code, cls in enumerate(_TYPES, start=1)}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _TYPES}
_ACTIONS = _FIELDS[Decision].index("actions")


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
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
        return np.ascontiguousarray(value, "<f8").tobytes()  # a vector key's packed numbers
    raise TypeError(f"the data plane cannot carry a {cls.__name__}")


def _ext_hook(allowed: tuple[type, ...]) -> Callable[[int, bytes], Any]:
    """Decodes the ext types `allowed` where they may occur; any other code is refused."""
    by_code = {_CODES[cls]: cls for cls in allowed}

    def decode(code: int, data: bytes) -> Any:
        cls = by_code.get(code)
        if cls is None:
            raise ValueError(f"unexpected ext type {code} in a data plane frame")
        fields_ = msgpack.unpackb(data, ext_hook=_HOOKS[cls], use_list=False,
                                  strict_map_key=False, **_EXT_LIMITS)
        try:
            if cls is Decision:
                fields_ = list(fields_)
                fields_[_ACTIONS] = tuple(RankedAction(*a) for a in fields_[_ACTIONS])
            return cls(*fields_)
        except (IndexError, KeyError, TypeError) as exc:  # not the fields it must hold
            raise ValueError(f"a malformed {cls.__name__} in a data plane frame: {exc}") \
                from exc

    return decode


_HOOKS = {cls: _ext_hook(_INNER[cls]) for cls in _TYPES}  # what decodes the inside of each
_FRAME_HOOK = _ext_hook(_TYPES)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default)


def _unpacker() -> msgpack.Unpacker:
    # use_list=False: arrays come out as tuples, which protocol.py's types are built from
    return msgpack.Unpacker(ext_hook=_FRAME_HOOK, use_list=False, strict_map_key=False,
                            **_LIMITS)


class Reading:
    """A connection's unpacker and the bytes fed to it: what it holds unread is those less
    where it stands (`tell`), the frame under way those less where the last frame ended."""

    def __init__(self) -> None:
        self.unpacker = _unpacker()
        self.fed = 0
        self._frame_start = 0  # where the frame under way began in the stream

    def feed(self, data: bytes) -> None:
        self.unpacker.feed(data)
        self.fed += len(data)

    def unread(self) -> int:
        return self.fed - self.unpacker.tell()

    def frames(self) -> Iterator[Any]:
        """The frames whole in what was fed; ValueError (a bad frame) for one over
        PLANE_FRAME_BYTES, as soon as that many of its bytes are fed. The unpacker builds a
        frame as its bytes come, so its buffer's limit bounds only the bytes not parsed yet:
        without this a frame of many small items could be any size, each item costing more
        memory than its bytes (a 2-byte [None] a tuple of 48)."""
        for frame in self.unpacker:
            end = self.unpacker.tell()
            self._within_limit(end)
            self._frame_start = end
            yield frame
        self._within_limit(self.fed)

    def _within_limit(self, end: int) -> None:
        if end - self._frame_start > PLANE_FRAME_BYTES:
            raise ValueError(f"a frame over PLANE_FRAME_BYTES ({PLANE_FRAME_BYTES})")


async def _frames(reader: asyncio.StreamReader, reading: Reading):
    """The frames a connection carries, until it closes."""
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            return
        reading.feed(data)
        for frame in reading.frames():
            yield frame


def _call_frame(frame: Any) -> tuple[int, str, int, tuple, tuple]:
    """A request frame's parts, checked for shape: the handler gets nothing else."""
    if not (isinstance(frame, tuple) and len(frame) == 5):
        raise ValueError(f"a call frame is an array of 5, got {type(frame).__name__}")
    call, session, seq, requests, routed = frame
    if not (isinstance(call, int) and isinstance(session, str) and isinstance(seq, int)
            and isinstance(requests, tuple) and isinstance(routed, tuple)
            and len(requests) == len(routed)
            and all(v is None or type(v) is int for v in routed)):  # compared with versions
        raise ValueError("a call frame is [call, session, seq, requests, routed]")
    return call, session, seq, requests, routed


async def read_ahead(reader: asyncio.StreamReader, fed: Reading,
                     until: Awaitable[Any]) -> bool:
    """Await `until` while feeding `fed` what `reader` brings, until it holds READ_CHUNK bytes
    unread (the frames in them wait their turn; however many waits there are, the connection
    is read no further ahead than that, and past it TCP pushes back): without it a reader that
    waits, on a peer that wrote a little more then closed, would see the close only once
    `until` came. False once the peer closed (`until` cancelled unless it came too); True
    once `until` came."""
    waited = asyncio.ensure_future(until)
    reading: asyncio.Future | None = None
    try:
        while fed.unread() < READ_CHUNK:
            reading = asyncio.ensure_future(reader.read(READ_CHUNK - fed.unread()))
            await asyncio.wait((waited, reading), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                return True  # the read, cancelled below, takes nothing
            if not (data := reading.result()):
                return False
            fed.feed(data)
        await waited
        return True
    finally:
        going = [task for task in (waited, reading) if task is not None and not task.done()]
        for task in going:
            task.cancel()
        if going:  # gone before the next read: the reader takes one at a time
            await asyncio.wait(going)
