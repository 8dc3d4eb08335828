"""`kairos down`'s graceful stop: the runtime stopped through Ray (gateways drained, actors
stopped) before Ray's processes are, in a child process killed after GRACEFUL_STOP_S: a Ray
driver whose GCS is gone or hung (or that follows the address file of a dead cluster) retries
for many minutes."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

from kairos.cluster.cli.local import Run, ray_env

GRACEFUL_STOP_S = 30.0


def stop_runtime(run: Run) -> tuple[dict | None, str]:
    """Stop the gateways (gracefully), the controller, the learner and the shards through Ray,
    in a child process that is killed if it takes longer than GRACEFUL_STOP_S: (what it
    stopped and what it warned of, "") or (None, why it could not, with the last lines the
    child wrote)."""
    code = (f"from kairos.cluster.cli.graceful import _stop_runtime; "
            f"_stop_runtime({run.ray_address!r})")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=_child_env(run),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=GRACEFUL_STOP_S)
    except subprocess.TimeoutExpired as exc:
        return None, (f"the runtime did not stop through Ray within {GRACEFUL_STOP_S:.0f} s"
                      + _said(exc.stderr))
    if done.returncode != 0:
        return None, (f"stopping the runtime through Ray failed (exit {done.returncode})"
                      + _said(done.stderr))
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), ""
    except (IndexError, ValueError):  # nothing, or not what _stop_runtime prints
        return None, ("stopping the runtime through Ray ended without saying what it stopped"
                      + _said(done.stderr))


def _child_env(run: Run) -> dict[str, str]:
    """Ray's environment for the run, without Kairos's own variables: the child imports
    kairos.cluster.settings, which refuses a bad KAIROS_* value (KAIROS_TICK_S=abc) on import,
    and stopping reads none of them (the actors it stops read theirs where they run)."""
    return {name: value for name, value in ray_env(run.loopback, run.auth_mode).items()
            if not name.startswith("KAIROS_")}


def _said(stderr: str | bytes | None, lines: int = 3) -> str:
    """The last `lines` lines the child wrote to stderr (a timeout's come as bytes), if any."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    last = [line.strip() for line in (stderr or "").splitlines() if line.strip()][-lines:]
    return f"; its last words: {' / '.join(last)}" if last else ""


class _Warnings(logging.StreamHandler):
    """The stop's warnings (what it could not do: the learner's last merges unsaved, a
    controller that did not answer), kept for `kairos down` to say once the stop is done (the
    child's stderr is shown only when the stop fails), and written to stderr as they come, for
    the last words of a stop that fails or is killed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())
        super().emit(record)


def _stop_runtime(address: str) -> None:
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.settings import NAMESPACE
    ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    try:
        shards = len(ray.get(runtime.controller().status.remote(), timeout=10)["shards"])
    except (ValueError, ray.exceptions.RayError, TimeoutError):
        shards = 0
    warnings = _Warnings()
    runtime.log.addHandler(warnings)
    runtime.stop()
    ray.shutdown()
    print(json.dumps({"shards": shards, "warnings": warnings.said}))
