"""Kairos's secrets reach the Ray pods as files, not as environment variables (which every Ray
process inherits, and which KubeRay copies into the workers' init container): each Secret is
mounted where the variable that names its file points, with a mode and a pod securityContext
that Kairos's check of secrets' files accepts (cluster/secret_files.py), and the head's
entrypoint hands `kairos start` the password file's path, never the password, which every
process that opens the store (on the workers too) reads from the file itself."""
from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path

import pytest

from kairos.cluster import secret_files
from tests.k8s.test_entrypoints import head_script, start, stubs  # noqa: F401 (a fixture)
from tests.support.manifests import env_of, head, raycluster
from tests.support.waiting import wait_until

OVERLAYS = ("laptop", "production")
PROJECTED = 0o440


def ray_pods(overlay: str) -> list[tuple[str, dict]]:
    rc = raycluster(overlay)["spec"]
    return [("head", rc["headGroupSpec"]["template"]["spec"])] + [
        (f"group {g['groupName']}", g["template"]["spec"]) for g in rc["workerGroupSpecs"]]


def secret_at(spec: dict, path: str) -> tuple[str, str]:
    """(Secret, key) of the file at `path` in the pod's first container, from its mounts."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in spec["containers"][0].get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None or posixpath.dirname(path) != mount["mountPath"]:
            continue
        name = posixpath.basename(path)
        keys = {i["path"]: i["key"] for i in secret.get("items", [])} or {name: name}
        if name in keys:
            return secret["secretName"], keys[name]
    raise AssertionError(f"no Secret is mounted at {path}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_in_the_environment_of_a_ray_container(overlay):
    rc = raycluster(overlay)["spec"]
    found = [(where, spec["containers"][0]) for where, spec in ray_pods(overlay)]
    found.append(("autoscaler", rc["autoscalerOptions"]))
    for where, c in found:
        from_secrets = [e["name"] for e in c.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})]
        assert not from_secrets, f"{overlay} {where}: {from_secrets} from Secrets in env"
        assert not [e for e in c.get("envFrom", []) if "secretRef" in e], f"{overlay} {where}"
        assert not any("$(" in e.get("value", "") for e in c.get("env", [])), \
            f"{overlay} {where}: a variable expanded from another (a password in a URL)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_secret_is_mounted_where_the_variable_naming_its_file_points(overlay):
    (_, head_spec), *workers = ray_pods(overlay)
    env = env_of(head_spec["containers"][0])
    keys_file = env["KAIROS_API_KEYS_FILE"]["value"]
    assert secret_at(head_spec, keys_file) == ("kairos-api-keys", "api-keys.yaml")
    assert secret_at(head_spec, env["KAIROS_STORE_PASSWORD_FILE"]["value"]) == (
        "kairos-redis", "password")
    assert workers
    for where, spec in workers:
        # the gateway on a worker reads the keys at the path the head's --keys names
        assert secret_at(spec, keys_file) == ("kairos-api-keys", "api-keys.yaml"), where
        admin = env_of(spec["containers"][0])["KAIROS_API_KEY_FILE"]["value"]
        assert secret_at(spec, admin) == ("kairos-api-keys", "admin-key"), where
        # the shards on a worker open the store, with the password from the same file
        password = env_of(spec["containers"][0])["KAIROS_STORE_PASSWORD_FILE"]["value"]
        assert password == env["KAIROS_STORE_PASSWORD_FILE"]["value"], where
        assert secret_at(spec, password) == ("kairos-redis", "password"), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_mounted_as_volumes_not_subpaths(overlay):
    """A subPath mount is a single file, without the Secret volume's `..data` layout that
    Kairos's check of secrets' files asks of a root-owned, group-readable file."""
    for where, spec in ray_pods(overlay):
        secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
        for c in spec["containers"] + spec.get("initContainers", []):
            assert not [m for m in c.get("volumeMounts", [])
                        if m["name"] in secrets and m.get("subPath")], f"{overlay} {where}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_mounted_secrets_pass_kairos_check_of_secrets_files(overlay, monkeypatch):
    """As the kubelet makes them: root's, the volume's defaultMode, group fsGroup; read by
    the pod's user (runAsUser, runAsGroup, and fsGroup among its groups)."""
    for where, spec in ray_pods(overlay):
        pod = spec["securityContext"]
        assert pod["runAsUser"] != 0 and "fsGroup" in pod, f"{overlay} {where}"
        monkeypatch.setattr(secret_files.os, "getegid", lambda: pod["runAsGroup"])
        monkeypatch.setattr(secret_files.os, "getgroups",
                            lambda: [pod["fsGroup"], *pod.get("supplementalGroups", [])])
        secrets = [v["secret"] for v in spec["volumes"]
                   if v.get("secret", {}).get("secretName") in ("kairos-api-keys",
                                                                 "kairos-redis")]
        assert secrets, f"{overlay} {where}"
        for secret in secrets:
            assert secret.get("defaultMode") == PROJECTED, f"{overlay} {where}: {secret}"
            made = os.stat_result((0o100000 | secret["defaultMode"], 0, 0, 1, 0,
                                   pod["fsGroup"], 64, 0, 0, 0))
            assert secret_files.projected(made), f"{overlay} {where}: {secret}"


def record_every_command(tmp: Path, env: dict[str, str]) -> Path:
    """Put a shim before every program the PATH of `env` finds (but the stand-ins for ray and
    kairos, which record themselves) that appends its argv to the file returned and runs the
    program: what the review's strace saw of /usr/bin/env."""
    shims, argv = tmp / "shims", tmp / "argv"
    shims.mkdir()
    for folder in env["PATH"].split(os.pathsep):
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            real = os.path.join(folder, name)
            shim = shims / name
            if name in ("ray", "kairos") or shim.exists() or not os.access(real, os.X_OK) \
                    or os.path.isdir(real):
                continue
            shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{argv}"\n'
                            f'exec "{real}" "$@"\n')
            shim.chmod(0o755)
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    return argv


# `kairos`: records its command line and the store variables it was given, then parses
# the command line as the real one does, in its environment: the store it would start with
PARSING_KAIROS = f"""#!{sys.executable}
import os, sys, time
stubs = os.environ["STUBS"]
with open(os.path.join(stubs, "argv"), "a") as f:
    f.write(" ".join(sys.argv) + "\\n")
with open(os.path.join(stubs, "kairos-env"), "w") as f:
    f.write(repr({{k: v for k, v in os.environ.items() if k.startswith("KAIROS_STORE")}}))
open(os.path.join(stubs, "kairos-ran"), "w").close()  # the files above are whole
from kairos.cluster.cli.main import parser
args = parser(50051).parse_args(sys.argv[1:])
with open(os.path.join(stubs, "store.tmp"), "w") as f:
    f.write(args.store)
os.replace(os.path.join(stubs, "store.tmp"), os.path.join(stubs, "store"))
time.sleep(600)
"""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_store_password_is_on_no_command_line_nor_in_the_url_kairos_start_passes_on(
        overlay, stubs):  # noqa: F811 (the fixture)
    tmp, env, pods = stubs
    (tmp / "bin" / "kairos").write_text(PARSING_KAIROS)
    password = tmp / "password"
    password.write_text("S3cret-Passw0rd")
    password.chmod(0o600)
    head_env = {e["name"]: e["value"] for e in head(overlay)["spec"]["containers"][0]["env"]
                if "value" in e}
    store = head_env["KAIROS_STORE"]
    argv = record_every_command(tmp, env)
    start(head_script(tmp), {**env, "KAIROS_STORE": store, "KAIROS_STORE_PASSWORD_FILE":
                             str(password), "KAIROS_API_KEYS_FILE": "/etc/keys.yaml",
                             "KAIROS_INSECURE": head_env["KAIROS_INSECURE"]}, pods)
    wait_until(lambda: (tmp / "kairos-ran").exists(), 60, "kairos-head.sh to run kairos")
    # the shims record: the `ray start` stand-in's sleep, run in the background beside the
    # script, which a loaded machine may start after kairos
    wait_until(lambda: f"{tmp}/shims/sleep " in argv.read_text(), 30, "a shim's record")
    commands = argv.read_text().splitlines()
    # plaintext on the pod network, as the manifests say (kairos start refuses it otherwise)
    assert any(" start --address " in c and "--keys /etc/keys.yaml" in c and "--insecure" in c
               for c in commands)
    assert not [c for c in commands if "S3cret" in c]
    # kairos got the store without it, and the file's path, in its environment
    assert (tmp / "kairos-env").read_text() == repr(
        {"KAIROS_STORE": store, "KAIROS_STORE_PASSWORD_FILE": str(password)})
    # and checks the file, but passes the URL on without it: the actors it starts are
    # Ray tasks whose arguments the GCS keeps
    wait_until(lambda: (tmp / "store").exists(), 30, "kairos to parse its command line")
    assert (tmp / "store").read_text() == store


def test_the_head_stops_when_kairos_start_cannot_read_the_password(stubs):  # noqa: F811
    tmp, env, pods = stubs
    (tmp / "bin" / "kairos").write_text(
        f'#!/bin/bash\nexec "{Path(sys.executable).parent / "kairos"}" "$@"\n')
    head_ = start(head_script(tmp), {**env, "KAIROS_STORE": "redis://kairos-redis:6379/0",
                                     "KAIROS_STORE_PASSWORD_FILE": str(tmp / "absent")}, pods)
    assert head_.wait(60) == 1
    assert (tmp / "ray-stopped").exists()
