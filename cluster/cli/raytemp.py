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
--ray-temp-dir or RAY_TMPDIR are left alone. The run's is known by its exact name, read from
session_latest as the head's `ray start` returns (no other process could have had its id while
it ran), and recorded; a pid and a time window alone, looked for at `kairos down`,
could be another cluster's (a `ray start` given the same id since) or missed (another TZ).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import stat
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


def session_of(temp_dir: str, head_pid: int, since: float, until: float) -> str:
    """The name of the session directory that the head's `ray start` (process `head_pid`, alive
    from `since` to `until`: no other process had its id meanwhile) made in `temp_dir`, as
    Ray's session_latest link there names it; "" where that names none of its (another
    cluster's, started since in the same temp dir, or none: Ray stopped before making it)."""
    try:
        name = _into(os.readlink(os.path.join(temp_dir, "session_latest")), temp_dir)
        st = os.lstat(os.path.join(temp_dir, name))
    except OSError:
        return ""
    match = SESSION.fullmatch(name)
    if not (match and int(match[2]) == head_pid and _own_dir(st)):
        return ""
    try:  # Ray names it by the local time of its start, to the microsecond
        made = datetime.datetime.strptime(match[1], "%Y-%m-%d_%H-%M-%S_%f").timestamp()
    except ValueError:
        return ""
    return name if since - 1.0 <= made <= until else ""  # - 1 s: the clocks' readings


def remove_session(temp_dir: str, name: str) -> None:
    """Remove, from Ray's temp dir `temp_dir`, the session directory `name` (session_of's: a
    directory of this user's, no link) and the links next to it that point into it; then the
    temp dir and its folder when they are a fallback of make_fallback's left empty. No link is
    followed. `name` "": none is removed (a record of an older Kairos)."""
    path = os.path.join(temp_dir, name)
    with contextlib.suppress(OSError):
        if SESSION.fullmatch(name) and _own_dir(os.lstat(path)):
            shutil.rmtree(path, ignore_errors=True)  # never follows a link (fd-based)
            with os.scandir(temp_dir) as entries:
                links = [e.path for e in entries if e.is_symlink()]
            for link in links:
                with contextlib.suppress(OSError):
                    if _into(os.readlink(link), temp_dir) == name:
                        os.unlink(link)
    parent = os.path.dirname(temp_dir)
    if os.path.dirname(parent) == SHARED and os.path.basename(parent).startswith(
            fallback_prefix()) and os.path.basename(temp_dir) == "tmp":
        with contextlib.suppress(OSError):  # not empty: something else is in it, left
            os.rmdir(temp_dir)
            os.rmdir(parent)


def _own_dir(st: os.stat_result) -> bool:
    """A directory (no link) of this user's."""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _into(target: str, temp_dir: str) -> str:
    """The name of the entry of `temp_dir` a link's `target` lies in ("" for none)."""
    relative = os.path.relpath(os.path.join(temp_dir, target), temp_dir)
    first = relative.split(os.sep)[0]
    return "" if first in (os.curdir, os.pardir) else first
