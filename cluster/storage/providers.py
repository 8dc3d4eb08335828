"""The store a URL names (`open_store`). The one module that imports every implementation;
they import only the interface (store.py), so no module imports one that imports it back."""
from __future__ import annotations

import os
from urllib.parse import urlparse

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import Store, redact

__all__ = ["open_store", "redact"]


def open_store(url: str) -> Store:
    """`memory`, a directory path (or `file:///path`), or `redis://host:port/db[?prefix=p]`."""
    if url == "memory":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url.startswith("file://"):
        url = urlparse(url).path
    if "://" in url:
        raise ValueError(f"unknown store {redact(url)!r}: use 'memory', a directory, or "
                         f"redis://host:port/db")
    return DirectoryStore(os.path.expanduser(url))
