"""A stored home of the wrong types or codes (issue 18) is a damaged home, on a real Shard over
a DirectoryStore: its customer is refused, the round goes on for the others, and nothing of it
reaches the kernel. A NaN ring head, which the table would cast to -2**31 and the kernel then
write the ring at, is the crash case: it runs in a process of its own, so that a regression
fails the test instead of killing pytest."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.sealed import SnapshotCorrupt, seal, unseal
from kairos.core.compiler import default_compiled
from tests.unit.shard.test_homes import passivated
from tests.unit.shard.test_shard import T0, Clock, decide, event, p_of, profile, shard
from tests.unit.shard.test_shard_block_extras import snapshot_of_ana

ROOT = Path(__file__).resolve().parents[3]


def rewrite(s, customer: str, damage, sealed: bool = True) -> None:
    """The customer's home, damaged; `sealed` False: without the envelope, which unseal reads
    as it is (anyone who writes the store can write one)."""
    home = blocks.unpack(unseal(s.store.get(p_of(customer), customer), "a home")[0])
    damage(home)
    data = blocks.pack(home)
    s.store.put(p_of(customer), customer, seal(data) if sealed else data)


def nan_head(home: dict) -> None:
    home["ring_head"] = np.array([np.nan])


def text_values(home: dict) -> None:
    home["values"] = np.full(home["values"].shape, "x")


def unknown_outcome(home: dict) -> None:
    home["ring_action"][0, 0] = home["ring_channel"][0, 0] = 0
    home["ring_outcome"][0, 0] = 99
    home["ring_head"][0] = 1


def time_past_int32(home: dict) -> None:
    """As a list of Python ints (a store writer's msgpack): an int64 array to the checks."""
    home["ring_time"] = np.full(home["ring_time"].shape, 2**40).tolist()


def unused_outcome_past_int8(home: dict) -> None:
    """In entries no action uses, which the checks of codes do not read but the load writes."""
    home["ring_outcome"] = np.full(home["ring_outcome"].shape, 1000).tolist()


def journal_array(home: dict) -> None:
    """Compared with == by the load, after the customer was activated: no truth value."""
    home["journal"] = np.arange(2)


def format_array(home: dict) -> None:
    home["format"] = np.arange(2)


def key_sequence_negative(home: dict) -> None:
    """A legacy idempotency key keys.py packs as a uint64: struct.error after the load, the
    customer resident without its keys or watches."""
    home["extras"][0]["keys"] = [["k", -1, T0]]


def key_sequence_past_uint64(home: dict) -> None:
    home["extras"][0]["keys"] = [["k", 1.5e20, T0]]


@pytest.mark.parametrize("damage", [nan_head, text_values, unknown_outcome, time_past_int32,
                                    unused_outcome_past_int8, journal_array, format_array,
                                    key_sequence_negative, key_sequence_past_uint64])
@pytest.mark.parametrize("sealed", [True, False])
def test_a_home_of_other_types_is_damaged_and_the_round_goes_on(compiled, tmp_path, damage,
                                                                 sealed):
    s, clock = passivated(compiled, tmp_path, "ana", "bob")
    rewrite(s, "ana", damage, sealed)
    replies, _ = s.process([profile("bob", clock.now), profile("ana", clock.now),
                            event("bob", "page_view", clock.now, category="home")])
    assert [r.status for r in replies] == ["ok", "unavailable", "ok"]
    assert "damaged" in replies[1].reason
    assert s.stats()["damaged_homes"] == 1
    assert "ana" not in s.engine.table
    replies, _ = s.process([profile("ana", clock.now)])  # not left resident, half loaded
    assert [r.status for r in replies] == ["unavailable"]


def crash_case() -> None:
    """r4's path: a NaN head written unsealed, then the requests that record an impression
    (the kernel's ring write); prints the replies' statuses."""
    s, clock = passivated(default_compiled(), Path(tempfile.mkdtemp()), "ana", "bob")
    rewrite(s, "ana", nan_head, sealed=False)
    replies, _ = s.process([event("ana", "page_view", T0 + 1, category="home"),
                            decide("ana", now=T0 + 2, record_impression=True),
                            decide("bob", now=T0 + 2, record_impression=True)])
    print(*(r.status for r in replies))


def test_a_nan_ring_head_in_a_home_is_refused_and_does_not_crash_the_shard():
    done = subprocess.run([sys.executable, "-c", f"from {__name__} import crash_case; "
                           "crash_case()"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["unavailable", "unavailable", "ok"]


SNAPSHOT_DAMAGES = {  # each raised OverflowError or ValueError out of recovery before
    "ring times past int32": (lambda snap: time_past_int32(snap["block"]),
                              "ring_time values outside"),
    "the block's journal an array": (lambda snap: journal_array(snap["block"]),
                                     "a journal of type ndarray"),
    "the block's format an array": (lambda snap: format_array(snap["block"]), "format"),
    "its journal an array": (lambda snap: journal_array(snap), "snapshot of a journal"),
    "its LSN an array": (lambda snap: snap.__setitem__("lsn", np.arange(2)),
                         "snapshot of a journal")}


@pytest.mark.parametrize("damage", list(SNAPSHOT_DAMAGES))
def test_a_snapshot_of_other_types_is_corrupt(compiled, tmp_path, damage):
    """SnapshotCorrupt, what recovery raises for a damaged snapshot, and no customer of it
    left resident."""
    clock = Clock()
    snap, _, put = snapshot_of_ana(compiled, tmp_path, clock)
    change, refusal = SNAPSHOT_DAMAGES[damage]
    change(snap)
    put(snap)
    recovering = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    with pytest.raises(SnapshotCorrupt, match=refusal):
        recovering.recover()
    assert "ana" not in recovering.engine.table
