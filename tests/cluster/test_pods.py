"""The pods' own commands, run as processes on this machine.

The laptop overlay is rendered with kubectl kustomize; the head's and the workers' container
commands, environments and the workers' preStop hook are taken from it and run as the
kubelet would: a head and a worker, traffic through every gateway, a second worker that
joins (a gateway serves on it and its shard owns partitions within 30 s), its preStop drain
and then its stop, and the same for the first worker. Throughout, no call fails, no
decision is a fallback, and every acknowledged event is applied exactly once.

What a machine shared by every "pod" forces the test to change, and nothing else:
- KubeRay's generated `ray start` ($KUBERAY_GEN_RAY_START_CMD) is built here from the
  rendered rayStartParams, as KubeRay builds it, with the ports made free ones (the GCS, Ray's
  metrics) and the dashboard left out;
- the gateways bind 127.0.0.1 on free ports (KAIROS_GATEWAY_HOST, KAIROS_GATEWAY_PORT=0), so
  the preStop's `--target kairos-gateway:50051` (the Service) becomes the head's gateway;
- every node has this machine's address, so POD_IP, which preStop drains, is the node's id
  (which `kairos drain` takes as well as an address);
- the Secrets' files come from the rendered Secrets, written under the test's directory (this
  user's, mode 0600: no kubelet makes them root's with the pod's fsGroup) and the variables
  naming them pointed there; Redis is a real redis-server with the overlay's password, on
  127.0.0.1, instead of Service kairos-redis;
- Ray's token is one the test makes, as KubeRay makes one (RAY_AUTH_MODE, RAY_AUTH_TOKEN);
- a drain's unready window (KAIROS_DRAIN_UNREADY_S, 10 s on the head) is 2 s: the clients
  here watch the gateways' health themselves, with no probe period or endpoint update to wait
  out, and Ray's own drain on SIGTERM is cut to 5 s for the same reason;
- the controller's autoscaling is off (KAIROS_AUTOSCALE_MAX_WORKERS=0): no KubeRay acts on its
  requests here, and the test adds and removes the workers itself (tests/cluster/
  test_autoscaling.py runs the autoscaling with Ray's autoscaler);
- the gateways' load shedding waits for 1 s of event-loop lag, not 15 ms, and not for a busy
  loop (traffic.UNSHED):
  every "pod" shares two cores, and starting one is no overload of the others.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from kairos.cluster.gateway.auth import METADATA_KEY
from kairos.cluster.storage.redis_server import RedisServer, free_port
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2_grpc

from tests.support.manifests import one, raycluster
from tests.support.sessions import Pod
from tests.support.waiting import wait_until

from .traffic import UNSHED, Traffic

OVERLAY = "laptop"
GATEWAY_PORT = 50051
START_S = 300.0  # the head: Ray, then `kairos start`
JOIN_S = 30.0
# Ray's own start of a node now and then fails on a loaded 2-core machine (the raylet exits
# before it registers with the GCS, with nothing in its logs): the pod is then replaced, as
# the kubelet would restart its container
NODE_UP_S = 60.0
APP_KEY = "laptop-example-app-key"  # from the overlay's example keys (public)


def secret_value(name: str, key: str) -> str:
    return base64.b64decode(one(OVERLAY, "Secret", name)["data"][key]).decode()


def container_env(container: dict, fields: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: $(VAR) expanded from the ones
    before, fieldRefs from `fields` (left out when not given); no secret is in it
    (tests/k8s/test_secret_files.py)."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif e["valueFrom"]["fieldRef"]["fieldPath"] in fields:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def mounted_secrets(spec: dict, container: dict, root: Path) -> dict[str, str]:
    """The container's Secret volumes written under `root`, this user's with mode 0600: the
    mount path -> its folder here."""
    volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    found = {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            continue
        secret = volumes[mount["name"]]
        folder = root / mount["name"]
        folder.mkdir(exist_ok=True)
        data = one(OVERLAY, "Secret", secret["secretName"])["data"]
        for key, path in ({i["key"]: i["path"] for i in secret.get("items", [])}
                          or {key: key for key in data}).items():
            (folder / path).write_bytes(base64.b64decode(data[key]))
            (folder / path).chmod(0o600)
        found[mount["mountPath"]] = str(folder)
    return found


def kuberay_start(params: dict[str, str], head: bool, gcs_port: int) -> str:
    """KubeRay's `ray start` for a group: its rayStartParams as --key=value, then --block."""
    params = {**params, "metrics-export-port": str(free_port()),
              "dashboard-agent-listen-port": "0"}
    params.pop("dashboard-host", None)
    where = ["--head", f"--port={gcs_port}", "--include-dashboard=false"] if head \
        else [f"--address=127.0.0.1:{gcs_port}"]
    return " ".join(["ray", "start", *where, *(f"--{k}={v}" for k, v in params.items()),
                     "--block"])


@pytest.fixture
def pods(tmp_path):
    started: list[Pod] = []
    redis = RedisServer(tmp_path / "redis", password=secret_value("kairos-redis", "password"))
    redis.start()
    yield started, redis, tmp_path
    for pod in started:  # all at once: each stops its own Ray
        if pod.process.poll() is None:
            pod.process.send_signal(signal.SIGTERM)
    for pod in reversed(started):
        pod.stop(grace_s=30)
    redis.stop()


@pytest.mark.timeout(900)
def test_the_pods_commands_join_drain_and_leave_under_traffic(pods):
    started, redis, tmp = pods
    rc = raycluster(OVERLAY)
    gcs_port = free_port()
    common = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
              # `ray` and `kairos` of this venv, also when its python runs without it on PATH
              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
              # Ray's own drain on SIGTERM waits up to 30 s for a node to go idle: Kairos has
              # emptied it in preStop by then, so the test does not wait out Ray's default
              "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}

    def env_for(spec: dict, ray_start: str) -> dict[str, str]:
        container = spec["containers"][0]
        env = {**common, **container_env(container, {})}
        for path, here in mounted_secrets(spec, container, tmp).items():
            env.update({name: value.replace(path, here) for name, value in env.items()
                        if value.startswith(path + "/")})
        if "KAIROS_STORE" in env:  # the head's: Service kairos-redis is this redis-server
            env["KAIROS_STORE"] = env["KAIROS_STORE"].replace("kairos-redis:6379",
                                                              f"127.0.0.1:{redis.port}")
        return {**env, "KUBERAY_GEN_RAY_START_CMD": ray_start, "KAIROS_GATEWAY_PORT": "0",
                "KAIROS_DRAIN_UNREADY_S": "2", "KAIROS_AUTOSCALE_MAX_WORKERS": "0", **UNSHED,
                "KAIROS_GATEWAY_HOST": "127.0.0.1", "RAY_GCS_PORT": str(gcs_port)}

    # the head: its entrypoint script from the ConfigMap it mounts
    head_spec = rc["spec"]["headGroupSpec"]
    head_container = head_spec["template"]["spec"]["containers"][0]
    bin_dir = tmp / "opt-kairos-bin"
    bin_dir.mkdir()
    (bin_dir / "kairos-head.sh").write_text(
        one(OVERLAY, "ConfigMap", "kairos-head-start")["data"]["kairos-head.sh"])
    command = [part.replace("/opt/kairos/bin", str(bin_dir)) for part in head_container["command"]]
    head = Pod("head", command, env_for(head_spec["template"]["spec"], kuberay_start(
        head_spec["rayStartParams"], True, gcs_port)), tmp)
    started.append(head)
    def head_serves() -> re.Match | None:
        if head.process.poll() is not None:  # BaseException: not taken for "not yet"
            pytest.fail(f"the head's container exited:\n{head.output()[-3000:]}")
        return re.search(r"gRPC on [^:\s]+:(\d+)", head.output())
    head_port = int(wait_until(head_serves, START_S, "kairos start on the head", poll_s=1.0)[1])
    admin_channel = grpc.insecure_channel(f"127.0.0.1:{head_port}")
    key = secret_value("kairos-api-keys", "admin-key")
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)

    def nodes() -> list:
        return list(admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=30,
                                           metadata=((METADATA_KEY, key),)).node_status)

    # the workers: KubeRay's command line for the group
    (group,) = rc["spec"]["workerGroupSpecs"]
    worker_container = group["template"]["spec"]["containers"][0]

    def add_worker(name: str, count: int) -> tuple[list, float]:
        """Start a worker pod; once its node is in Ray, the nodes when `count` serve with
        shards owning partitions, and the seconds that took from the node's joining."""
        for attempt in range(3):
            ray_start = kuberay_start(group["rayStartParams"], False, gcs_port)  # own ports
            pod = Pod(f"{name}-{attempt}", worker_container["command"]
                      + worker_container["args"], env_for(group["template"]["spec"], ray_start),
                      tmp)
            try:
                wait_until(lambda: len(nodes()) == count, NODE_UP_S, f"{name}'s node in Ray",
                           poll_s=0.5)
                break
            except AssertionError:  # Ray's own start of a node failed (see NODE_UP_S)
                pod.stop(grace_s=5)
        else:
            raise AssertionError(f"Ray did not start {name}'s node in 3 tries")
        started.append(pod)
        joined_at = time.monotonic()

        def ready() -> list | None:
            serving = [n for n in nodes() if n.serving and n.shards and n.partitions]
            return serving if len(serving) == count else None
        serving = wait_until(ready, START_S, f"{count} nodes serving", poll_s=0.5)
        return serving, time.monotonic() - joined_at

    known = {n.node_id for n in nodes()}  # the head's
    first = {n.node_id: n for n in add_worker("worker-1", 2)[0]}
    worker = next(n for node_id, n in first.items() if node_id not in known)

    traffic = Traffic(12, api_key=APP_KEY).start(
        [f"127.0.0.1:{n.gateway_port}" for n in first.values()])
    wait_until(lambda: traffic.total() > 100, 60, "a first stretch of traffic")

    serving, took_s = add_worker("worker-2", 3)
    joined = next(n for n in serving if n.node_id not in first)
    assert took_s < JOIN_S, f"the joined node served with its shard {took_s:.1f} s after it joined"
    traffic.targets = [f"127.0.0.1:{n.gateway_port}" for n in nodes() if n.serving]

    pre_stop = worker_container["lifecycle"]["preStop"]["exec"]["command"]
    for pod, node in ((started[-1], joined), (started[1], worker)):
        acked = traffic.total()
        wait_until(lambda: traffic.total() > acked + 50, 60, f"traffic before {pod.name} goes")
        hook = [part.replace(f"kairos-gateway:{GATEWAY_PORT}", f"127.0.0.1:{head_port}")
                for part in pre_stop]
        done = subprocess.run(hook, env={**pod.env, "POD_IP": node.node_id},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "is drained" in done.stdout
        after = {n.node_id: n for n in nodes()}
        assert after[node.node_id].draining and not after[node.node_id].shards
        traffic.targets = [f"127.0.0.1:{n.gateway_port}" for n in after.values() if n.serving]
        pod.stop()  # the kubelet's SIGTERM once preStop returned: Ray stops on the node
        wait_until(lambda: node.node_id not in {n.node_id for n in nodes()}, 120,
                   f"{pod.name}'s node to leave Ray", poll_s=1.0)
    acked = traffic.total()
    wait_until(lambda: traffic.total() > acked + 50, 60, "traffic after both drains")
    traffic.stop()
    with grpc.insecure_channel(f"127.0.0.1:{head_port}") as channel:
        traffic.check(decision_pb2_grpc.DecisionServiceStub(channel))
    admin_channel.close()
