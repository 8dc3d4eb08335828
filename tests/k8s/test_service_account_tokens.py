"""No pod gets a Kubernetes API token it does not use. The workers and Redis call no API. On
the head only KubeRay's autoscaler sidecar does (its ServiceAccount's Role patches pods and
the RayCluster): the token is mounted in it alone, where Kubernetes would put it, and the
ray-head container, where Ray runs whatever code the cluster is given, has none (with it,
such code could relabel a pod into what the NetworkPolicies trust)."""
from __future__ import annotations

import pytest

from tests.k8s.test_manifests import OVERLAYS, pod_specs
from tests.support.manifests import head, raycluster

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_the_default_service_account_token(overlay):
    for where, spec in pod_specs(overlay):
        assert spec.get("automountServiceAccountToken") is False, \
            f"{where}: Kubernetes mounts a ServiceAccount token in every container"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_adds_no_token_to_the_ray_pods(overlay):
    """With authOptions.enableK8sTokenAuth, KubeRay v1.7.0 would add a projected token of the
    pod's ServiceAccount (on the head the autoscaler's) to every Ray pod it builds and mount
    it in the Ray container, which these templates do not show (ray-operator/controllers/ray/
    common/pod.go: configureTokenAuth, AddRayTokenVolume, SetContainerTokenAuthEnvVars)."""
    options = raycluster(overlay)["spec"].get("authOptions") or {}
    assert options.get("enableK8sTokenAuth") in (None, False), \
        f"{overlay}: KubeRay would mount the ServiceAccount's token in the Ray pods"


def token_volume(overlay: str) -> dict:
    found = [v for v in head(overlay)["spec"]["volumes"]
             if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))]
    assert len(found) == 1, f"{overlay}: the head has {len(found)} token volumes, not one"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_alone_gets_a_token_as_kubernetes_would_mount_it(overlay):
    """What Ray's KubeRay node provider reads (ray/autoscaler/_private/kuberay/
    node_provider.py: token and ca.crt under TOKEN_DIR), and the namespace, as the default
    mount has them."""
    from ray.autoscaler._private.kuberay import node_provider
    assert (node_provider.IN_CLUSTER_TOKEN_PATH, node_provider.IN_CLUSTER_CA_CERT_PATH) == \
        (f"{TOKEN_DIR}/token", f"{TOKEN_DIR}/ca.crt")
    volume = token_volume(overlay)
    sources = volume["projected"]["sources"]
    paths = {}
    for s in sources:
        if "serviceAccountToken" in s:
            paths[s["serviceAccountToken"]["path"]] = "token"
        for item in s.get("configMap", {}).get("items", []):
            assert s["configMap"]["name"] == "kube-root-ca.crt"
            paths[item["path"]] = item["key"]
        for item in s.get("downwardAPI", {}).get("items", []):
            paths[item["path"]] = item["fieldRef"]["fieldPath"]
    assert paths == {"token": "token", "ca.crt": "ca.crt", "namespace": "metadata.namespace"}
    options = raycluster(overlay)["spec"]["autoscalerOptions"]
    mounts = [m for m in options["volumeMounts"] if m["name"] == volume["name"]]
    assert mounts == [{"name": volume["name"], "mountPath": TOKEN_DIR, "readOnly": True}], \
        f"{overlay}: the autoscaler mounts the token as {mounts}"
    for where, spec in pod_specs(overlay):
        for c in spec.get("initContainers", []) + spec["containers"]:
            names = {m["name"] for m in c.get("volumeMounts", [])}
            paths = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert volume["name"] not in names and TOKEN_DIR not in paths, \
                f"{where} container {c['name']} mounts the autoscaler's token"
