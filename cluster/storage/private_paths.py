"""A store's paths are their owner's only (DESIGN.md "Security defaults"): taking the
group's and others' bits off a path an older Kairos, or a loose umask, left open."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("kairos.store")


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
