"""What the KubeRay v1.7.0 operator itself refuses in a RayCluster, beyond its CRD's schema: a
port of ValidateRayClusterSpec (ray-operator/controllers/ray/utils/validation.go), the checks a
RayCluster's spec can trip with the operator's default feature gates. The API server accepts
such a RayCluster; the operator then records an InvalidRayClusterSpec event and creates no
pods, so nothing but this port catches it before a real cluster does."""
from __future__ import annotations

import re

RAY_CONTAINER_INDEX = 0  # utils.RayContainerIndex: the Ray container is the first
RAY_ENABLE_AUTOSCALER_V2 = "RAY_enable_autoscaler_v2"
# Feature gates off by default in v1.7.0 (pkg/features): what they guard is refused here.
GATED = {"historyServerOptions": "RayClusterHistoryServer",
         "networkPolicy": "RayClusterNetworkPolicy",
         "tlsOptions": "RayClusterMTLS"}
TOKEN_AUTH_MIN_RAY = (2, 52, 0)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x or 0) for x in m.groups()) if m else None


def autoscaling(spec: dict) -> bool:
    return spec.get("enableInTreeAutoscaling") is True


def autoscaler_v2(spec: dict) -> bool:
    """utils.IsAutoscalingV2Enabled: the version field, or else the head's env var."""
    version = (spec.get("autoscalerOptions") or {}).get("version")
    if version is not None:
        return version == "v2"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][RAY_CONTAINER_INDEX]
    return _env(head).get(RAY_ENABLE_AUTOSCALER_V2, {}).get("value") in ("1", "true")


def refusals(rc: dict) -> list[str]:
    """KubeRay's error messages for `rc`, in the order the operator checks (it reports the
    first); empty when the operator accepts it."""
    spec = rc["spec"]
    annotations = rc["metadata"].get("annotations", {})
    found: list[str] = []
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    if not head_pod.get("containers"):
        return ["headGroupSpec should have at least one container"]
    head = head_pod["containers"][RAY_CONTAINER_INDEX]
    head_env = _env(head)
    groups = [("Head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        params = group.get("rayStartParams", {})
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) \
                and group.get("resources"):
            found.append(f"resource fields should not be set in both rayStartParams and "
                         f"Resources for {name} group; please use only one")
        if "labels" in params:
            found.append(f"rayStartParams['labels'] is not supported for {name} group; "
                         f"please use the top-level Labels field instead")
    for group in spec.get("workerGroupSpecs", []):
        name = group["groupName"]
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not group["template"]["spec"].get("containers"):
            found.append("workerGroupSpec should have at least one container")
        if not autoscaling(spec) and (low is None or high is None):
            found.append(f"worker group {name} must set both minReplicas and maxReplicas "
                         f"when autoscaling is disabled")
        if (low is not None and low < 0) or (high is not None and high < 0):
            found.append(f"worker group {name} has negative minReplicas or maxReplicas")
        if low is not None and high is not None and low > high:
            found.append(f"worker group {name} has minReplicas {low} greater than "
                         f"maxReplicas {high}")
        idle = group.get("idleTimeoutSeconds")
        if idle is not None and (idle < 0 or not autoscaler_v2(spec)):
            found.append(f"worker group {name}: idleTimeoutSeconds is negative, or set "
                         f"while autoscaler v2 is not enabled")
        if group.get("suspend"):  # RayJobDeletionPolicy is off by default; and the autoscaler
            found.append(f"worker group {name} can be suspended only when the "
                         f"RayJobDeletionPolicy feature gate is enabled")
    fault_tolerant = annotations.get("ray.io/ft-enabled") == "true" or \
        spec.get("gcsFaultToleranceOptions") is not None
    if not fault_tolerant and "RAY_REDIS_ADDRESS" in head_env:
        found.append("RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, "
                     "but GcsFaultToleranceOptions is not set")
    if spec["headGroupSpec"].get("rayStartParams", {}).get("redis-username") or \
            "REDIS_USERNAME" in head_env:
        found.append("cannot set redis username in rayStartParams or environment variables - "
                     "use GcsFaultToleranceOptions.RedisUsername instead")
    if not autoscaling(spec):
        value = head_env.get(RAY_ENABLE_AUTOSCALER_V2, {}).get("value")
        if value in ("1", "true"):
            found.append(f"environment variable {RAY_ENABLE_AUTOSCALER_V2} cannot be set to "
                         f"'{value}' when enableInTreeAutoscaling is false")
    else:
        options = spec.get("autoscalerOptions") or {}
        if options.get("version") is not None and RAY_ENABLE_AUTOSCALER_V2 in head_env:
            found.append(f"both .spec.autoscalerOptions.version and head Pod env var "
                         f"{RAY_ENABLE_AUTOSCALER_V2} are set, please only use the former")
        if autoscaler_v2(spec):
            for name, group in groups:
                if group["template"]["spec"].get("restartPolicy", "Never") != "Never":
                    found.append(f"restartPolicy for {name} should be Never or unset when "
                                 f"using autoscaler V2")
    options = spec.get("autoscalerOptions") or {}
    if options.get("idleTimeoutSeconds", 0) < 0:
        found.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
    if "KUBERAY_GEN_AUTOSCALER_START_CMD" in _env(options):
        found.append("autoscalerOptions.env must not contain KUBERAY_GEN_AUTOSCALER_START_CMD")
    if (spec.get("authOptions") or {}).get("mode") == "token":
        version = _version(spec.get("rayVersion", ""))
        if version is None or version < TOKEN_AUTH_MIN_RAY:
            found.append(f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, "
                         f"got {spec.get('rayVersion')!r}")
    for field, gate in GATED.items():
        if spec.get(field) is not None:
            found.append(f"spec.{field} requires the {gate} feature gate to be enabled")
    return found


# The Role KubeRay v1.7.0 creates for the autoscaler's ServiceAccount, copied from BuildRole in
# github.com/ray-project/kuberay, tag v1.7.0 (commit 9c13e71),
# ray-operator/controllers/ray/common/rbac.go: resource -> verbs, in its order.
AUTOSCALER_ROLE = {"pods": ("get", "list", "watch", "patch"), "pods/resize": ("patch",),
                   "rayclusters": ("get", "patch")}
