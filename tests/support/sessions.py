"""Processes started as a pod's container would be: each in a process session of its own, so
that everything it starts (Ray's GCS, raylets, workers, the autoscaler's nodes) is found and
stopped by that session, and nothing else on the machine is (never `ray stop`)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class Pod:
    """A container's command as a process in a session of its own, its output in a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path):
        self.name = name
        self.env = env
        self.log = logs / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM, as the kubelet sends after preStop; what is left of the session after
        the grace period is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        kill_session(self.process.pid)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a Pod's process is its session's leader)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
