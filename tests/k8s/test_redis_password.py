"""Any password a Secret holds works for Redis: the rendered Redis container's own command
starts the real redis-server (the venv's) with the password in REDIS_PASSWORD, as the
Secret's env var gives it, and Kairos, reading the same password from the Secret's file,
authenticates. The review's case: written into the config line as it was, a `"` or a trailing
`\\` stopped redis-server (a crash loop) and a `\\x41` was decoded (every AUTH refused). What
sharing one machine changes: the data folder, a free port on loopback."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_server import EXECUTABLE, free_port
from kairos.cluster.storage.redis_store import STORE_PASSWORD_FILE_ENV
from kairos.cluster.storage.store import StoreUnavailable

from tests.support.manifests import one

PASSWORDS = ['has"quote', "ends-with\\", "back\\x41slash", "with  spaces ", "single'quote",
             "crlf-terminated\r\n", "new\nline", 'all\\"of\\\\them"\\', "$HOME `id` ${x}",
             "pässwörd", "inner\rcr", "inner\r\ncrlf"]


def _script(overlay: str) -> tuple[list[str], str]:
    (c,) = one(overlay, "StatefulSet", "kairos-redis")["spec"]["template"]["spec"]["containers"]
    return c["command"], c["args"][0]


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_rendered_redis_command_takes_any_password(tmp_path, monkeypatch, password):
    command, script = _script("laptop")
    port = free_port()
    (tmp_path / "data").mkdir()
    script = (script.replace("redis-server -", f"{EXECUTABLE} - --bind 127.0.0.1 --port {port}")
              .replace("/data", f"{tmp_path}/data"))
    env = {**os.environ, "REDIS_PASSWORD": password, "REDIS_MEMORY_LIMIT": str(2**30)}
    server = subprocess.Popen([*command, script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    secret = tmp_path / "password"  # the Secret's file, which Kairos reads
    secret.write_text(password, newline="")
    secret.chmod(0o600)
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(secret))
    try:
        store = open_store(f"redis://127.0.0.1:{port}/0")
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None, f"redis-server stopped: {server.stdout.read()!r}"
            try:
                store.put(1, "ana", b"home")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "Redis did not take Kairos's password"
                time.sleep(0.1)
        assert store.get(1, "ana") == b"home"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("password", ["", "\n", "\r\n"])
def test_the_rendered_redis_command_refuses_an_empty_password(password):
    """Redis with `requirepass ""` serves without AUTH: the container stops instead."""
    command, script = _script("laptop")
    done = subprocess.run([*command, script], env={**os.environ, "REDIS_PASSWORD": password,
                                                   "REDIS_MEMORY_LIMIT": str(2**30)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "the password is empty" in done.stderr


def test_redis_over_tls_writes_the_password_as_the_base_does():
    """The TLS component replaces the whole command (tests/k8s/test_redis_tls.py runs it):
    its password's lines are the base's."""
    def password_lines(script: str) -> list[str]:
        lines = [line.strip() for line in script.splitlines()]
        before = lines[:next(i for i, line in enumerate(lines) if line.startswith("exec "))]
        return before + [line for line in lines if line.startswith("requirepass")]
    base = password_lines(_script("laptop")[1])
    assert base and password_lines(_script("production")[1]) == base
