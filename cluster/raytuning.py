"""Ray's own settings for every Ray Kairos starts: `kairos up` (cli/local.py), the bench
(bench/systems.py), the tests' Ray (tests/conftest.py) and the Kubernetes pods (k8s/base/
raycluster.yaml, held to this by tests/k8s/test_ray_tuning.py).

Idle, Ray's periodic timers cost a node more CPU than Kairos's own loops. These lengthen the
ones whose period buys nothing Kairos or its operators use, measured against Ray's defaults
(issue 17; ms of CPU a second of the process named, idle, one node, 2 shards). None touches
failure detection (health checks, raylet and worker death checks), the memory monitor (Ray's
OOM killer), or the metrics export interval (Kairos's own metrics go through Ray's). The
largest Ray cost an actor has, a 10 ms timer on its main thread that checks for signals
(about 4 ms/s each), is fixed in Ray: no setting reaches it. Task events stay at Ray's
default (every second): a worker sends at most a batch of them a flush, so a longer period
caps how many a busy process reports (the bench's Ray peers make one actor call a request)
and leaves the dashboard's task views incomplete under load, not just late.
Set in the environment of Ray's processes, which read RAY_<name> for Ray's system config;
an operator's own value for any of them wins in `kairos up`.
"""
from __future__ import annotations

import os
import secrets
import sys

RAY_SETTINGS: dict[str, str] = {
    # Ray's log monitor (it sends the workers' output to the drivers that log_to_driver) looks
    # for new log files 10 times a second while a node has fewer than this many: with 0, every
    # 0.5 s (LOG_NAME_UPDATE_INTERVAL_S), still reading the known files 10 times a second.
    # A new worker's first lines reach a driver up to 0.5 s later, none lost (a new file is read
    # from its start); `ray logs` and the dashboard read the files themselves. 7 -> 4 ms/s.
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    # The raylet's checks of the object store's use (a global GC past 70%), of the disk (object
    # creation refused past 95%) and of idle workers to stop: every second instead of 10, 10
    # and 5 times a second. The GC check only asks workers to collect (freeing and spilling
    # store objects run on timers of their own); Kairos's actors are not idle workers.
    # 148 -> 132 raylet wakeups a second (under 1 ms/s).
    "RAY_raylet_check_gc_period_milliseconds": "1000",
    "RAY_local_fs_monitor_interval_ms": "1000",
    "RAY_kill_idle_workers_interval_ms": "1000",
}


def own_token() -> None:
    """For a Ray this process starts for itself (the tests', the bench's): Ray's token
    authentication with a token in the environment (RAY_AUTH_TOKEN, which Ray's processes
    inherit) unless a token or a token file (RAY_AUTH_TOKEN_PATH) was chosen there, or another
    mode. A local `ray.init()` with RAY_AUTH_MODE unset turns token mode on and writes a token
    to ~/.ray/auth_token under the umask (Ray 2.60): readable by others, in the user's home,
    and refused by a later `kairos up`. Ray reads the mode into its config at import: where
    this sets it, an imported Ray not yet initialised reads its config again, as Ray's own
    switch to token mode does (a process connected to a Ray, such as the bench's workers, has
    the mode already, and a reread would drop the cluster's _system_config)."""
    chosen = os.environ.get("RAY_AUTH_MODE", "").strip()
    os.environ["RAY_AUTH_MODE"] = chosen or "token"
    if os.environ["RAY_AUTH_MODE"].lower() == "token" and not (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # as `kairos up` makes one
    ray = sys.modules.get("ray")
    if not chosen and "ray._raylet" in sys.modules and not ray.is_initialized():
        sys.modules["ray._raylet"].Config.initialize("")
