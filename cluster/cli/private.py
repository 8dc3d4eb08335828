"""This user's own files and directories on a machine others share: $KAIROS_HOME (the run's
record, its lock, the logs of `ray start` and of the console) and the directory `kairos up`
keeps Ray's temp dir in.

A directory is used only when it is this user's and no one else may write it (another user
could otherwise replace the record `kairos down` stops processes by, or plant a link where a
log is written); a link is followed to one such, except in a directory others may write (/tmp),
where anyone may have made it first. Only `kairos up` and the console's first key change the
mode of $KAIROS_HOME (to 0700), and only of a home that is Kairos's own (the default ~/.kairos,
or one holding nothing but what Kairos keeps): the user's own home directory, or a team's, is
not Kairos's to close, and is refused there. Other commands (`status`, `down`) use a home that
others may only read or enter as it is: the record and the logs in it are 0600 themselves. The
folder of Ray's temp dir, which Ray fills with folders of mode 0777, must be no link, and closed
to every other user. A file in one is opened without following a link (O_NOFOLLOW) and made
readable by this user only. The record is written to a temp file of a name of its own, then
renamed over the old one.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import IO, Callable

from kairos.cluster import whole_files

# no link followed, and not inherited by the processes `kairos up` starts
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_HOME = "~/.kairos"
# what Kairos keeps in $KAIROS_HOME (local's, the console's and the store's names: a test keeps
# them equal), and the temp files of the record (write_own: .run.json.XXXXXXXX.partial)
HOME_NAMES = frozenset({"run.json", "up.lock", "ray-start.log", "console.log",
                        "console-keys.yaml", "store", "ray"})
OTHERS_WRITE = 0o022  # group or other users may write


def own_dir(path: Path, what: str) -> Path:
    """`path`, made (mode 0700) if it is missing, and checked as check_own_dir does; SystemExit,
    naming it as `what`, if it cannot be made or entered."""
    return _made(path, what, check_own_dir)


def own_home(path: Path, what: str) -> Path:
    """$KAIROS_HOME `path` for `kairos up` and the console's first key: made (0700) if missing,
    checked as check_own_dir does, and, where others may read or enter it, made 0700 (said) if
    it is Kairos's own (_kairos_own), refused otherwise; a link to a directory others may only
    read or enter is used as it is (its target is the operator's choice)."""
    return _made(path, what, _close_home)


def closed_dir(path: Path, what: str) -> Path:
    """`path`, made (0700) if missing: SystemExit unless it is itself (no link) a directory of
    this user's that no other user may enter (the folder of Ray's temp dir: Ray makes its own
    folders in it 0777, and this one is all that keeps others out)."""
    return _made(path, what, _check_closed)


def _made(path: Path, what: str, check: Callable[[Path, str], object]) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check(path, what)
    except OSError as exc:
        raise SystemExit(f"error: {exc.filename}: {exc.strerror} ({what} must be a directory "
                         f"this user may write)") from None
    return path


def check_own_dir(path: Path, what: str) -> os.stat_result:
    """SystemExit unless `path` is a directory of this user's that no other user may write (a
    link is followed to one, except in a directory others may write, /tmp, where anyone may
    have made it first); its stat. Nothing is changed. OSError (FileNotFoundError: missing)
    when it cannot be looked at."""
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
    if mode & OTHERS_WRITE:
        who = "other users" if mode & 0o002 else f"the members of its group ({st.st_gid})"
        has = "links to a directory of mode" if link else "has mode"
        raise SystemExit(f"error: {path} {has} {mode:04o}: {who} could replace what Kairos "
                         f"keeps there ({what}); `chmod 700 {path}`, or choose a directory of "
                         f"this user's only")
    return st


def _check_closed(path: Path, what: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SystemExit(f"error: {path} is a link: {what} must be a directory of this user's "
                         f"only, not a link to one; remove it")
    mode = stat.S_IMODE(check_own_dir(path, what).st_mode)
    if mode & 0o077:
        raise SystemExit(f"error: {path} has mode {mode:04o}: other users could reach what "
                         f"Kairos keeps there ({what}); `chmod 700 {path}`")


def _close_home(path: Path, what: str) -> None:
    st = check_own_dir(path, what)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or stat.S_ISLNK(os.lstat(path).st_mode):  # a link's: left as it is
        return
    if not _kairos_own(path, st):
        raise SystemExit(f"error: {path} has mode {mode:04o}: other users could list what "
                         f"Kairos keeps there ({what}), and it holds more than Kairos's files; "
                         f"`chmod 700 {path}`, or choose a directory of this user's only")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW)  # the directory looked at
    try:
        os.fchmod(fd, 0o700)
        now = stat.S_IMODE(os.fstat(fd).st_mode)  # a filesystem may keep modes of its own
    except OSError as exc:
        raise SystemExit(f"error: {path} has mode {mode:04o} and cannot be made 0700 "
                         f"({exc.strerror}): {what} must be a directory of this user's only")
    finally:
        os.close(fd)
    if now & 0o077:
        raise SystemExit(f"error: {path} has mode {mode:04o} and stays {now:04o} after `chmod "
                         f"700` (its filesystem keeps modes of its own): {what} must be a "
                         f"directory of this user's only")
    print(f"note: {path} had mode {mode:04o}: made 0700, this user's only ({what})",
          file=sys.stderr)


def _kairos_own(path: Path, st: os.stat_result) -> bool:
    """Whether the directory `path` (of stat `st`) is Kairos's to close: never the user's home
    directory itself; the default $KAIROS_HOME, or one that holds only what Kairos keeps."""
    def same(other: str) -> bool:
        try:
            return os.path.samestat(os.stat(other), st)
        except OSError:
            return False

    if same(os.path.expanduser("~")):
        return False
    return same(os.path.expanduser(DEFAULT_HOME)) or all(
        name in HOME_NAMES or name.startswith(".run.json.") for name in os.listdir(path))


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
    """`text` as `path`'s whole content, readable by this user only, at once."""
    with whole_files.replacing(path) as f:
        f.write(text.encode())


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
