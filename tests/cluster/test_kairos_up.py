"""The README's `kairos up`, `kairos demo`, `kairos status`, `kairos catalog push` and `kairos
down`, as a user runs them, on a KAIROS_HOME, Ray temp dir and ports of the test's own, so a
Kairos the user runs is never touched."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kairos.cluster.cli import local
from kairos.cluster.cli.options import STORE_DIR
from kairos.cluster.cli.remote import Remote
from kairos.cluster.storage.redis_server import free_port

from tests.support.listeners import LOOPBACK, listening

KAIROS = str(Path(sys.executable).parent / "kairos")  # the installed console script


def kairos(*args: str, env: dict[str, str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([KAIROS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.fixture
def short_temp() -> Iterator[Callable[[], str]]:
    """Makes temp dirs with short paths (Ray's socket paths live under them, 107 bytes at
    most), removed after the test whatever happened."""
    made: list[str] = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="kx-"))
        return made[-1]
    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def test_up_demo_status_push_down_on_ports_of_its_own(tmp_path, default_yaml, short_temp):
    """And a second `kairos up` on its store is refused: two clusters on one store appended to
    the same shards' journals (their shards have the same names) and corrupted them."""
    home = tmp_path / "home"
    ray_temp, second_temp = short_temp(), short_temp()  # the second `kairos up`'s
    # a Ray token of its own: `kairos up` makes ~/.ray/auth_token when there is none
    env = {**os.environ, local.HOME_ENV: str(home), "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    up = ["up", "--shards", "2", "--port", "0", "--ray-port", str(free_port()),
          "--dashboard-port", str(free_port()), "--ray-temp-dir", ray_temp,
          "--console-port", "0"]  # the console's own test starts one: tests/console/
    try:
        done = kairos(*up, env=env)
        assert done.returncode == 0, done.stderr
        assert "Kairos is up: 1 Ray node(s) on 127.0.0.1 (loopback only), 2 shards" \
            in done.stdout
        run = json.loads((home / "run.json").read_text())
        assert run["temp_dir"] == ray_temp and len(run["sessions"]) == 1
        # loopback only: every server of Ray's and Kairos's processes
        procs = local.processes(local.Run(**run))
        assert {"gcs_server", "raylet"} <= {local.name_of(p) for p in procs}
        assert listening(procs) <= LOOPBACK

        again = kairos(*up, env=env)
        assert again.returncode == 1 and "Kairos is already running" in again.stderr

        status = kairos("status", env=env, timeout_s=60)  # the target comes from the record
        assert status.returncode == 0, status.stderr
        assert "kairos-shard-0001" in status.stdout

        demo = kairos("demo", env=env, timeout_s=120)
        assert demo.returncode == 0, demo.stderr
        assert f"Kairos demo over gRPC ({run['gateways'][0]})" in demo.stdout
        assert "login: LinkIdentity" in demo.stdout
        assert "pushed on the watch stream" in demo.stdout

        push = kairos("catalog", "push", str(default_yaml), env=env, timeout_s=180)
        assert push.returncode == 0, push.stderr
        assert push.stdout.startswith("the cluster now runs catalog 'omni-retail'")

        # a second cluster on this one's store, with a KAIROS_HOME and ports of its own
        store = home / STORE_DIR
        second = {**os.environ, local.HOME_ENV: str(tmp_path / "second"),
                  "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        refused = kairos("up", "--shards", "1", "--port", "0", "--ray-port", str(free_port()),
                         "--no-dashboard", "--ray-temp-dir", second_temp, "--console-port", "0",
                         "--store", str(store), env=second)
        if refused.returncode == 0:
            kairos("down", env=second, timeout_s=120)
        assert refused.returncode == 1, refused.stdout
        assert (f"error: Kairos did not start: the store {store} is in use by another Kairos "
                f"cluster (its controller: host ") in refused.stderr, refused.stderr
        assert "(stopped what had started)" in refused.stderr
        assert "did not answer" not in refused.stderr  # it started no shard: not asked for any
        remote = Remote(run["gateways"][0])  # and the first serves on
        try:
            ack = remote.ingest("second-store", "page_view", time.time(), {"category": "home"})
        finally:
            remote.channel.close()
        assert ack.sequence == 1
    finally:
        down = kairos("down", env=env, timeout_s=120)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("Kairos is down: stopped the gateways on "), down.stdout
    assert "the controller, the learner and 2 shards" in down.stdout
    assert not local.processes(local.Run(**run))
    assert not (home / "run.json").exists()
    assert not (Path(ray_temp) / "ray_current_cluster").exists()


def test_start_serves_on_a_ray_cluster_something_else_started(tmp_path, monkeypatch):
    """`kairos start --address` as KubeRay's head pod runs it: Ray is up already (here a
    `ray start --head` of the test's own, on loopback), Kairos joins it, starts the runtime and
    a gateway on the node, exits, and keeps serving."""
    platform, home = tmp_path / "platform", tmp_path / "home"
    platform.mkdir(mode=0o700)  # a home others may write is refused, whatever the umask
    monkeypatch.setenv(local.HOME_ENV, str(platform))  # where start_ray keeps its record
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray_temp = tempfile.mkdtemp(prefix="kx-")
    run = local.Run(ray_address=f"{local.LOOPBACK}:{free_port()}", temp_dir=ray_temp,
                    sessions=[], started=time.time(), loopback=True, auth_mode="token")
    env = {**local.ray_env(run.loopback, run.auth_mode), local.HOME_ENV: str(home)}
    try:
        local.start_ray(run, None)  # the platform's Ray, not Kairos's
        done = kairos("start", "--address", run.ray_address, "--host", local.LOOPBACK,
                      "--port", "0", "--shards", "2", "--store", "memory", env=env)
        assert done.returncode == 0, done.stderr
        assert f"Kairos is serving on the Ray cluster at {run.ray_address}: 2 shards" \
            in done.stdout
        target = done.stdout.split("gRPC on ")[1].split(";")[0]
        status = kairos("--target", target, "status", env=env, timeout_s=60)
        assert status.returncode == 0, status.stderr
        assert "kairos-shard-0001" in status.stdout
        assert not home.exists()  # nothing recorded: the platform stops its Ray
    finally:
        local.terminate(run)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_start_on_an_address_where_no_ray_answers_gives_up_after_ray_wait(tmp_path):
    """Ray's own client retries a GCS that does not answer with no end: `kairos start` bounds
    that wait (--ray-wait), says why it gave up, and exits 1."""
    env = {**local.ray_env(True, "token"), local.HOME_ENV: str(tmp_path / "home"),
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"{local.LOOPBACK}:{free_port()}"  # nothing listens there
    began = time.monotonic()
    done = kairos("start", "--address", address, "--host", local.LOOPBACK, "--ray-wait", "3",
                  "--store", "memory",
                  env=env, timeout_s=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"error: no Ray cluster answered at {address} within 3 s (--ray-wait)" in done.stderr
    assert time.monotonic() - began < 60


def test_a_start_that_fails_leaves_no_runtime_behind_and_names_the_cause(ray_cluster,
                                                                         tmp_path):
    """`kairos start` on a Ray started by hand, with the gateway's port held by another
    process: it fails naming the port, stops the learner, controller, shards and gateway it had
    started (detached: they would otherwise serve on their own and hold their names), so a
    second start, on a free port, succeeds."""
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.settings import NAMESPACE

    cluster = ray_cluster()
    env = {**os.environ, local.HOME_ENV: str(tmp_path / "home")}
    start = ["start", "--address", cluster.address, "--host", local.LOOPBACK, "--shards", "1",
             "--store", "memory"]
    with socket.socket() as held:
        held.bind((local.LOOPBACK, 0))
        held.listen()
        port = held.getsockname()[1]
        failed = kairos(*start, "--port", str(port), env=env)
    assert failed.returncode == 1, failed.stdout
    assert "error: Kairos did not start" in failed.stderr
    assert f"could not bind {local.LOOPBACK} on port {port}" in failed.stderr, failed.stderr
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE]
    try:
        done = kairos(*start, "--port", "0", env=env)
        assert done.returncode == 0, done.stderr
        assert "Kairos is serving on the Ray cluster" in done.stdout
    finally:
        runtime.stop()
