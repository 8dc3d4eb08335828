"""The worker count in the manifests. The overlays as shipped set no `replicas` on the worker
group: the autoscaler sets it on the live RayCluster. A `kubectl apply -k` resets it all the
same (a JSON merge patch replaces the list `workerGroupSpecs` whole; unset, the CRD's default
0 is raised to minReplicas: GetWorkerGroupDesiredReplicas in KubeRay v1.7.0), so a count set
by hand goes into the operator's overlay, as k8s/README.md (Scaling, By hand) shows."""
from __future__ import annotations

import os

import pytest

from tests.k8s.kuberay import refusals
from tests.support.manifests import K8S, raycluster, render

OVERLAYS = ("laptop", "production")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_manifest_sets_the_worker_count(overlay):
    for group in raycluster(overlay)["spec"]["workerGroupSpecs"]:
        assert "replicas" not in group, \
            f"{overlay}: group {group['groupName']} sets replicas {group['replicas']}: the " \
            f"autoscaler's count belongs to it"
        assert group["minReplicas"] <= group["maxReplicas"]


def test_the_readmes_count_by_hand_renders_in_an_overlay(tmp_path):
    """k8s/README.md's patch, in an overlay of the operator's own over the laptop's."""
    laptop = os.path.relpath(K8S / "overlays" / "laptop", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {laptop}
patches:
  - target: {{group: ray.io, version: v1, kind: RayCluster, name: kairos}}
    patch: |-
      - op: add
        path: /spec/workerGroupSpecs/0/replicas
        value: 2
""")
    (rc,) = [o for o in render(tmp_path) if o["kind"] == "RayCluster"]
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] == 2 <= group["maxReplicas"]
    assert refusals(rc) == []
