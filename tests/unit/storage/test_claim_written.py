"""A directory's claim as other nodes read it (issue 18, review of ed6d2e3): over NFS the
server has what a client wrote only once it is sent (a close, an fsync, an unlock), the
truncate before it at once, so the claim syncs its text; and a claim held whose owner.lock
names no cluster (yet: a claim between its truncate and its write, or an older Kairos's,
which wrote its holder alone) is refused for now as what it is, never as another cluster's
(ownership.py `check_claimed`)."""
from __future__ import annotations

import fcntl
import os
import socket

import pytest

from kairos.cluster.storage import directory_claim
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.ownership import check_claimed
from kairos.cluster.storage.store import StoreNotClaimed


def test_a_directory_claim_is_synced_before_it_counts_as_made(tmp_path, monkeypatch):
    """The real fsync runs; this records which file it synced, and what that file held by
    then (NFS's writeback cannot be watched here: a local disk shows the text at once)."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == (tmp_path / directory_claim.OWNER_FILE).stat().st_ino:
            synced.append(os.pread(fd, 4096, 0).decode())
        real_fsync(fd)
    monkeypatch.setattr(directory_claim.os, "fsync", fsync)
    directory_claim.claim(tmp_path, "ours", "host h, pid 1")
    try:
        assert synced == ["host h, pid 1\nours"]
    finally:
        directory_claim.release(tmp_path, "ours")


@pytest.mark.parametrize("text", ["", "host h, pid 1, since 2026-12-07 14:00:00 UTC"],
                         ids=["being-written", "older-kairos"])
def test_a_claim_that_names_no_cluster_is_not_called_another_clusters(tmp_path, text):
    store = DirectoryStore(tmp_path)
    fd = os.open(tmp_path / directory_claim.OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: another holder
        os.write(fd, text.encode())
        assert store.claimed_by() == ("", text)
        with pytest.raises(StoreNotClaimed) as refused:
            check_claimed(store, "ours")
    finally:
        os.close(fd)
    assert str(refused.value) == (
        f"the store {tmp_path}, as host {socket.gethostname()} reaches it, holds a claim that "
        f"names no cluster yet (its controller: {text or 'unknown'}): a claim being written, "
        f"or that of an older Kairos's controller. This shard writes nothing to it, serves "
        f"nothing, and tries again")
