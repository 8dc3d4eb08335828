"""This user's own files and directories on a machine others share: $KAIROS_HOME (the run's
record, its lock, the logs of `ray start` and of the console) and the directory `kairos up`
keeps Ray's temp dir in.

A directory is used only when it is this user's, and made 0700 when it is not yet (another
user could otherwise replace the record `kairos down` stops processes by, or plant a link where
a log is written); one it links to is left as it is, and refused where others may write it.
A file in one is opened without following a link (O_NOFOLLOW) and made readable by this user
only. The record is written to a temp file of a name of its own, then renamed over the old
one.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO

# no link followed, and not inherited by the processes `kairos up` starts
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def own_dir(path: Path, what: str) -> Path:
    """`path`, made (mode 0700) if it is missing, and checked as check_own_dir does; SystemExit,
    naming it as `what`, if it cannot be made or entered."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_own_dir(path, what)
    except OSError as exc:
        raise SystemExit(f"error: {exc.filename}: {exc.strerror} ({what} must be a directory "
                         f"this user may write)") from None
    return path


def check_own_dir(path: Path, what: str) -> None:
    """SystemExit unless `path` is a directory of this user's; one that others may enter is
    made 0700, and said (one made under a umask of 002, or by an older Kairos, 0755). A link
    is followed, to a directory that others may not write (it is left as it is), except in a
    directory others may write (/tmp), where anyone may have made it first. OSError
    (FileNotFoundError: missing) when it cannot be looked at."""
    st = os.lstat(path)
    link = stat.S_ISLNK(st.st_mode)
    if link and not os.stat(path.absolute().parent).st_mode & stat.S_IWOTH:
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SystemExit(f"error: {path} is not a directory: {what} must be a directory")
    if st.st_uid != os.geteuid():
        raise SystemExit(f"error: {path} is owned by uid {st.st_uid}, not by this user (uid "
                         f"{os.geteuid()}): {what} must be this user's own directory")
    mode = stat.S_IMODE(st.st_mode)
    if link:  # its target is not this command's to change: refused only where others write
        if mode & 0o022:
            who = "other users" if mode & 0o002 else f"the members of its group ({st.st_gid})"
            raise SystemExit(f"error: {path} links to a directory of mode {mode:04o}: {who} "
                             f"could replace what Kairos keeps there ({what}); `chmod 700` it, "
                             f"or choose a directory of this user's only")
        return
    if not mode & 0o077:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW)  # the directory looked at
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    print(f"note: {path} had mode {mode:04o}: made 0700, this user's only ({what})",
          file=sys.stderr)


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
