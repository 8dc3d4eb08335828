"""The data plane against Ray-hosted shards (issue: hardening, items 2 and 19): a client
idle while every shard is killed with SIGKILL reaches the restarted shards without a failed
request, and a shard under hostile connections keeps serving."""
from __future__ import annotations

import os
import signal
import socket

import msgpack
import psutil
import pytest
import ray

from .restarts import shard_health, wait_restarted

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def runtime_client(ray_cluster):
    ray_cluster(nodes=1, cpus_per_node=2)
    from kairos.cluster.control import runtime
    runtime.start(n_shards=2, n_partitions=16, store="memory")
    client = runtime.connect(timeout_s=120)
    yield client, runtime
    client.close()
    runtime.stop()


def _shard(name: str):
    return ray.get_actor(name, namespace="kairos")


def _shards(runtime) -> list[str]:
    return [s["shard"] for s in ray.get(runtime.controller().status.remote())["shards"]]


def test_requests_after_every_shard_was_killed_reach_the_new_incarnations(runtime_client):
    client, runtime = runtime_client
    customers = [f"c{i}" for i in range(16)]  # on both shards
    for customer in customers:
        client.ingest(customer, "app_open", T0)
    healths = {name: shard_health(name) for name in _shards(runtime)}
    for health in healths.values():
        os.kill(health["pid"], signal.SIGKILL)
    for name, health in healths.items():
        wait_restarted(name, health["incarnation"])
    for customer in customers:  # none fails with "the connection is closed"
        client.ingest(customer, "app_open", T0 + 1)


def test_a_shard_under_garbage_and_a_connection_flood_keeps_serving(runtime_client):
    client, runtime = runtime_client
    name = _shards(runtime)[0]
    pid = shard_health(name)["pid"]
    rss = psutil.Process(pid).memory_info().rss
    host, port, *_ = ray.get(_shard(name).data_address.remote(), timeout=30)
    nested_exts = msgpack.packb(None)
    for _ in range(2000):  # before the fix, decoding these overflowed the C stack
        nested_exts = msgpack.packb(msgpack.ExtType(1, nested_exts))
    for payload in (os.urandom(4096), b"\xdd\xff\xff\xff\xff", b"\x91" * 100_000,
                    nested_exts):
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(payload)
    flood = [socket.create_connection((host, port), timeout=5) for _ in range(300)]
    for i in range(16):
        client.ingest(f"c{i}", "app_open", T0 + 2)
    for sock in flood:
        sock.close()
    assert shard_health(name)["pid"] == pid  # the same process: nothing crashed it
    grown = psutil.Process(pid).memory_info().rss - rss
    assert grown < 50 << 20, f"the shard's RSS grew by {grown >> 20} MiB"
