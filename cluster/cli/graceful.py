"""`kairos down`'s graceful stop: the runtime stopped through Ray (gateways drained, actors
stopped) before Ray's processes are, in a child process killed after GRACEFUL_STOP_S: a Ray
driver whose GCS is gone or hung (or that follows the address file of a dead cluster) retries
for many minutes."""
from __future__ import annotations

import json
import subprocess
import sys

from kairos.cluster.cli.local import Run, ray_env

GRACEFUL_STOP_S = 30.0


def stop_runtime(run: Run) -> dict | None:
    """Stop the gateways (gracefully), the controller, the learner and the shards through Ray,
    in a child process that is killed if it takes longer than GRACEFUL_STOP_S. What it stopped,
    or None when it could not."""
    code = (f"from kairos.cluster.cli.graceful import _stop_runtime; "
            f"_stop_runtime({run.ray_address!r})")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=ray_env(run.loopback,
                                                                        run.auth_mode),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=GRACEFUL_STOP_S)
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1])


def _stop_runtime(address: str) -> None:
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.settings import NAMESPACE
    ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    try:
        shards = len(ray.get(runtime.controller().status.remote(), timeout=10)["shards"])
    except (ValueError, ray.exceptions.RayError, TimeoutError):
        shards = 0
    runtime.stop()
    ray.shutdown()
    print(json.dumps({"shards": shards}))
