"""The Ray pods' entrypoints as the rendered manifests have them (the head's kairos-head.sh,
the workers' inline command), run with stand-ins for `ray` and `kairos` on PATH: what they do
on SIGTERM and with the session directories earlier containers left in Ray's temp dir.
tests/cluster/test_pods.py runs them with the real commands."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.manifests import one, raycluster
from tests.support.waiting import wait_until

OVERLAY = "laptop"
# `ray`: `ray start --block` runs until SIGTERM, noting it; `ray health-check` answers.
# `kairos`: `kairos start` notes its start and runs (shards recovering) until SIGTERM.
RAY = """#!/bin/bash
if [ "$1" = start ]; then
    trap 'echo TERM > "$STUBS/ray-stopped"; exit 0' TERM
    sleep 600 & wait
fi
"""
KAIROS = """#!/bin/bash
trap 'echo TERM > "$STUBS/kairos-stopped"; exit 0' TERM
echo "$$" > "$STUBS/kairos-started"
sleep 600 & wait
"""
OLD = ("session_2026-12-01_10-00-00_000001_11", "session_2026-12-02_10-00-00_000001_12")
IN_USE = "session_2026-12-03_10-00-00_000001_13"


@pytest.fixture
def stubs(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in (("ray", RAY), ("kairos", KAIROS)):
        (bin_ / name).write_text(body)
        (bin_ / name).chmod(0o755)
    ray_dir = tmp_path / "ray"
    for name in OLD + (IN_USE,):
        (ray_dir / name / "logs").mkdir(parents=True)
        (ray_dir / name / "logs" / "raylet.out").write_text("x" * 1000)
    (ray_dir / "session_latest").symlink_to(ray_dir / OLD[-1])
    (ray_dir / "prom_metrics_service_discovery.json").write_text("[]")
    # a Ray beside this one, on a machine shared with it: its GCS names its session
    beside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               f"--session-name={IN_USE}"])
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "STUBS": str(tmp_path),
           "RAY_TMPDIR": str(tmp_path), "KUBERAY_GEN_RAY_START_CMD": "ray start --block"}
    pods: list[subprocess.Popen] = []
    yield tmp_path, env, pods
    beside.kill()
    beside.wait()
    for pod in pods:  # the stand-ins' sleeps too
        try:
            os.killpg(pod.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pod.wait()


def start(command: list[str], env: dict[str, str], pods: list) -> subprocess.Popen:
    pod = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    pods.append(pod)
    return pod


def head_script(tmp: Path) -> list[str]:
    script = tmp / "kairos-head.sh"
    script.write_text(one(OVERLAY, "ConfigMap", "kairos-head-start")["data"]["kairos-head.sh"])
    return ["/bin/bash", str(script)]


def assert_pruned(tmp: Path) -> None:
    """Earlier containers' sessions are gone; one a running process names, the session_latest
    link (Ray repoints it) and Ray's other files stay."""
    ray_dir = tmp / "ray"
    assert sorted(p.name for p in ray_dir.iterdir()) == \
        sorted([IN_USE, "prom_metrics_service_discovery.json", "session_latest"])


def test_sigterm_while_kairos_start_runs_stops_it_and_ray_at_once(stubs):
    """`kairos start` recovering shards may run 16 minutes; the kubelet's SIGTERM must not
    wait for it (bash defers a trap while a foreground command runs), or the grace period
    ends in SIGKILL with Ray never stopped."""
    tmp, env, pods = stubs
    head = start(head_script(tmp), env, pods)
    wait_until(lambda: (tmp / "kairos-started").exists(), 30, "kairos-head.sh to run kairos")
    head.send_signal(signal.SIGTERM)
    try:
        assert head.wait(15) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("kairos-head.sh did not stop within 15 s of SIGTERM")
    assert (tmp / "kairos-stopped").exists() and (tmp / "ray-stopped").exists()


def test_the_head_prunes_earlier_sessions_before_ray_starts(stubs):
    tmp, env, pods = stubs
    start(head_script(tmp), env, pods)
    wait_until(lambda: (tmp / "kairos-started").exists(), 30, "kairos-head.sh to run kairos")
    assert_pruned(tmp)


def test_a_worker_prunes_earlier_sessions_before_ray_starts(stubs):
    tmp, env, pods = stubs
    (group,) = raycluster(OVERLAY)["spec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    worker = start(container["command"] + container["args"],
                   {**env, "KUBERAY_GEN_RAY_START_CMD": "true"}, pods)
    assert worker.wait(30) == 0
    assert_pruned(tmp)

