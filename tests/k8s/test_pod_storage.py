"""The Ray containers and KubeRay's autoscaler sidecar write only to their volumes: a read-only
root filesystem, an emptyDir at every place Ray and Kairos write (Ray's temp dir /tmp/ray,
shared memory /dev/shm, Python's temp dir /tmp), and ephemeral-storage requests and limits
that hold the disk volumes, so that nothing grows the node's disk without a bound."""
from __future__ import annotations

import pytest

from tests.k8s.quantities import quantity_bytes
from tests.support.manifests import raycluster

OVERLAYS = ("laptop", "production")
# where Ray and Kairos write in a pod: Ray's temp dir (logs, sessions, sockets, spilled
# objects), its object store, and Python's temporary files (tempfile, Ray's other temp files).
# `kairos start` and `kairos drain` write nothing in the home directory.
WRITTEN = {"/tmp/ray", "/dev/shm", "/tmp"}
SIDECAR_WRITTEN = {"/tmp"}  # KubeRay mounts the head's /tmp/ray volume in it itself
# beside the disk volumes: the container's own output, which the kubelet rotates (10 MiB x 5)
OUTPUT_BYTES = 64 * 2**20


def ray_pods(overlay: str) -> list[tuple[str, dict]]:
    rc = raycluster(overlay)["spec"]
    return [("head", rc["headGroupSpec"]["template"]["spec"])] + [
        (f"group {g['groupName']}", g["template"]["spec"]) for g in rc["workerGroupSpecs"]]


def _storage(c: dict, bound: str) -> int:
    return quantity_bytes(c.get("resources", {}).get(bound, {}).get("ephemeral-storage", "0"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_containers_write_only_to_their_volumes(overlay):
    for where, spec in ray_pods(overlay):
        c = spec["containers"][0]
        assert c["securityContext"].get("readOnlyRootFilesystem") is True, f"{overlay} {where}"
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounted = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        missing = WRITTEN - {p for p, v in mounted.items() if "emptyDir" in v}
        assert not missing, f"{overlay} {where}: no emptyDir at {sorted(missing)}"
    options = raycluster(overlay)["spec"]["autoscalerOptions"]
    assert options["securityContext"].get("readOnlyRootFilesystem") is True, overlay
    head = ray_pods(overlay)[0][1]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounted = {m["mountPath"] for m in options.get("volumeMounts", [])
               if "emptyDir" in volumes[m["name"]]}
    assert SIDECAR_WRITTEN <= mounted, f"{overlay}: the sidecar's mounts {mounted}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ephemeral_storage_is_requested_and_bounded_and_holds_the_disk_volumes(overlay):
    options = raycluster(overlay)["spec"]["autoscalerOptions"]
    for where, spec in ray_pods(overlay):
        containers = spec["containers"] + ([options] if where == "head" else [])
        for c in containers:
            assert 0 < _storage(c, "requests") <= _storage(c, "limits"), \
                f"{overlay} {where} {c.get('name', 'autoscaler')}: ephemeral-storage"
        # the kubelet evicts a pod past the sum of its containers' limits: the disk emptyDirs
        # filled to their sizeLimits (which evict on their own) and the output stay below it
        disk = sum(quantity_bytes(v["emptyDir"]["sizeLimit"]) for v in spec["volumes"]
                   if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
        limits = sum(_storage(c, "limits") for c in containers)
        assert disk + OUTPUT_BYTES * len(containers) <= limits, \
            f"{overlay} {where}: {disk} B of volumes against {limits} B of limits"
