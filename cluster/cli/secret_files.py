"""Files that hold secrets (API keys, a TLS private key) are read only when they are their
reader's own and no one else may read them, as ssh does with its keys."""
from __future__ import annotations

import os
import stat


class SecretFileError(Exception):
    """A file holding a secret that others may read, or that another user owns."""


def check_secret_file(path: str, option: str) -> None:
    """Refuse (SecretFileError) a secret's file (API keys, a TLS private key) that the group or
    others may use, or that is not this user's; a file that cannot be stat'ed is left to the
    read that follows (its error names it)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise SecretFileError(
            f"{option} {path} is owned by uid {st.st_uid}, not by this user (uid "
            f"{os.geteuid()}): a secret's file must be its reader's own (copy it, then "
            f"`chmod 600 {path}`)")
    if mode & 0o077:
        raise SecretFileError(
            f"{option} {path} has mode {mode:04o}: group or others can read it, and it holds a "
            f"secret; make it yours only with `chmod 600 {path}`")
