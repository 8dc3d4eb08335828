"""A store's paths are their owner's only (DESIGN.md "Security defaults"): taking the
group's and others' bits off a path an older Kairos, or a loose umask, left open, and
making new directories so (`make_private_dir`)."""
from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from kairos.cluster.storage.frames import fsync_directory

log = logging.getLogger("kairos.store")
DIR_MODE = 0o700  # every directory of a store: its owner's only
FILE_MODE = 0o600  # every file of a store


def make_private(path: Path) -> None:
    """Take the group's and others' permission bits off an existing path, with a warning (an
    older Kairos, or another tool, made it by the umask); PermissionError where this user may
    not (it is not the owner)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & ~0o077)
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"{path} has mode {mode:04o} and cannot be made its "
                                         f"owner's only ({exc.strerror}); a store's files must "
                                         f"not be readable by others", str(path)) from None
    log.warning("%s had mode %04o: made it %04o (a store's files are its owner's only)",
                path, mode, mode & ~0o077)


def make_private_dir(directory: Path) -> None:
    """Create `directory` and its missing parents with mode 0700 (whatever the umask), each
    synced into its parent (a crash must not lose a directory a file was written into), or
    make an existing one private (`make_private`)."""
    missing = []
    path = Path(directory)
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another shard process was first
            os.mkdir(path, DIR_MODE)
        fsync_directory(path.parent)  # its maker may not have yet
    make_private(Path(directory))
