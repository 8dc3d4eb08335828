"""Ray's temp dir for the Ray `kairos up` starts: where it goes, and what of it `kairos down`
removes once that Ray has stopped.

Ray's own default, /tmp/ray, is shared: Ray makes its temp dir and session directories
writable by every user, who could read its logs or replace its sockets. So `kairos up` keeps
it in a directory only this user may enter: $KAIROS_HOME/ray, or, where Ray's socket paths
under that would be too long, a directory of its own in /tmp of a name no one can make first
(mkdtemp). Ray makes one session directory per cluster in it, session_<date>_<pid> (the head's
`ray start`, at its start); as it is no longer in /tmp, which a reboot empties, `kairos down`
removes the run's own, and the links Ray put next to them into them (session_latest, its
Prometheus discovery file's), never anything else: other clusters' sessions in an operator's
--ray-temp-dir or RAY_TMPDIR are left alone.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import sys
import tempfile

# the longest Unix socket path Ray makes under its temp dir: the 16th node's object store's, in
# the session's directory, named by the head's start (to the microsecond) and pid (pid_max's
# largest: 7 digits)
RAY_SOCKET = "session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.15"
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # a socket path's bytes, as Ray checks
SHARED = "/tmp"  # where the fallback is made: short, on every machine
HOW_TO_CHOOSE = ("choose another with --ray-temp-dir DIR or RAY_TMPDIR (Ray's temp dir is then "
                 "$RAY_TMPDIR/ray), or a shorter KAIROS_HOME")
SESSION = re.compile(r"session_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6})_(\d+)")


def socket_paths_fit(temp_dir: str) -> bool:
    """Whether the longest Unix socket path Ray makes under `temp_dir` fits in one."""
    return len(os.path.join(temp_dir, RAY_SOCKET).encode()) <= SOCKET_PATH_MAX


def fallback_prefix() -> str:
    return f"kairos-ray-{os.geteuid()}-"


def make_fallback() -> str:
    """A new directory in /tmp that only this user may enter, of a name no one could have made
    first (mkdtemp: 0700, made atomically), and Ray's temp dir in it."""
    path = os.path.join(tempfile.mkdtemp(prefix=fallback_prefix(), dir=SHARED), "tmp")
    os.mkdir(path, 0o700)
    return path


def forget_ray_address(temp_dir: str, ray_port: int) -> None:
    """Remove Ray's record of the latest cluster (<temp dir>/ray_current_cluster) when it
    names the port of the run's GCS: a later `ray.init()` would otherwise wait on a cluster that
    is gone."""
    path = os.path.join(temp_dir, "ray_current_cluster")
    with contextlib.suppress(OSError):
        with open(path) as f:
            ours = f.read().strip().endswith(f":{ray_port}")
        if ours:
            os.unlink(path)


def remove_sessions(temp_dir: str, head_pid: int, since: float, until: float) -> list[str]:
    """Remove, from Ray's temp dir `temp_dir`, the session directories a Ray whose head `ray
    start` had process id `head_pid` made from `since` to `until` (time.time()s: the head's
    start; a later `ray start` of that id is another's, its pid reused), and the links
    next to them that point into them; then the temp dir and its folder when they are a
    fallback of make_fallback's left empty. No link is followed, nor another user's directory
    removed. The names removed."""
    try:
        with os.scandir(temp_dir) as entries:
            found = list(entries)
    except OSError:  # never made, or gone
        found = []
    ours = [e for e in found if _ours(e, head_pid, since, until)]
    for entry in ours:
        shutil.rmtree(entry.path, ignore_errors=True)  # never follows a link (fd-based)
    names = {e.name for e in ours}
    for entry in found:
        with contextlib.suppress(OSError):
            if entry.is_symlink() and _into(os.readlink(entry.path), temp_dir) in names:
                os.unlink(entry.path)
    parent = os.path.dirname(temp_dir)
    if os.path.dirname(parent) == SHARED and os.path.basename(parent).startswith(
            fallback_prefix()) and os.path.basename(temp_dir) == "tmp":
        with contextlib.suppress(OSError):  # not empty: something else is in it, left
            os.rmdir(temp_dir)
            os.rmdir(parent)
    return sorted(names)


def _ours(entry: os.DirEntry, head_pid: int, since: float, until: float) -> bool:
    """A session directory (no link) of this user's, of the run's head, made while it started
    (Ray names it by the local time of its start, to the microsecond)."""
    match = SESSION.fullmatch(entry.name)
    try:
        if not (match and int(match[2]) == head_pid and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.geteuid()):
            return False
        made = datetime.datetime.strptime(match[1], "%Y-%m-%d_%H-%M-%S_%f").timestamp()
    except (OSError, ValueError):
        return False
    return since - 1.0 <= made <= until  # - 1 s: the clock's, as Ray and time.time() read it


def _into(target: str, temp_dir: str) -> str:
    """The name of the entry of `temp_dir` a link's `target` lies in ("" for none)."""
    relative = os.path.relpath(os.path.join(temp_dir, target), temp_dir)
    first = relative.split(os.sep)[0]
    return "" if first in (os.curdir, os.pardir) else first
