"""Files that hold secrets (API keys, a TLS private key, the store's password) are read only
when they are their reader's own and no one else may read them, as ssh does with its keys, or
when they are a secret as Kubernetes mounts one for a pod's user: root's, read-only, readable
by a group of the reader's and by no one else (a Secret volume with `defaultMode: 0440` and
the pod's `fsGroup`), reached through the volume's own layout. That layout is what ties the
group to a pod: on a host, a root-owned 0440 file in a group every user shares (`users`) is
readable by all of them, and is refused."""
from __future__ import annotations

import os
import stat

PROJECTED_MODES = 0o440  # the only bits a root-owned secret may have: read, owner and group
# the kubelet's Secret volume (its AtomicWriter): DIR/NAME -> ..data/NAME, DIR/..data ->
# ..<timestamp>, the files in DIR/..<timestamp>/
VOLUME_DATA = "..data"
AS_KUBERNETES_MOUNTS = ("; or mount it as Kubernetes mounts a Secret volume (not with "
                        "subPath): root's, mode 0440, in a group of this process's (the "
                        "volume's defaultMode: 0440 and the pod's fsGroup), under the volume's "
                        f"{VOLUME_DATA} link")


class SecretFileError(Exception):
    """A file holding a secret that others may read, or that another user owns."""


def check_secret_file(path: str, option: str) -> None:
    """Refuse (SecretFileError) a secret's file (API keys, a TLS private key) that the group or
    others may use, or that is not this user's, unless it is mounted as Kubernetes mounts a
    Secret (`projected`, in a Secret volume); a file that cannot be stat'ed is left to the
    read that follows (its error names it)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if projected(st) and in_secret_volume(path):
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise SecretFileError(
            f"{option} {path} is owned by uid {st.st_uid} (group {st.st_gid}, mode "
            f"{mode:04o}), not by this user (uid {os.geteuid()}): a secret's file must be its "
            f"reader's own (copy it, then `chmod 600 {path}`){AS_KUBERNETES_MOUNTS}")
    if mode & 0o077:
        raise SecretFileError(
            f"{option} {path} has mode {mode:04o}: group or others can read it, and it holds a "
            f"secret; make it yours only with `chmod 600 {path}`")


def projected(st: os.stat_result) -> bool:
    """Whether a file's owner, group and mode are a secret's as the kubelet projects one for a
    pod that does not run as root: root's, readable and not writable by its group, which is
    one of this process's (the pod's fsGroup), nothing for others."""
    mode = stat.S_IMODE(st.st_mode)
    return (st.st_uid == 0 and bool(mode & 0o040) and not mode & ~PROJECTED_MODES
            and st.st_gid in {os.getegid(), *os.getgroups()})


def in_secret_volume(path: str) -> bool:
    """Whether `path` is a file of a Secret volume as the kubelet lays one out: in a directory
    (the nearest of its own or its parents' with a `..data` link) whose `..data` links to a
    `..<timestamp>` directory beside it, reached through a link there (NAME or `..data`
    itself), and resolving to a file inside that `..<timestamp>` directory."""
    path = os.path.abspath(path)
    volume = os.path.dirname(path)
    while not os.path.islink(os.path.join(volume, VOLUME_DATA)):
        if volume == os.path.dirname(volume):
            return False
        volume = os.path.dirname(volume)
    data = os.path.join(volume, VOLUME_DATA)
    version = os.readlink(data)
    payload = os.path.realpath(data)
    first = os.path.relpath(path, volume).split(os.sep)[0]
    return (version.startswith("..") and os.sep not in version and version != VOLUME_DATA
            and payload == os.path.join(os.path.realpath(volume), version)
            and os.path.isdir(payload) and not os.path.islink(os.path.join(volume, version))
            and os.path.islink(os.path.join(volume, first))
            and os.path.realpath(path).startswith(payload + os.sep))
