"""A redis-server the test or bench harness started dies with the process that started it: a
run killed with SIGKILL (the test suite's hang guard, a person's kill -9) leaves no server
running, reparented to PID 1 with its folder and port."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GONE_S = 5.0  # how long the kernel and PID 1 may take to end and reap it: a bound, not a figure

STARTER = """
import sys, time
from pathlib import Path
from kairos.cluster.storage.redis_server import RedisServer
server = RedisServer(Path(sys.argv[1])).start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie no longer does: it waits only to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "redis")],
                               stdout=subprocess.PIPE, text=True)
    server = int(starter.stdout.readline())
    try:
        assert _running(server)
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + GONE_S
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(server), "redis-server outlived the process that started it"
    finally:
        starter.stdout.close()
        if _running(server):  # left by a failure above: not left to run after the test
            os.kill(server, signal.SIGKILL)
