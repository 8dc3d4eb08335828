"""A directory store's claim (store.py, "Ownership"; DirectoryStore's `claim`, `release` and
`claimed_by`): an exclusive flock on <root>/owner.lock, which the claiming process holds until
it releases the claim or ends (the kernel drops it with the process: a controller that died
holds nothing), with the holder's description and owner token written in the file, a line
each, for other claimants' errors and for `claimed_by`. Over NFSv4 the flock is the server's
lock, which every node that mounts the directory sees; the text is not: a client sends the
server what was written at a close, an fsync or an unlock, but the truncate at once, so the
claim fsyncs what it wrote before it counts as made. Even so a reader can meet the flock
held and the text not yet there (a claim between its truncate and its write) or without its
owner line (an older Kairos's controller): `claimed_by` says so with an empty owner, which
a shard takes as a claim it cannot read yet, not as another cluster's (ownership.py)."""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from kairos.cluster.storage.private_paths import FILE_MODE
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable

OWNER_FILE = "owner.lock"
CLAIM_PROBE_S = 0.05  # how long a claim waits out the shared flock of a `claimed_by`
# the stores this process holds (their real paths): the owner and the descriptor of the
# owner file whose flock it holds; one per directory, as a second open's flock would conflict
_held: dict[str, tuple[str, int]] = {}
_holding = threading.Lock()


def claim(root: Path, owner: str, holder: str) -> None:
    """Claim the directory for `owner` (`holder` describes it), or find it this process's
    claim of `owner` already; StoreInUse if another owner holds it, in this process or
    another."""
    real = os.path.realpath(root)
    with _holding:
        if real in _held:
            if _held[real][0] != owner:
                raise StoreInUse.of(str(root), _holder(root))
            return
        try:
            fd = os.open(root / OWNER_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StoreUnavailable(f"claiming the store {root}: {exc}") from exc
        try:
            _lock(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{holder}\n{owner}".encode())
            os.fsync(fd)  # on the server before the claim counts as made (NFS: module doc)
        except BlockingIOError:
            os.close(fd)
            raise StoreInUse.of(str(root), _holder(root)) from None
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailable(f"claiming the store {root}: {exc}") from exc
        _held[real] = (owner, fd)


def release(root: Path, owner: str) -> None:
    """Give the claim up, if this process holds it for `owner`."""
    real = os.path.realpath(root)
    with _holding:
        if real in _held and _held[real][0] == owner:
            os.close(_held.pop(real)[1])  # and with it the flock


def claimed_by(root: Path) -> tuple[str, str] | None:
    """(owner, holder) as owner.lock says while a process holds its flock, else None: tried
    with a shared flock of a read-only descriptor, which writes nothing and is let go at once
    (a claim that meets it waits it out: `_lock`). The owner is "" where the file names none
    (yet): a claim being written, or an older Kairos's, which wrote the holder alone. A
    missing directory holds no claim."""
    try:
        fd = os.open(root / OWNER_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"reading the claim on the store {root}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it exclusively: no claim
    except BlockingIOError:
        holder, _, owner = _text(root).partition("\n")
        return owner, holder
    except OSError as exc:
        raise StoreUnavailable(f"reading the claim on the store {root}: {exc}") from exc
    finally:
        os.close(fd)  # and with it the shared flock, where it was taken


def _lock(fd: int) -> None:
    """An exclusive flock on `fd`, or BlockingIOError where another descriptor holds one
    past CLAIM_PROBE_S: a `claimed_by` holds its shared one for microseconds."""
    deadline = time.monotonic() + CLAIM_PROBE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(CLAIM_PROBE_S / 10)


def _holder(root: Path) -> str:
    """What the holder of the store wrote of itself (empty while it is writing)."""
    return _text(root).partition("\n")[0]


def _text(root: Path) -> str:
    try:
        return (root / OWNER_FILE).read_text(errors="replace").strip()
    except OSError:
        return ""
