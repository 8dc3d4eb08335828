"""Kairos's secrets reach the Ray pods as files, not as environment variables (which every Ray
process inherits, and which KubeRay copies into the workers' init container): each Secret is
mounted where the variable that names its file points, with a mode and a pod securityContext
that Kairos's check of secrets' files accepts (cluster/cli/secret_files.py), and the head's
entrypoint puts the store's password into the URL for `kairos start` alone."""
from __future__ import annotations

import os
import posixpath

import pytest

from kairos.cluster.cli import secret_files
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_head_puts_the_password_into_the_store_for_kairos_start_only(
        overlay, stubs):  # noqa: F811 (the fixture)
    tmp, env, pods = stubs
    (tmp / "bin" / "kairos").write_text(
        '#!/bin/bash\necho "$KAIROS_STORE" > "$STUBS/store"\necho "$@" > "$STUBS/args"\n'
        'sleep 600 & wait\n')
    password = tmp / "password"
    password.write_text("0123abcd")
    head_env = {e["name"]: e["value"] for e in head(overlay)["spec"]["containers"][0]["env"]
                if "value" in e}
    store = head_env["KAIROS_STORE"]
    start(head_script(tmp), {**env, "KAIROS_STORE": store, "KAIROS_STORE_PASSWORD_FILE":
                             str(password), "KAIROS_API_KEYS_FILE": "/etc/keys.yaml"}, pods)
    wait_until(lambda: (tmp / "args").exists() and (tmp / "store").exists(), 30,
               "kairos-head.sh to run kairos")
    scheme, rest = store.split("://")
    assert (tmp / "store").read_text().strip() == f"{scheme}://:0123abcd@{rest}"
    assert "--keys /etc/keys.yaml" in (tmp / "args").read_text()


def test_the_head_stops_when_it_cannot_read_the_password(stubs):  # noqa: F811
    tmp, env, pods = stubs
    head_ = start(head_script(tmp), {**env, "KAIROS_STORE": "redis://kairos-redis:6379/0",
                                     "KAIROS_STORE_PASSWORD_FILE": str(tmp / "absent")}, pods)
    assert head_.wait(30) == 1
    assert not (tmp / "kairos-started").exists() and (tmp / "ray-stopped").exists()
