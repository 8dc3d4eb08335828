"""The worker count survives `kubectl apply -k`: no manifest sets the worker group's
`replicas`, which Ray's autoscaler (or an operator, with autoscaling off) sets on the live
RayCluster. Unset, KubeRay starts minReplicas workers (the CRD's default 0, raised to
minReplicas: GetWorkerGroupDesiredReplicas in KubeRay v1.7.0)."""
from __future__ import annotations

import pytest

from tests.support.manifests import raycluster

OVERLAYS = ("laptop", "production")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_manifest_sets_the_worker_count(overlay):
    for group in raycluster(overlay)["spec"]["workerGroupSpecs"]:
        assert "replicas" not in group, \
            f"{overlay}: group {group['groupName']} sets replicas {group['replicas']}: every " \
            f"`kubectl apply -k` would set the count back to it"
        assert group["minReplicas"] <= group["maxReplicas"]
