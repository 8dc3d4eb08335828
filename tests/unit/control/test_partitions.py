"""Partition maps: stable hashing, even spread, bounded moves per round (no Ray needed)."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.cluster.control.partitions import PartitionMap, partition_of


def test_partition_is_stable_across_processes():
    code = "from kairos.cluster.control.partitions import partition_of; print(partition_of('ana'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert int(other) == partition_of("ana")


def test_customers_spread_evenly_over_partitions():
    counts = Counter(partition_of(f"c{i}", 64) for i in range(64_000))
    assert len(counts) == 64 and all(850 < n < 1150 for n in counts.values())  # ±~5 sigma


def converge(pmap, shards):
    rounds = 0
    while moves := pmap.plan(shards):
        assert len(moves) <= pmap.n_partitions // 10
        pmap = pmap.apply(moves, shards)
        rounds += 1
        assert rounds < 50
    return pmap, rounds


@settings(max_examples=60, deadline=None)
@given(start=st.integers(1, 12), end=st.integers(1, 12), n=st.sampled_from([64, 256, 4096]))
def test_scaling_converges_to_an_even_spread(start, end, n):
    before = [f"kairos-shard-{i:04d}" for i in range(start)]
    after = [f"kairos-shard-{i:04d}" for i in range(end)]
    pmap, _ = converge(PartitionMap.initial(before, n), after)
    sizes = Counter(pmap.owners)
    assert set(sizes) == set(after)
    assert max(sizes.values()) - min(sizes.values()) <= 1


def test_scale_out_moves_only_what_it_must():
    shards = [f"s{i}" for i in range(4)]
    start = PartitionMap.initial(shards, 4096)
    end, rounds = converge(start, shards + ["s4", "s5", "s6", "s7"])
    moved = sum(a != b for a, b in zip(start.owners, end.owners))
    assert moved == 2048  # exactly half the partitions change owner, none twice
    assert rounds == 6 and end.version == start.version + rounds  # 409 moves a round


def test_apply_checks_the_source():
    pmap = PartitionMap.initial(["a", "b"], 8)
    moves = pmap.plan(["a", "b", "c"])
    with pytest.raises(ValueError, match="is owned by"):
        pmap.apply(moves, ["a", "b", "c"]).apply(moves, ["a", "b", "c"])
