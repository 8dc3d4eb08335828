"""A real console server for a test: a process on a free loopback port, waited for."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], env: dict[str, str] | None = None,
            stderr: IO | None = None) -> Iterator[int]:
    """Runs `command(port)` until the context ends (its stderr to `stderr`, where given);
    yields the port once it accepts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(command(port), env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(30)
