"""This user's own files and directories on a machine others share: $KAIROS_HOME (the run's
record, its lock, the logs of `ray start` and of the console) and the directory `kairos up`
keeps Ray's temp dir in.

A directory is used only when it is this user's and no one else may write it (another user
could otherwise replace the record `kairos down` stops processes by, or plant a link where a
log is written); a file in one is opened without following a link (O_NOFOLLOW) and made
readable by this user only. The record is written to a temp file of a name of its own, then
renamed over the old one.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO

# no link followed, and not inherited by the processes `kairos up` starts
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def own_dir(path: Path, what: str, closed: int = 0o022) -> Path:
    """`path`, made (mode 0700) if it is missing: SystemExit, naming it as `what`, if it cannot
    be, or is not a directory of this user's without the mode bits `closed` (default: that
    only this user may write). In a directory others may write (/tmp), where anyone may have
    made it first, it must be no link."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        shared = os.stat(path.absolute().parent).st_mode & stat.S_IWOTH
        st = os.lstat(path) if shared else os.stat(path)
    except OSError as exc:
        raise SystemExit(f"error: {exc.filename}: {exc.strerror} ({what} must be a directory "
                         f"this user may write)") from None
    check_dir(path, st, what, closed)
    return path


def check_dir(path: Path, st: os.stat_result, what: str, closed: int = 0o022) -> None:
    """SystemExit unless `st` is that of a directory of this user's without the mode bits
    `closed` (default: group and others may not write it)."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise SystemExit(f"error: {path} is not a directory: {what} must be a directory")
    if st.st_uid != os.geteuid():
        raise SystemExit(f"error: {path} is owned by uid {st.st_uid}, not by this user (uid "
                         f"{os.geteuid()}): {what} must be this user's own directory")
    if mode & closed:
        raise SystemExit(f"error: {path} has mode {mode:04o}: other users could reach or replace "
                         f"what Kairos keeps there ({what}); `chmod 700 {path}`")


def read_own(path: Path) -> str:
    """The text of a file of this user's, not through a link (OSError: ELOOP for a link);
    SystemExit for another user's."""
    with os.fdopen(os.open(path, os.O_RDONLY | NO_FOLLOW), encoding="utf-8") as f:
        owner = os.fstat(f.fileno()).st_uid
        if owner != os.geteuid():
            raise SystemExit(f"error: {path} is owned by uid {owner}, not by this user: it is "
                             f"not this user's record; remove it")
        return f.read()


def write_own(path: Path, text: str) -> None:
    """`text` as `path`'s whole content, readable by this user only, at once: a temp file of a
    name of its own in the same directory, renamed over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def fresh_log(path: Path) -> IO[str]:
    """`path` opened for writing, emptied (a log of this run only), readable by this user
    only, not through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NO_FOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # one an older Kairos made under the umask
    return os.fdopen(fd, "w")


def lock_file(path: Path) -> int:
    """A descriptor of `path` to lock, made (0600) if missing: never emptied, nor a link
    followed."""
    return os.open(path, os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o600)
