"""A directory store's claim (store.py, "Ownership"; DirectoryStore's `claim` and `release`):
an exclusive flock on <root>/owner.lock, which the claiming process holds until it releases
the claim or ends (the kernel drops it with the process: a controller that died holds
nothing), with the holder's description written in the file for other claimants' errors."""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from kairos.cluster.storage.private_paths import FILE_MODE
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable

OWNER_FILE = "owner.lock"
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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, holder.encode())
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


def _holder(root: Path) -> str:
    """What the holder of the store wrote of itself (empty while it is writing)."""
    try:
        return (root / OWNER_FILE).read_text(errors="replace").strip()
    except OSError:
        return ""
