"""Files that are whole or absent: written under a name of their own beside their path, then
renamed over it. A name made anew (mkstemp: O_EXCL, 0600) and written through its descriptor,
so a link planted under the path, or under a fixed temporary name, in a folder others share is
replaced, never followed, and two writers of one path never take each other's file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def replacing(path: Path, mode: int | None = None, sync: bool = False) -> Iterator[BinaryIO]:
    """A new file beside `path` to write, renamed over `path` once the block ends, removed if it
    raises. `mode`: the file's, for one others may read (mkstemp's 0600 otherwise); `sync`: on
    disk before its name says it is whole (the folder's entry is the caller's to sync). OSError
    from making it (a folder that is not there, or not this user's) comes as the block starts."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
