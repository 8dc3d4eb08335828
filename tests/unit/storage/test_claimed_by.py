"""`Store.claimed_by` (store.py): the claim a store holds now, as (owner, holder), or None;
read by a shard on every store object that reaches the same data (another process's, another
node's), and writing nothing (issue 18). The same cases over the three stores, as
test_store.py runs its own."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from kairos.cluster.storage import directory_claim
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import RedisStore

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_ownership import HOLD


@pytest.fixture(params=["memory", "directory", "redis"])
def opener(request, tmp_path):
    """Opens a new store object on the same data each call (as each process does)."""
    if request.param == "redis":
        url = f"{request.getfixturevalue('redis_server').url}?prefix={request.node.name}"
        return lambda: RedisStore(url)
    if request.param == "directory":
        return lambda: DirectoryStore(tmp_path)
    memory = MemoryStore(shared=True)
    return lambda: memory


def test_a_claim_is_read_where_the_data_is_and_gone_once_given_up(opener):
    controllers, shards = opener(), opener()
    assert shards.claimed_by() is None
    controllers.claim("ours", "host a, pid 1")
    assert shards.claimed_by() == ("ours", "host a, pid 1")
    controllers.claim("ours", "host a, pid 1")  # a renewal changes nothing read
    assert shards.claimed_by() == ("ours", "host a, pid 1")
    controllers.release("ours")
    assert shards.claimed_by() is None


def test_reading_the_claim_writes_nothing(opener, tmp_path):
    store = opener()
    if isinstance(store, RedisStore):
        keys = set(store.r.keys(f"{store.prefix}:*"))
        assert store.claimed_by() is None
        assert set(store.r.keys(f"{store.prefix}:*")) == keys
        return
    before = sorted(tmp_path.rglob("*"))
    assert store.claimed_by() is None
    assert sorted(tmp_path.rglob("*")) == before  # no owner.lock made
    store.claim("ours", "us")
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
               if p.is_file()}
    assert opener().claimed_by() == ("ours", "us")
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
            if p.is_file()} == written
    store.release("ours")


def test_a_directory_claim_is_read_from_another_process_and_not_once_it_died(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "claimed\n"
        assert DirectoryStore(tmp_path).claimed_by() == ("theirs", "the other cluster")
    finally:
        holder.kill()  # a crash: the file stays, naming it, and the kernel drops its lock
        holder.wait()
    assert (tmp_path / "owner.lock").exists()
    assert DirectoryStore(tmp_path).claimed_by() is None


def test_a_directory_claim_waits_out_a_read_of_the_claim(tmp_path, monkeypatch):
    """A read holds a shared flock for microseconds: a controller claiming then is not told
    another cluster holds the store."""
    store = DirectoryStore(tmp_path)
    (tmp_path / "owner.lock").touch()
    reading = os.open(tmp_path / "owner.lock", os.O_RDONLY)
    fcntl.flock(reading, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as claimed_by holds it
    waits = []

    def read_ends(seconds: float) -> None:  # the read's descriptor closes while it waits
        waits.append(seconds)
        os.close(reading)
    monkeypatch.setattr(directory_claim.time, "sleep", read_ends)
    store.claim("ours", "us")
    assert len(waits) == 1 and store.claimed_by() == ("ours", "us")
    store.release("ours")
