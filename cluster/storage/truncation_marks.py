"""Truncation marks: how far a journal was truncated, so that replay can tell a journal that
starts late because truncation moved its start from one that lost its first records.

Replay (journal.py, redis_journal.py) checks that LSNs follow on from one segment (Redis: batch)
read to the next, but the first one read has none before it: a segment deleted right after a
snapshot's LSN (rather than quarantined), or a Redis batch removed there, would go unseen, and
the acknowledged records it held with it. So truncation records how far it went, the mark: a
directory journal in the file `trimmed` beside its segments (written whole before any segment
goes: a temporary file fsynced and renamed, the directory fsynced), Redis in the key
`<journal>:trimmed`, set in the transaction that removes the batches. The first record replay
reads must then start by `max(after_lsn, mark) + 1` (`limit`), unless a recorded gap accepts
the jump; else replay raises the error a gap between segments (batches) gives, with its way out.

A journal without a mark is given one where it starts: a directory journal by its writer when
it opens it (0 for an empty one); a Redis journal with its first batch (0), and, written by a
Kairos from before marks, at its next truncation (opening it writes nothing: a server short of
the replicas asked for refuses every write). That accepts whatever a deletion took from the
head of an older journal before (as an older Kairos did, which had no way to tell) and catches
any deletion after. Until then a journal is read as before, its start unchecked; so is one
whose mark does not read as an LSN (its writer marks it anew): a weaker check, never a false
one. A mark only grows, so that it never claims less than truncation removed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import redis

from kairos.cluster.storage.frames import GAP, first_lsn, fsync_directory, written
from kairos.cluster.storage.private_paths import FILE_MODE
from kairos.cluster.storage.redis_errors import unavailable

MARK = "trimmed"  # in a directory journal; `<journal key>:trimmed` in Redis


def limit(after_lsn: int, mark: int | None) -> int | None:
    """The LSN the first record read after `after_lsn` must start by: the one after what a
    snapshot (`after_lsn`) or truncation (`mark`) covers; None (any) without a mark."""
    return None if mark is None else max(after_lsn, mark) + 1


def parsed(value: bytes | None) -> int | None:
    """A stored mark's LSN; None for none, or one that does not read as an LSN."""
    return int(value) if value is not None and value.isdigit() else None


def read(directory: Path) -> int | None:
    try:
        return parsed((directory / MARK).read_bytes())
    except FileNotFoundError:
        return None


def write(directory: Path, lsn: int, durable: bool = True) -> None:
    """Mark a directory journal truncated up to `lsn`, replacing its mark whole; `durable`:
    its name too (the directory fsynced)."""
    os.replace(written(directory / f"{MARK}.tmp", str(lsn).encode(), FILE_MODE),
               directory / MARK)
    if durable:
        fsync_directory(directory)


def opened(directory: Path, start: int) -> int:
    """A directory journal's mark as its writer opens it: `start`, where the journal starts
    now, written if it had none (the module's text). Its name may not survive a power cut
    (opening fsyncs no directory): the next opening then marks the journal where it starts,
    as this one did. A truncation's mark must (`write`): the older one left behind would claim
    the journal still holds LSNs it removed."""
    mark = read(directory)
    if mark is None:
        write(directory, start, durable=False)
    return start if mark is None else mark


def expected_start(directory: Path, after_lsn: int, segment: Path,
                   quarantined: Iterable[int]) -> int | None:
    """Where the first segment replay reads after `after_lsn` must start (called once the
    segments are listed: truncation marks before it removes any); None (anywhere) without a
    mark. Its own start if that is by `limit`'s LSN; else the last gap (recorded, or a file
    in `quarantined`) starting by then, which may reach past it (frames.py `past_gaps` walks
    the gaps from there), or that LSN itself."""
    by = limit(after_lsn, mark := read(directory))
    if by is None:
        return None
    if first_lsn(segment) <= by:
        return first_lsn(segment)
    # a file quarantined at or before the mark is not taken to reach past it: its LSNs are not
    # known, and one left from long before (an accepted gap's `.lost`) hid a deletion since
    starts = [*(int(path.name[:-len(GAP)]) for path in directory.glob(f"*{GAP}")),
              *(lsn for lsn in quarantined if mark is None or lsn > mark)]
    return max((lsn for lsn in starts if lsn <= by), default=by)


@unavailable("reading the journal's truncation mark")
def redis_read(client: redis.Redis, key: str) -> int | None:
    """The mark of the Redis journal `key` (read after a page of its batches: truncation sets
    it in the transaction that removes them)."""
    return parsed(client.get(f"{key}:{MARK}"))


def redis_first(key: str, last: bytes | None) -> tuple[tuple, ...]:
    """The command marking the Redis journal `key`, whose last-LSN key holds `last` (None: it
    never held a batch), as starting at LSN 1, sent with its first batch; none for a journal
    that held one (NX: never over a mark)."""
    return () if last is not None else (("SET", f"{key}:{MARK}", 0, "NX"),)


@unavailable("reading where the journal starts")
def redis_start(client: redis.Redis, key: str, last_lsn: int) -> int:
    """Where the Redis journal `key` starts now, as a mark for one without (the module's text):
    the LSN before its first batch's last, as strict as the one before its first (a batch is
    removed whole); its last LSN if it holds none."""
    first = client.zrange(key, 0, 0, withscores=True)
    return int(first[0][1]) - 1 if first else last_lsn
