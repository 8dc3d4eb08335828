"""Recovery on a real local Ray cluster with the directory store: shard processes killed with
SIGKILL under a stream of acknowledged events, and a disk that fills up."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray

from kairos.cluster.transport.ray_backend import Unavailable

from tests.support.waiting import wait_until

from .restarts import shard_health, wait_restarted
from .stream import T0, AckedStream

TUNING = {"KAIROS_RETIRE_GRACE_S": "0.5", "KAIROS_SNAPSHOT_AFTER_S": "1"}
KILLS = 6


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    ray_cluster(nodes=1, env=TUNING, cpus_per_node=2)


@pytest.fixture
def kairos(ray_local):
    from kairos.cluster.control import runtime
    started = []

    def start(store: str, n_shards: int = 2):
        runtime.start(n_shards=n_shards, n_partitions=64, store=store)
        client = runtime.connect(timeout_s=120)
        started.append(client)
        return client
    yield start
    for client in started:
        client.close()
    runtime.stop()


def test_kill_9_under_a_stream_of_acknowledged_events_loses_and_repeats_nothing(kairos,
                                                                                tmp_path):
    client = kairos(str(tmp_path / "store"))
    stream = AckedStream(client, [f"k{i}" for i in range(40)]).start()
    from kairos.cluster.control import runtime
    shards = [s["shard"] for s in ray.get(runtime.controller().status.remote())["shards"]]
    rng = random.Random(7)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 0.8))
        victim = rng.choice(shards)
        health = shard_health(victim)
        acked_before = stream.total()
        os.kill(health["pid"], signal.SIGKILL)
        wait_restarted(victim, health["incarnation"])
        assert shard_health(victim)["recovery"]["resident"] > 0
        wait_until(lambda: stream.total() >= acked_before + 20, 30,
                   "the stream to go on after the recovery (20 more events acknowledged)",
                   poll_s=0.05)
    stream.stop()
    assert stream.total() > 500 and stream.refused > 0
    stream.check()


def mount_small_disk(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_fails_acks_with_unavailable_and_loses_nothing(kairos, tmp_path):
    disk = tmp_path / "disk"
    if not mount_small_disk(disk, "8m"):
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); the shard-level "
                    "test in test_durability.py covers the same logic with an injected ENOSPC")
    try:
        client = kairos(str(disk / "store"), n_shards=1)
        acked = {f"d{i}": client.ingest(f"d{i}", "app_open", T0) for i in range(20)}
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        for size in (1 << 16, 1 << 10, 1):  # fill the disk to the last byte
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.close(fd)
        with pytest.raises(Unavailable):
            for i in range(500):  # a small batch may still fit a partly used block
                c = f"d{i % 20}"
                acked[c] = client.ingest(c, "app_open", T0 + 1 + i)
        filler.unlink()
        # Unavailable until the shard has recovered, the disk having room again
        applied = wait_until(lambda: {c: client.profile(c)["events_applied"] for c in acked},
                             30, "the shard to serve again after the disk had room",
                             poll_s=0.2)
        assert applied == acked  # the refused event was not applied; nothing acked is lost
        assert client.ingest("d0", "app_open", T0 + 10_000) == acked["d0"] + 1
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_cluster_started_again_on_its_store_takes_up_where_it_stopped(ray_local, tmp_path):
    """`kairos down`, then `kairos up` on the same directory: the same shards recover their
    partitions; asking for another shard count then moves partitions as scaling does."""
    from kairos.cluster.control import runtime
    store = str(tmp_path / "store")
    for round_, n_shards in enumerate((2, 2, 3)):
        runtime.start(n_shards=n_shards, n_partitions=64, store=store)
        client = runtime.connect(timeout_s=120)
        try:
            assert len(ray.get(runtime.controller().status.remote())["shards"]) == n_shards
            for i in range(30):  # each customer's events of the earlier rounds are all there
                assert client.ingest(f"again-{i}", "app_open", T0 + round_) == round_ + 1
        finally:
            client.close()
            runtime.stop()
