"""Frames: how a journal segment holds its batches, and how damage is told from a torn tail.

A frame holds one batch: a 4-byte length, the CRC-32 of the payload and the payload, msgpack
of `[first lsn, records, format]` (`pack_batch`; batches written before formats were numbered
have two elements and are format 1). No payload passes MAX_FRAME bytes: `check_frame` refuses
one before it is written (JournalFrameTooLarge), so nothing acknowledged is ever unreadable.

`read_frames` walks a segment's bytes. Only the last segment, being opened (or read by another
shard while its writer may be mid-write), may end in a torn tail: a bad frame that no intact
frame follows and whose payload is not whole under a damaged length. Everything else (a bad
frame with intact frames after it, a batch whose first LSN does not continue the one before
it, a CRC-valid frame that holds no batch) is JournalCorrupt, naming the segment and the byte
offset. `ambiguous_tail` says whether a torn tail is as long
as its header announces (a power cut mid-write, or a bit flip in the last acknowledged batch:
the journal keeps its bytes and skips its LSNs, journal.py); a tail of zeros announces no batch
and is cut as torn.

A store without frames (redis_journal.py) keeps each batch sealed (`seal_batch`): msgpack of
`[first lsn, packed batch, SEALED, CRC-32 of the packed batch]`, one zlib.crc32 over bytes
already packed. SEALED stands where a plain batch has its format and is above every record
format, so a Kairos from before sealing refuses a sealed batch as too new (JournalFormatError)
rather than misreading it; `unseal_batch` reads plain batches too (written before sealing,
unchecked). A sealed batch whose CRC fails, or whose two first LSNs differ, is BatchDamaged, as
is an array of 4 without the SEALED mark (a plain batch has 2 or 3 elements): damage to the
mark is corruption, not a newer format.

Erasure reaches the quarantine (journal.py, redis_journal.py): `scrub` and `scrub_batch`
rewrite what an operator, or opening the journal, moved aside without the records erasure
drops, reading a damaged batch as far as it decodes. What holds no batch that decodes, and a
record the decoder cannot read, cannot be checked for the customers erased, so they go. A
damaged batch rewritten keeps a CRC that fails (`_crc`), so moved back it is still refused as
damaged rather than replayed as intact; a batch of a newer format is kept as it is (logged):
refused whole, as everywhere, never cut off.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

log = logging.getLogger("kairos.store")
HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
MAX_FRAME = 64 << 20  # the largest payload written or read
SUFFIX = ".log"
QUARANTINE = "quarantine"
LOST = ".lost"  # in quarantine/: an empty file, accepting a gap from the LSN it is named after
GAP = ".gap"  # beside the segments: no segment holds the LSNs from its name to the one it holds
# how a batch payload begins: a msgpack array of 2 or 3, then the first LSN as an unsigned int
_BATCH_START = re.compile(rb"[\x92\x93][\x01-\x7f\xcc-\xcf]")
SEALED = 1 << 16  # a sealed batch's mark, where a plain batch has its format (module text)
_UINTS = {0xcc: struct.Struct(">B"), 0xcd: struct.Struct(">H"), 0xce: struct.Struct(">I"),
          0xcf: struct.Struct(">Q")}


class JournalCorrupt(StoreCorrupt):
    """A frame other than a torn tail is damaged, or LSNs do not follow on: the journal
    cannot be trusted until the segment named is quarantined."""


class JournalFrameTooLarge(StoreUnavailable):
    """A batch too large for one frame was refused before anything was written (nothing of it
    is acknowledged; the shard rebuilds from the store as after any failed write)."""


class JournalFormatError(ValueError):
    """A batch was written in a record format newer than this code reads (a newer Kairos
    wrote it): refused whole, never skipped or cut off."""


class BatchDamaged(ValueError):
    """A sealed batch's CRC-32 fails, or its two first LSNs differ."""


Decode = Callable[[Any, int], Any]  # (record as stored, its batch's format) -> record


def pack_batch(first_lsn: int, records: list[Any], journal_format: int = JOURNAL_FORMAT,
               unicode_errors: str = "strict") -> bytes:
    """A batch as stored: msgpack of `[first lsn, records, format]` (format 1: without it,
    as it was written before formats were numbered). `unicode_errors` as `unpack_batch`'s."""
    batch = [first_lsn, records] if journal_format == 1 else [first_lsn, records, journal_format]
    return msgpack.packb(batch, use_bin_type=True, unicode_errors=unicode_errors)


def unpack_batch(data: bytes, unicode_errors: str = "strict") -> tuple[int, list, int]:
    """(first LSN, records, format) of a stored batch; JournalFormatError for a format newer
    than this code writes. "surrogateescape" reads a damaged batch's strings, their bad bytes
    kept (`scrub`)."""
    return _batch(msgpack.unpackb(data, raw=False, strict_map_key=False,
                                  unicode_errors=unicode_errors))


def _batch(unpacked: list) -> tuple[int, list, int]:
    first, records, *rest = unpacked
    journal_format = rest[0] if rest else 1
    if journal_format > JOURNAL_FORMAT:
        raise JournalFormatError(f"journal batch at LSN {first} has record format "
                                 f"{journal_format}; this Kairos reads formats up to "
                                 f"{JOURNAL_FORMAT}")
    return first, records, journal_format


def seal_batch(first_lsn: int, records: list[Any], journal_format: int = JOURNAL_FORMAT,
               unicode_errors: str = "strict", damaged: bool = False) -> bytes:
    """A batch as a store without frames keeps it, behind its CRC-32 (the module's text)."""
    payload = pack_batch(first_lsn, records, journal_format, unicode_errors)
    return msgpack.packb([first_lsn, payload, SEALED, _crc(payload, damaged)],
                         use_bin_type=True)


def unseal_batch(data: bytes, checked: bool = True) -> tuple[int, list, int]:
    """(first LSN, records, format) of a sealed batch, or of a plain one (unchecked).
    BatchDamaged if a sealed one's CRC fails or its two first LSNs differ; JournalFormatError
    as `unpack_batch`. Not `checked` (a quarantined batch): read as far as it decodes."""
    return _unsealed(data, checked)[0]


def _unsealed(data: bytes, checked: bool) -> tuple[tuple[int, list, int], bool | None]:
    """`unseal_batch`'s batch, and whether its CRC holds (None: a plain batch has none)."""
    errors = "strict" if checked else LENIENT
    unpacked, holds = _opened(data, errors)
    if checked and holds is False:
        raise BatchDamaged(f"the CRC-32 of its {len(unpacked[1])}-byte batch fails")
    return _contents(unpacked, holds, errors), holds


def _opened(data: bytes, errors: str) -> tuple[list, bool | None]:
    """A stored batch's msgpack array, and whether its CRC holds (None: plain), before its
    records are read: damage may make them read as a newer format (`scrub_batch`)."""
    unpacked = msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors=errors)
    if len(unpacked) != 4:
        return unpacked, None
    first, payload, mark, crc = unpacked
    if mark != SEALED:
        raise BatchDamaged(f"it has a sealed batch's 4 elements but {mark!r} for its mark")
    return unpacked, zlib.crc32(payload) == crc


def _contents(unpacked: list, holds: bool | None, errors: str) -> tuple[int, list, int]:
    if holds is None:
        return _batch(unpacked)
    first, payload = unpacked[:2]
    batch = unpack_batch(payload, errors)
    if batch[0] != first:
        raise BatchDamaged(f"it is sealed as from LSN {first}, its batch from LSN {batch[0]}")
    return batch


def frame(first_lsn: int, records: list[Any], journal_format: int = JOURNAL_FORMAT,
          unicode_errors: str = "strict", damaged: bool = False) -> bytes:
    payload = pack_batch(first_lsn, records, journal_format, unicode_errors)
    check_frame(len(payload), first_lsn, len(records))
    return HEADER.pack(len(payload), _crc(payload, damaged)) + payload


def _crc(payload: bytes, damaged: bool) -> int:
    """The CRC-32 of `payload`; one that never matches it for a damaged batch rewritten
    (`scrub`), which must not come out of erasure looking intact."""
    return zlib.crc32(payload) ^ (0xFFFFFFFF if damaged else 0)


def check_frame(size: int, first_lsn: int, count: int) -> None:
    """JournalFrameTooLarge for a batch payload past MAX_FRAME bytes (readers refuse those)."""
    if size > MAX_FRAME:
        raise JournalFrameTooLarge(
            f"a batch of {count} records from LSN {first_lsn} packs to {size} bytes, past the "
            f"journal's {MAX_FRAME}-byte frame limit; refused before writing (a round must "
            f"be budgeted in bytes below it)")


def segment_batches(path: Path, tail: bool = False) -> Iterator[tuple[int, list, int, int]]:
    """(first LSN, records, format, end offset) of each frame of a segment; JournalCorrupt
    at the first damaged frame or LSN that does not follow on (with `tail`, a torn tail ends
    them: `read_frames`)."""
    with open(path, "rb") as f:
        data = f.read()
    return read_frames(path, data, tail)


def read_frames(path: Path, data: bytes, tail: bool = False
                ) -> Iterator[tuple[int, list, int, int]]:
    """The frames of a segment's bytes. With `tail` (the last segment, being opened) a torn
    tail ends them quietly; any other damage raises JournalCorrupt. A whole frame of a newer
    format raises JournalFormatError."""
    expect = first_lsn(path)
    pos = 0
    while pos < len(data):
        end = _intact(data, pos)
        if end is None:
            if tail and _next_intact(data, pos, expect) is None and \
                    not _misframed(data, pos):
                return
            raise corrupt(path, f"damaged frame at byte {pos} of {len(data)}")
        try:
            first, records, journal_format = checked_shape(
                unpack_batch(data[pos + HEADER.size:end]))
        except JournalFormatError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:  # written so by a bug
            raise corrupt(path, f"the frame at byte {pos} holds no batch ({exc})") from None
        if first != expect:
            raise corrupt(path, f"the batch at byte {pos} starts at LSN {first}, not {expect}")
        yield first, records, journal_format, end
        expect, pos = first + len(records), end


def written(path: Path, data: bytes, mode: int) -> Path:
    """`path`, created anew (so with `mode`, whatever was there) holding `data`, fsynced."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def corrupt(path: Path, what: str) -> JournalCorrupt:
    """The error for damage in a segment, logged with the way out."""
    error = JournalCorrupt(f"{path}: {what}; the journal is not read past it until the segment "
                           f"is moved into {path.parent / QUARANTINE}/ (README, \"Corruption\")")
    log.error("%s", error)
    return error


def past_gaps(directory: Path, expect: int, first: int) -> int:
    """Where the next segment read (starting at `first`) must start, `expect` once the one
    before it ended: past each gap recorded from there, to the last LSN its file holds (a
    segment lost after the gap is not to go unseen), or at `first` past an empty file (one
    written before they held it)."""
    while expect != first:
        try:
            end = (directory / f"{expect:020d}{GAP}").read_bytes()
        except FileNotFoundError:
            break
        if not end:
            return first
        if not end.isdigit() or int(end) < expect:  # damaged: as if it were not there
            break
        expect = int(end) + 1
    return expect


def misnumbered(path: Path, expect: int, first_read: bool = False) -> JournalCorrupt:
    """The error for a segment that does not start at `expect`, the LSN after the segment
    before it (`first_read`: the first LSN a snapshot or truncation does not cover). Past a
    gap nothing accepts, the segment itself may be intact, holding batches acknowledged after
    the gap: quarantining it would lose them, so the way out accepts the gap instead."""
    first = first_lsn(path)
    what = f"starts at LSN {first}, but " + (
        f"the journal must hold LSN {expect} (no snapshot, truncation or gap covers it)"
        if first_read else f"the segment before it ends at LSN {expect - 1}")
    if first < expect:
        return corrupt(path, what)
    error = JournalCorrupt(
        f"{path}: {what}, and no record accepts LSNs {expect}-{first - 1} as skipped (a "
        f"segment or a gap's file removed, or a quarantined file an older Kairos relied on); do "
        f"not quarantine this segment, which may hold acknowledged batches: if those LSNs are "
        f"gone (or a release from before truncation marks truncated them: a rollback), create "
        f"the empty file {path.parent / QUARANTINE}/{expect:020d}{LOST} to accept the gap "
        f"(README, \"Corruption\")")
    log.error("%s", error)
    return error


def _intact(data: bytes, pos: int) -> int | None:
    """The end of the frame at `pos` if its length fits and its CRC holds."""
    if pos + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, pos)
    start, end = pos + HEADER.size, pos + HEADER.size + length
    if 0 < length <= MAX_FRAME and end <= len(data) and zlib.crc32(data[start:end]) == crc:
        return end
    return None


def _next_intact(data: bytes, pos: int, expect: int) -> int | None:
    """Where the first intact frame past `pos` starts, if one does: then what is at `pos` was
    no torn write (a crash tears only the last frame written) but damage inside the segment.
    Only
    places where a payload could begin with a first LSN past `expect` (the LSN the frame at
    `pos` should start at) are checksummed, so a long segment is scanned in one pass."""
    for match in _BATCH_START.finditer(data, pos + 1 + HEADER.size):
        at = match.start() - HEADER.size
        first = _first_of(data, match.start() + 1)
        if first is not None and expect < first <= expect + len(data) and \
                HEADER.unpack_from(data, at)[0] <= len(data) - at - HEADER.size and \
                _intact(data, at) is not None:
            return at
    return None


def kept_records(records: list, journal_format: int, drop: Callable[[Any], bool],
                 decode: Decode | None, damaged: bool = False) -> tuple[list, int]:
    """`records` with those `drop` selects (seen through `decode`) left None, an empty slot
    that keeps its LSN; how many went. With `damaged` (a quarantined batch), a record the
    decoder cannot read goes too: it cannot be checked."""
    kept, gone = [], 0
    for r in records:
        if r is not None and _selected(r, journal_format, drop, decode, damaged):
            r, gone = None, gone + 1
        kept.append(r)
    return kept, gone


def _selected(record: Any, journal_format: int, drop: Callable[[Any], bool],
              decode: Decode | None, damaged: bool) -> bool:
    try:
        return drop(record if decode is None else decode(record, journal_format))
    except Exception:  # whatever a decoder raises on a damaged record
        if not damaged:
            raise
        return True


def scrub(path: Path, data: bytes, drop: Callable[[Any], bool], decode: Decode | None
          ) -> tuple[bytes, int, int]:
    """A quarantined file's bytes without what erasure drops (the module's text): (the bytes
    left, records dropped, bytes cut). A frame that loses no record is kept as it is, one
    that does is written anew (its CRC that of what is left, unless its own failed)."""
    parts, pos, dropped, cut = [], 0, 0, 0
    expect = int(path.name.split(".")[0])
    while pos < len(data):
        intact = _intact(data, pos)
        end = intact or _announced(data, pos)
        try:
            batch = None if end is None else _readable(data[pos + HEADER.size:end])
        except JournalFormatError as exc:
            if intact is not None:
                _kept_unread(f"{path}, the frame at byte {pos}", exc)
                parts.append(data[pos:end])
                pos = end
                continue
            batch = None  # damage that reads as a newer format: unreadable, as other damage
        if batch is None:
            after = _next_intact(data, pos, expect) or len(data)
            pos, cut = after, cut + after - pos
            continue
        first, records, journal_format = batch
        kept, gone = kept_records(records, journal_format, drop, decode, damaged=True)
        parts.append(frame(first, kept, journal_format, LENIENT, damaged=intact is None)
                     if gone else data[pos:end])
        pos, dropped, expect = end, dropped + gone, first + len(records)
    if dropped or cut:
        log.warning("%s: erasure rewrites it without %d records%s", path, dropped,
                    f" and {cut} bytes that decode as no batch" if cut else "")
    return b"".join(parts), dropped, cut


def scrub_batch(member: bytes, last_lsn: int, drop: Callable[[Any], bool],
                decode: Decode | None) -> tuple[bytes, int]:
    """A quarantined Redis batch (scored `last_lsn`) without what erasure drops, sealed as it
    was (a plain one stays plain, unchecked; a sealed one whose CRC failed keeps a failing
    CRC); the records dropped. One that does not decode becomes an empty batch ending at
    `last_lsn`."""
    try:
        unpacked, holds = _opened(member, LENIENT)  # raises no JournalFormatError
        batch = checked_shape(_contents(unpacked, holds, LENIENT))
    except JournalFormatError as exc:
        if holds is not False:
            _kept_unread(f"the quarantined batch scored {last_lsn}", exc)
            return member, 0
        batch = None  # damage that reads as a newer format: unreadable, as other damage
    except _UNREADABLE:
        batch = None
    if batch is None:
        return seal_batch(last_lsn + 1, []), 0
    first, records, journal_format = batch
    kept, gone = kept_records(records, journal_format, drop, decode, damaged=True)
    if not gone:
        return member, 0
    if holds is None:
        return pack_batch(first, kept, journal_format, LENIENT), gone
    return seal_batch(first, kept, journal_format, LENIENT, damaged=not holds), gone


def _kept_unread(where: str, exc: JournalFormatError) -> None:
    log.error("%s: %s; erasure keeps it as it is, unread: whatever records of the customers "
              "erased it holds stay in it", where, exc)


LENIENT = "surrogateescape"  # a damaged batch's strings, read and written back as they are
_UNREADABLE = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def _readable(payload: bytes) -> tuple[int, list, int] | None:
    """The batch a payload, perhaps damaged, decodes to (JournalFormatError: too new)."""
    try:
        return checked_shape(unpack_batch(payload, LENIENT))
    except JournalFormatError:
        raise
    except _UNREADABLE:
        return None


def checked_shape(batch: tuple) -> tuple[int, list, int]:
    """A batch as decoded, if it has a batch's types; TypeError if not (a plain batch's
    msgpack is read unchecked, and a frame's CRC vouches for bytes, not for what wrote them)."""
    first, records, journal_format = batch
    if isinstance(first, int) and isinstance(records, list) and \
            isinstance(journal_format, int):
        return batch
    raise TypeError(f"not [first LSN, records, format]: {type(first).__name__}, "
                    f"{type(records).__name__}, {type(journal_format).__name__}")


def _announced(data: bytes, pos: int) -> int | None:
    """The end of the frame at `pos` as its length says, if the data hold that much."""
    if pos + HEADER.size > len(data):
        return None
    length, _ = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    return end if length and end <= len(data) else None


def _first_of(data: bytes, at: int) -> int | None:
    """The msgpack unsigned int at `at`, if the bytes hold one."""
    tag = data[at]
    if tag < 0x80:
        return tag
    unpacker = _UINTS[tag]
    if at + 1 + unpacker.size > len(data):
        return None
    return unpacker.unpack_from(data, at + 1)[0]


def _misframed(data: bytes, pos: int) -> bool:
    """Whether the rest of the segment is one whole payload under a damaged length: the
    batch was written whole, so it is not torn."""
    if pos + HEADER.size >= len(data):
        return False
    _, crc = HEADER.unpack_from(data, pos)
    return zlib.crc32(data[pos + HEADER.size:]) == crc


def ambiguous_tail(data: bytes, pos: int) -> bool:
    """Whether a torn tail is as long as its header says: a power cut mid-write or a bit
    flip in the last acknowledged batch, which cannot be told apart. (A process killed
    mid-write leaves fewer bytes than the header announces.) A header of length 0 announces
    no batch (none is ever written): a tail of nothing but zeros is what a file system left
    past the last write, or preallocated, a torn tail too; bytes after a zeroed header are a
    damaged batch, which may have been acknowledged."""
    if pos + HEADER.size > len(data):
        return False
    length, _ = HEADER.unpack_from(data, pos)
    if length == 0:
        return bool(data[pos:].strip(b"\x00"))
    return pos + HEADER.size + length <= len(data)


def first_lsn(path: Path) -> int:
    """A segment's first LSN, from its name."""
    return int(path.name[:-len(SUFFIX)])
