"""Faults injected into the storage layer: a disk that fails once."""
from __future__ import annotations

import errno
import os

import pytest

from kairos.cluster.storage import journal as journal_module


def fsync_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The journal's next fsync fails with EIO, later ones work; the descriptors it failed
    (one, once it did)."""
    fsync, failures = os.fsync, []

    def fails_once(fd: int) -> None:
        if not failures:
            failures.append(fd)
            raise OSError(errno.EIO, "I/O error")
        fsync(fd)
    monkeypatch.setattr(journal_module.os, "fsync", fails_once)
    return failures
