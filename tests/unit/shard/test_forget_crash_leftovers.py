"""A crash between writing a snapshot's or a home's temporary file and renaming it left the
file, with customers' profiles in it, in the store: a restart within STALE_TMP_S kept it, and
a later ForgetCustomer's erasure never looked at it, so the forgotten customer's bytes stayed
(durability review rev45, finding 1; README: "forget leaves no byte of the customer in any
file of the store"). A shard's temporary files are staged in its own folder, which a new
incarnation's claim of the journal and an heir's fence clear whatever their age; and writing
a partition's snapshot, as erasure does, removes what a crash left of that partition."""
from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from kairos.cluster.settings import SNAPSHOT_AFTER_S
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore

from .test_shard import N_PARTITIONS, T0, Clock, event, forget, p_of, profile, shard

GONE = "forgetme-zz9"


class Killed(BaseException):
    """The process dies here: no handler of the store's runs (an OSError's would clean up)."""


def killed_before_renaming(monkeypatch, kind: str) -> None:
    """The next rename of a temporary `kind` file ("snap", "blk") kills the process."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp") and f".{kind}." in Path(src).name:
            monkeypatch.setattr(os, "replace", real)
            raise Killed(src)
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)


def holding(root: Path, customer_id: str) -> list[str]:
    """The store's files that hold the customer's id."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and customer_id.encode() in p.read_bytes())


def staged(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("staging/*/*"))


def store_of(root: Path, owner: str | None) -> DirectoryStore:
    store = DirectoryStore(root)
    if owner is not None:
        store.own_journal("s0", owner, claim=True)
    return store


@pytest.mark.parametrize("owners", [("first", "second"), (None, None)],
                         ids=["claimed", "unowned"])
def test_a_forget_after_a_quick_restart_leaves_no_byte_of_a_crashed_snapshot_write(
        compiled, tmp_path, monkeypatch, owners):
    """The review's probe: a checkpoint killed before its snapshot's rename, the shard
    restarted at once (as Ray does), the customer forgotten. Claimed, as every shard start
    is, the restart clears the crash's file; unowned, the erasure's snapshot does."""
    clock = Clock()
    s = shard(compiled, store=store_of(tmp_path, owners[0]), clock=clock)
    s.process([event(GONE, "page_view", T0, category="home")])
    clock.now += SNAPSHOT_AFTER_S + 5
    killed_before_renaming(monkeypatch, "snap")
    with pytest.raises(Killed):
        s.tick()
    assert [name for name in holding(tmp_path, GONE) if name.endswith(".tmp")]
    store = store_of(tmp_path, owners[1])
    if owners[1] is not None:
        assert staged(tmp_path) == []
    s2 = Shard("s0", compiled, list(range(N_PARTITIONS)), N_PARTITIONS, store=store,
               clock=clock)
    s2.recover()
    assert s2.process([forget(GONE)])[0][0].existed
    for _ in range(3):
        clock.now += SNAPSHOT_AFTER_S + 5
        s2.tick()
    assert s2.process([profile(GONE, clock.now)])[0][0].status == "missing"
    assert holding(tmp_path, GONE) == []
    s2.close()


def test_a_new_incarnation_clears_its_own_crashed_homes_and_no_other_shard_s(tmp_path,
                                                                             monkeypatch):
    """A passivation killed before a home's rename leaves the home in s0's staging folder;
    s0's next incarnation removes it at once, fresh as it is, but not s1's file in flight
    (s1 runs on), nor a file beside meta's, which any process may be writing."""
    p = p_of(GONE)
    old = store_of(tmp_path, "first")
    killed_before_renaming(monkeypatch, "blk")
    with pytest.raises(Killed):
        old.put_many([(p, GONE, b"profile")], unless_fenced="s0")
    assert holding(tmp_path, GONE) == [f"staging/s0/{staged(tmp_path)[0]}"]
    assert msgpack.unpackb((tmp_path / holding(tmp_path, GONE)[0]).read_bytes()) == \
        [GONE, b"profile"]
    other = tmp_path / "staging" / "s1" / f"p{p}.x.blk.1.1.tmp"
    other.parent.mkdir(mode=0o700)
    other.write_bytes(b"s1's")
    beside = tmp_path / "meta" / "controller.1.1.tmp"
    beside.write_bytes(b"the controller's")
    store_of(tmp_path, "second")
    assert holding(tmp_path, GONE) == [] and old.get(p, GONE) is None
    assert other.exists() and beside.exists()


def test_an_heir_s_fence_clears_the_fenced_shard_s_crashed_writes(tmp_path, monkeypatch):
    p = p_of(GONE)
    dead = DirectoryStore(tmp_path)
    killed_before_renaming(monkeypatch, "blk")
    with pytest.raises(Killed):
        dead.put_many([(p, GONE, b"profile")], unless_fenced="s0")
    assert staged(tmp_path)
    DirectoryStore(tmp_path).fence_journal("s0")
    assert staged(tmp_path) == [] and holding(tmp_path, GONE) == []


def test_a_partition_s_snapshot_removes_what_a_crash_left_of_that_partition_only(
        tmp_path, monkeypatch):
    """Whoever's staging folder holds it (the partition's earlier owner's, or this one's):
    the partition's owner alone writes its files."""
    p = p_of(GONE)
    store = DirectoryStore(tmp_path)
    killed_before_renaming(monkeypatch, "blk")
    with pytest.raises(Killed):
        store.put_many([(p, GONE, b"profile")], unless_fenced="s0")
    killed_before_renaming(monkeypatch, "snap")
    with pytest.raises(Killed):
        store.put_snapshots({p + 1: b"other partition"}, unless_fenced="s0")
    left = staged(tmp_path)
    assert len(left) == 2
    store.put_snapshots({p: b"without the customer"}, unless_fenced="s1")
    assert staged(tmp_path) == [n for n in left if n.startswith(f"p{p + 1}.")]
    assert holding(tmp_path, GONE) == []


def test_a_partition_s_snapshot_removes_a_home_an_earlier_release_left_unrenamed(tmp_path):
    """Releases before staging wrote a home's temporary file beside the homes: after an
    upgrade, the partition's next snapshot (a forget's among them) takes it too."""
    p = p_of(GONE)
    store = DirectoryStore(tmp_path)
    left = tmp_path / "customers" / f"p{p}" / "0123abcd.blk.4242.1.tmp"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(GONE.encode())
    other = tmp_path / "customers" / f"p{p + 1}" / "4567cdef.blk.4242.2.tmp"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"another partition's")
    store.put_snapshots({p: b"without the customer"}, unless_fenced="s1")
    assert holding(tmp_path, GONE) == [] and other.exists()
