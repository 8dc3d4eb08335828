"""Sealed snapshots: a snapshot's bytes behind a checksum, so damage is seen, not misread.

A sealed blob is MAGIC, the 16-byte BLAKE2b digest of the payload, then the payload. A blob
without MAGIC is a snapshot written before snapshots were sealed (format 1: a msgpack map,
whose first byte is never MAGIC's): it is read as it is, unchecked, and `unseal` says so.
"""
from __future__ import annotations

import hashlib

from kairos.cluster.storage.store import StoreCorrupt

MAGIC = b"KSN\x02"
DIGEST = 16


class SnapshotCorrupt(StoreCorrupt):
    """A snapshot's checksum fails, or its contents do not hold together."""


def seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.blake2b(payload, digest_size=DIGEST).digest() + payload


def unseal(blob: bytes, what: str) -> tuple[bytes, bool]:
    """(payload, whether it was checked); SnapshotCorrupt naming `what` if the digest
    fails."""
    if not blob.startswith(MAGIC):
        return blob, False
    digest, payload = blob[len(MAGIC):len(MAGIC) + DIGEST], blob[len(MAGIC) + DIGEST:]
    if len(digest) < DIGEST or hashlib.blake2b(payload, digest_size=DIGEST).digest() != digest:
        raise SnapshotCorrupt(f"{what}: the checksum of its {len(blob)} bytes fails")
    return payload, True
