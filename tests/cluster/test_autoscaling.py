"""Kairos's autoscaling with Ray's real autoscaler (v1, the StandardAutoscaler KubeRay's sidecar
runs), on Ray's fake multi-node provider: the autoscaler starts and stops Ray nodes on this
machine as processes, as KubeRay creates and deletes worker pods.

Under load the controller asks the autoscaler for a worker (request_resources), the autoscaler
launches one, and the node that joins gets a gateway and a shard; when the load falls the
controller lowers the request and drains that worker, which the autoscaler then removes as
idle. Traffic runs throughout, balanced over every gateway with client-side health checks: no
call fails, no decision is a fallback, every acknowledged event is applied once.

The head is started as ray.cluster_utils.AutoscalingCluster starts it (RAY_FAKE_CLUSTER,
`--autoscaling-config`), but never through it: its start and shutdown run `ray stop --force`,
which stops every Ray on the machine. Here the head runs in a process session of its own, with
its GCS on a free port, its files under this session's temp dir, and Ray's token auth (as
KubeRay sets it); the nodes the autoscaler starts are processes of its monitor, in the same
session, and the session is what is stopped. Autoscaler v2 is not run: its config reader needs
the fake provider's example.yaml, which Ray 2.60's wheel does not ship (FileNotFoundError:
.../ray/autoscaler/_private/fake_multi_node/example.yaml); the manifests pin v1.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from kairos.cluster.gateway.auth import METADATA_KEY
from kairos.cluster.raytuning import RAY_SETTINGS
from kairos.cluster.storage.redis_server import free_port
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2_grpc

from tests.support.sessions import Pod
from tests.support.waiting import wait_until

from .traffic import UNSHED, Traffic

APP_KEY, ADMIN_KEY = secrets.token_hex(16), secrets.token_hex(16)
WORKER_TYPE = "kairos-worker"
# The controller's policy, fast: at 40 decisions and events per second per shard a shard is
# full (the heavy traffic is several times that), a worker is added after 2 s at capacity and
# removed after 3 s under 60 % (the light traffic, 8 customers pausing 1 s, is well under)
TUNING = {"KAIROS_AUTOSCALE_MIN_WORKERS": "0", "KAIROS_AUTOSCALE_MAX_WORKERS": "1",
          "KAIROS_AUTOSCALE_SHARD_RATE": "40", "KAIROS_AUTOSCALE_UP_AFTER_S": "2",
          "KAIROS_AUTOSCALE_DOWN_AFTER_S": "3", "KAIROS_AUTOSCALE_COOLDOWN_S": "5",
          "KAIROS_DRAIN_UNREADY_S": "1", "KAIROS_RETIRE_GRACE_S": "1",
          "KAIROS_CONTROL_LOOP_S": "0.5", **UNSHED}
STEP_S = 120.0  # each step: Ray's autoscaler loop, a node's start on this loaded machine


def autoscaling_config(gcs_port: int) -> dict:
    """The fake provider's cluster: a head with one CPU and one worker type, as KubeRay's
    autoscaler builds it from the RayCluster (one `kairos_worker` unit per worker; the idle
    timeout is 3 s here)."""
    node = {"node_config": {}}
    return {
        "cluster_name": "kairos-autoscaling-test", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ray"}, "docker": {},
        "available_node_types": {
            "ray.head.default": {**node, "resources": {"CPU": 1}, "max_workers": 0},
            WORKER_TYPE: {**node, "min_workers": 0, "max_workers": 1, "resources": {
                "CPU": 1, "kairos_worker": 1, "object_store_memory": 128 * 2**20}}},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": []}


@pytest.fixture
def head(tmp_path):
    """Ray's head with the autoscaler on the fake provider, and `kairos start` on it: the head
    Pod, its gateway's port, and the session's files."""
    keys = {"keys": [{"key": APP_KEY, "name": "app", "scopes": ["decide", "ingest",
                                                                   "profile:read"]},
                     {"key": ADMIN_KEY, "name": "operator", "scopes": ["admin"]}]}
    env = {**os.environ, **RAY_SETTINGS, **TUNING, "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "KAIROS_API_KEYS": yaml.safe_dump(keys),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",  # Ray's own drain on SIGTERM
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    temp_dir = os.environ["RAY_TMPDIR"]  # the test session's own (tests/conftest.py)
    ray_head, gcs_port = started_head(tmp_path, env, temp_dir)
    kairos = None
    try:
        kairos = Pod("kairos-start", [
            "kairos", "start", "--address", f"127.0.0.1:{gcs_port}", "--host", "127.0.0.1",
            "--port", "0", "--shards", "1", "--store", str(tmp_path / "store")], env, tmp_path)
        try:
            wait_until(lambda: kairos.process.poll() is not None, 300,
                       "kairos start to return", poll_s=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnosis(kairos, ray_head, temp_dir)}") from None
        assert kairos.process.returncode == 0, diagnosis(kairos, ray_head, temp_dir)
        port = int(re.search(r"gRPC on [^:\s]+:(\d+)", kairos.output())[1])
        yield ray_head, port, Path(temp_dir)
    finally:
        if kairos is not None:
            kairos.stop(grace_s=5)  # returned, or hung (its driver holds nothing else)
        ray_head.stop(grace_s=30)  # its session holds the autoscaler's nodes too


# Its ports are picked free and then bound by Ray: another process may take one between (the
# GCS then fails to start, "An unexpected system state": its gRPC server could not bind)
HEAD_TRIES = 3


def started_head(tmp_path: Path, env: dict[str, str], temp_dir: str) -> tuple[Pod, int]:
    """Ray's head with the autoscaler on the fake provider, once its GCS answers (as the head
    pod's entrypoint, k8s/base/kairos-head.sh, waits before Kairos); its GCS port. A head
    whose GCS did not start is started again on other ports, up to HEAD_TRIES times."""
    attempt = 1
    while True:
        gcs_port = free_port()
        config = tmp_path / f"autoscaling-{attempt}.json"
        config.write_text(json.dumps(autoscaling_config(gcs_port)))
        ray_head = Pod(f"ray-head-{attempt}", [
            "ray", "start", "--head", f"--port={gcs_port}", f"--autoscaling-config={config}",
            "--num-cpus=1", f"--object-store-memory={128 * 2**20}",
            "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
            "--dashboard-agent-listen-port=0", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", "--disable-usage-stats", "--block"],
            env, tmp_path)
        try:
            wait_until(lambda: gcs_answers(gcs_port, env, ray_head), 120,
                       "Ray's GCS to answer", poll_s=1.0)
        except BaseException as exc:  # pytest.fail's too: a head that exited
            ray_head.stop(grace_s=5)
            if attempt == HEAD_TRIES or not isinstance(exc, pytest.fail.Exception) or \
                    "Failed to start GCS" not in ray_head.output():
                raise
            attempt += 1
            continue
        return ray_head, gcs_port


def gcs_answers(gcs_port: int, env: dict[str, str], ray_head: Pod) -> bool:
    if ray_head.process.poll() is not None:  # BaseException: not taken for "not yet"
        pytest.fail(f"Ray's head exited:\n{ray_head.output()[-3000:]}")
    return subprocess.run(["ray", "health-check", "--address", f"127.0.0.1:{gcs_port}"],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60).returncode == 0


def diagnosis(kairos: Pod, ray_head: Pod, temp_dir: str, chars: int = 3000) -> str:
    """What to look at when `kairos start` failed or hung: its output, the head's, and the
    ends of the Ray logs that name a failure (of the sessions started since the head)."""
    parts = [f"kairos start:\n{kairos.output()[-chars:]}",
             f"ray head:\n{ray_head.output()[-chars:]}"]
    since = ray_head.log.stat().st_ctime - 5
    for log in sorted(Path(temp_dir).glob("session_2*/logs/*")):
        if log.is_file() and log.stat().st_mtime >= since and (
                log.name in ("raylet.out", "gcs_server.out", "monitor.log")
                or (log.suffix == ".err" and log.stat().st_size)):
            parts.append(f"{log}:\n{log.read_text(errors='replace')[-chars:]}")
    return "\n\n".join(parts)


def autoscaler_events(temp_dir: Path) -> list[str]:
    """What the autoscaler reported doing (its monitor's event summaries)."""
    log = temp_dir / "session_latest" / "logs" / "monitor.log"
    return re.findall(r":event_summary:(.*)", log.read_text()) if log.exists() else []


@pytest.mark.timeout(600)
def test_load_adds_a_worker_through_rays_autoscaler_and_low_load_removes_it(head):
    ray_head, port, temp_dir = head
    admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def nodes() -> dict[str, admin_pb2.NodeStatus]:
        if ray_head.process.poll() is not None:  # BaseException: not taken for "not yet"
            pytest.fail(f"Ray's head exited:\n{ray_head.output()[-3000:]}")
        status = admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=30,
                                        metadata=((METADATA_KEY, ADMIN_KEY),))
        return {n.node_id: n for n in status.node_status}

    (head_node,) = nodes()
    traffic = Traffic(8, api_key=APP_KEY).start([f"127.0.0.1:{port}"])

    # load: the controller asks for a worker, Ray's autoscaler launches one, and the node
    # that joins serves with a gateway and a shard that owns partitions
    def worker_serves() -> admin_pb2.NodeStatus | None:
        return next((n for node_id, n in nodes().items() if node_id != head_node
                     and n.serving and n.shards and n.partitions), None)
    worker = wait_until(worker_serves, STEP_S, "a worker launched by Ray's autoscaler, "
                                               "serving with a shard", poll_s=1.0)
    assert f"Adding 1 node(s) of type {WORKER_TYPE}." in autoscaler_events(temp_dir)
    assert worker.node_id.endswith("00001"), "the fake provider's first node"
    traffic.targets = [f"127.0.0.1:{n.gateway_port}" for n in nodes().values() if n.serving]
    acked = traffic.total()
    wait_until(lambda: traffic.total() > acked + 50, 60, "traffic through both gateways")

    # low load: the controller drains the worker and lowers its request; empty, the worker
    # is idle, and the autoscaler removes it
    traffic.pace_s = 1.0
    drained = wait_until(lambda: (n := nodes().get(worker.node_id)) and n.draining
                         and not n.shards and not n.gateway_port and n, STEP_S,
                         "the worker drained by the controller", poll_s=0.5)
    assert drained.partitions == 0
    traffic.targets = [f"127.0.0.1:{port}"]
    removed = f"Removing 1 nodes of type {WORKER_TYPE} (idle)."
    wait_until(lambda: worker.node_id not in nodes() and removed in autoscaler_events(temp_dir),
               STEP_S, "the drained worker removed by Ray's autoscaler as idle", poll_s=1.0)
    assert set(nodes()) == {head_node}
    acked = traffic.total()
    wait_until(lambda: traffic.total() > acked + 10, 60, "traffic after the worker left")
    traffic.stop()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        traffic.check(decision_pb2_grpc.DecisionServiceStub(channel))
