"""Files that hold secrets (API keys, a TLS private key) are read only when they are their
reader's own and no one else may read them, as ssh does with its keys, or when they are a
secret as Kubernetes mounts one for a pod's user: root's, read-only, readable by a group of
the reader's and by no one else (a Secret volume with `defaultMode: 0440` and the pod's
`fsGroup`)."""
from __future__ import annotations

import os
import stat

PROJECTED_MODES = 0o440  # the only bits a root-owned secret may have: read, owner and group
AS_KUBERNETES_MOUNTS = ("; or mount it as Kubernetes mounts a Secret: root's, mode 0440, in a "
                        "group of this process's (a Secret volume's defaultMode: 0440 and the "
                        "pod's fsGroup)")


class SecretFileError(Exception):
    """A file holding a secret that others may read, or that another user owns."""


def check_secret_file(path: str, option: str) -> None:
    """Refuse (SecretFileError) a secret's file (API keys, a TLS private key) that the group or
    others may use, or that is not this user's, unless it is mounted as Kubernetes mounts a
    Secret (`projected`); a file that cannot be stat'ed is left to the read that follows (its
    error names it)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if projected(st):
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
    """Whether a file is a secret as the kubelet projects one for a pod that does not run as
    root: root's, readable and not writable by its group, which is one of this process's (the
    pod's fsGroup, which only the pod's processes have), nothing for others."""
    mode = stat.S_IMODE(st.st_mode)
    return (st.st_uid == 0 and bool(mode & 0o040) and not mode & ~PROJECTED_MODES
            and st.st_gid in {os.getegid(), *os.getgroups()})
