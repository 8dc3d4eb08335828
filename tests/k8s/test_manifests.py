"""The Kubernetes manifests (k8s/), rendered by the real kustomize and checked offline: core
kinds against Kubernetes's OpenAPI schemas (kubernetes-validate), the RayCluster against the
KubeRay CRD's schema (../shared/schemas/kuberay), and Kairos's own policies over what an
operator would `kubectl apply -k`."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.k8s.quantities import quantity_bytes
from tests.support.manifests import K8S, REPO, env_of, head, objects, one, raycluster, rendered

OVERLAYS = ("laptop", "production")
CRD = Path(__file__).resolve().parents[3] / "shared/schemas/kuberay/ray.io_rayclusters.yaml"
KUBERNETES_VERSION = "1.32"  # the API version the manifests are held to
GATEWAY_PORT = 50051
RAY_METRICS_PORT = 8080
# Ray exports ray.util.metrics with this prefix (ray/_private/telemetry/
# open_telemetry_metric_recorder.py: NAMESPACE = "ray"; metrics_agent.py likewise).
RAY_METRIC_PREFIX = "ray_"
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")


def pod_specs(overlay: str) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template the overlay renders."""
    specs = []
    for o in rendered(overlay):
        where = f"{overlay}: {o['kind']} {o['metadata']['name']}"
        if o["kind"] == "RayCluster":
            specs.append((f"{where} head", o["spec"]["headGroupSpec"]["template"]["spec"]))
            for group in o["spec"].get("workerGroupSpecs", []):
                specs.append((f"{where} group {group['groupName']}", group["template"]["spec"]))
        elif o["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            specs.append((where, o["spec"]["template"]["spec"]))
    return specs


def containers(overlay: str) -> list[tuple[str, dict]]:
    """Every container the overlay runs: the pod templates', and the autoscaler sidecar KubeRay
    adds to the head pod from autoscalerOptions (its image: the head's, when not given)."""
    found = [(f"{where} container {c['name']}", c) for where, spec in pod_specs(overlay)
             for c in spec.get("initContainers", []) + spec["containers"]]
    for o in objects(overlay, "RayCluster"):
        if o["spec"].get("enableInTreeAutoscaling"):
            options = o["spec"].get("autoscalerOptions", {})
            image = o["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
            found.append((f"{overlay}: RayCluster {o['metadata']['name']} autoscaler",
                          {"name": "autoscaler", "image": image, **options}))
    return found


# -- schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_are_valid_kubernetes(overlay):
    import kubernetes_validate  # the test extra's dependency; failing to import fails here
    core = [o for o in rendered(overlay) if o["apiVersion"] in CORE_GROUPS]
    assert {o["kind"] for o in core} >= {"Namespace", "Service", "StatefulSet", "ConfigMap",
                                         "NetworkPolicy"}
    for o in core:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {o['kind']} {o['metadata']['name']} is not valid "
                        f"Kubernetes {KUBERNETES_VERSION}: {exc.message} at "
                        f"{'/'.join(map(str, exc.path))}")
    unknown = {(o["apiVersion"], o["kind"]) for o in rendered(overlay)
               if o["apiVersion"] not in CORE_GROUPS}
    assert unknown == {("ray.io/v1", "RayCluster"), ("monitoring.coreos.com/v1", "PodMonitor"),
                       ("monitoring.coreos.com/v1", "PrometheusRule")}, \
        f"{overlay}: kinds no test validates: {unknown}"


@cache
def raycluster_crd() -> dict:
    if not CRD.is_file():
        pytest.fail(f"the KubeRay CRD {CRD} is missing: the repository is checked out next to "
                    f"shared/ (shared/schemas/kuberay/README.md)")
    return yaml.safe_load(CRD.read_text())


def raycluster_schema() -> dict:
    return next(v for v in raycluster_crd()["spec"]["versions"] if v["name"] == "v1")[
        "schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_matches_the_kuberay_crd(overlay):
    # OpenAPI v3 as Kubernetes uses it is JSON Schema Draft 4-like; its x-kubernetes-*
    # keywords are annotations to jsonschema (unknown keywords are ignored).
    validator = jsonschema.Draft7Validator(raycluster_schema())
    errors = sorted(validator.iter_errors(raycluster(overlay)), key=lambda e: list(e.path))
    assert not errors, f"{overlay}: RayCluster kairos against the KubeRay CRD: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_crd_schema_catches_a_wrong_raycluster():
    """The CRD's schema is not vacuous here: a field of the wrong type is an error."""
    broken = json.loads(json.dumps(raycluster("laptop")))
    broken["spec"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    assert list(jsonschema.Draft7Validator(raycluster_schema()).iter_errors(broken))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_operator_objects_have_their_required_structure(overlay):
    # No schema of monitoring.coreos.com is available offline: what is checked is what
    # prometheus-operator requires of these fields.
    for pm in objects(overlay, "PodMonitor"):
        endpoints = pm["spec"]["podMetricsEndpoints"]
        assert pm["apiVersion"] == "monitoring.coreos.com/v1" and endpoints
        assert "matchLabels" in pm["spec"]["selector"]
        ports = {p["name"] for _, c in containers(overlay) for p in c.get("ports", [])}
        for ep in endpoints:
            assert ep["port"] in ports, f"{overlay}: PodMonitor port {ep['port']} is no " \
                                        f"container's port"
    for rule in objects(overlay, "PrometheusRule"):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        for group in rule["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for r in group["rules"]:
                assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations",
                                  "keep_firing_for"}, r
                assert ("alert" in r) != ("record" in r) and r["expr"].strip(), r


# -- policies --------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    for where, c in containers(overlay):
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(c.get("resources", {}).get(bound, {}))
            assert not missing, f"{where}: no {bound} for {sorted(missing)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_and_container_runs_restricted(overlay):
    for where, spec in pod_specs(overlay):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
        assert pod.get("runAsUser", 0) != 0, f"{where}: pod runAsUser is root"
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("terminationGracePeriodSeconds") is not None, \
            f"{where}: terminationGracePeriodSeconds is left to the default"
    for where, c in containers(overlay):
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        assert not sc.get("privileged"), f"{where}: privileged"


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    for where, c in containers(overlay):
        assert _pinned(c["image"]), f"{where}: image {c['image']} is not pinned to a tag " \
                                    f"other than latest, or to a digest"


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def dockerfile_ray_version() -> str:
    found = re.findall(r"^ARG RAY_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert len(found) == 1, "the Dockerfile declares ARG RAY_VERSION=<version> once"
    return found[0]


def test_the_image_is_built_on_the_installed_ray():
    import ray
    text = (REPO / "Dockerfile").read_text()
    assert dockerfile_ray_version() == ray.__version__, \
        f"Dockerfile RAY_VERSION {dockerfile_ray_version()} is not the installed Ray " \
        f"{ray.__version__}"
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and all(s.startswith("rayproject/ray:${RAY_VERSION}-") for s in stages), \
        f"every stage starts from the Ray image of RAY_VERSION: {stages}"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] in ("1000", "ray"), \
        f"the image ends as the Ray image's non-root user: {users}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_run_the_kairos_image_of_this_version_and_ray(overlay):
    import ray
    rc = raycluster(overlay)
    assert rc["spec"]["rayVersion"] == ray.__version__, \
        f"{overlay}: rayVersion {rc['spec']['rayVersion']} is not Ray {ray.__version__}"
    images = {c["image"] for where, c in containers(overlay) if "RayCluster" in where}
    assert images == {f"kairos:{project_version()}"}, \
        f"{overlay}: Ray pods run {images}, not kairos:{project_version()}"
    for where, spec in pod_specs(overlay):
        if "RayCluster" in where:
            assert spec["securityContext"]["runAsUser"] == 1000, \
                f"{where}: the Ray image's user is uid 1000"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kairos_starts_on_the_head_with_no_manual_step(overlay):
    rc = raycluster(overlay)
    assert rc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert rc["spec"]["authOptions"] == {"mode": "token"}, "Ray's token auth is on"
    c = head(overlay)["spec"]["containers"][0]
    assert c["command"] == ["/bin/bash", "/opt/kairos/bin/kairos-head.sh"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/opt/kairos/bin")
    volume = next(v for v in head(overlay)["spec"]["volumes"] if v["name"] == mount["name"])
    script = one(overlay, "ConfigMap", volume["configMap"]["name"])["data"]["kairos-head.sh"]
    assert "$KUBERAY_GEN_RAY_START_CMD" in script
    assert re.search(r'start --address "\$RAY_GCS" --host "\$\{KAIROS_GATEWAY_HOST:-0\.0\.0\.0\}"',
                     script)
    bash = shutil.which("bash")
    assert bash and subprocess.run([bash, "-n"], input=script, text=True).returncode == 0, \
        "kairos-head.sh is not valid bash"
    env = env_of(c)
    # the password comes from a file (tests/k8s/test_secret_files.py)
    assert re.fullmatch(r"rediss?://kairos-redis:6379/0(\?.*)?", env["KAIROS_STORE"]["value"])
    assert 'args+=(--keys "$KAIROS_API_KEYS_FILE")' in script
    assert int(env["KAIROS_SHARDS"]["value"]) >= 1
    for worker in rc["spec"]["workerGroupSpecs"]:
        wc = worker["template"]["spec"]["containers"][0]
        assert "$KUBERAY_GEN_RAY_START_CMD" in " ".join(wc["command"] + wc.get("args", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_patches_hit_what_they_mean_to(overlay):
    """The overlays patch the RayCluster by list index: the items there must be these."""
    spec = head(overlay)["spec"]
    assert spec["containers"][0]["env"][0]["name"] == "KAIROS_SHARDS"
    assert spec["volumes"][3]["name"] == "dshm"
    worker = raycluster(overlay)["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["volumes"][1]["name"] == "dshm"


def ray_pods(overlay: str) -> list[dict]:
    """The head's and every worker group's pod template."""
    return [head(overlay)] + [g["template"] for g in
                              raycluster(overlay)["spec"]["workerGroupSpecs"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_runs_a_gateway_with_grpc_probes(overlay):
    """Started and ready while its gateway answers gRPC health. Alive while Ray is (Ray's
    dashboard agent on the port its rayStartParams give; test_operations.py): a worker Kairos
    drained, which has no gateway, stays up (not ready) until the autoscaler removes it, and
    a gateway that stalls on the head takes it out of the Services, not the GCS down."""
    workers = raycluster(overlay)["spec"]["workerGroupSpecs"]
    spec = raycluster(overlay)["spec"]
    for pod, group in [(head(overlay), spec["headGroupSpec"])] + [
            (g["template"], g) for g in workers]:
        assert pod["metadata"]["labels"].get("kairos.io/gateway") == "true"
        c = pod["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe"):
            assert c.get(probe, {}).get("grpc", {}).get("port") == GATEWAY_PORT, \
                f"{overlay}: {c['name']} {probe} is not a gRPC probe on {GATEWAY_PORT}"
        alive = c["livenessProbe"]["httpGet"]
        assert alive["path"] in ("/api/healthz", "/api/local_raylet_healthz"), alive
        assert str(alive["port"]) == group["rayStartParams"]["dashboard-agent-listen-port"]
        assert {"name": "grpc", "containerPort": GATEWAY_PORT} in c["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rays_autoscaler_is_on_and_kairos_drives_it_within_the_groups_bounds(overlay):
    from kairos.cluster import settings
    rc = raycluster(overlay)
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    options = rc["spec"]["autoscalerOptions"]
    head_env = env_of(head(overlay)["spec"]["containers"][0])
    # v1, the one tests/cluster/test_autoscaling.py runs: KubeRay pins it on the head
    # (RAY_enable_autoscaler_v2=false), and refuses the cluster if the head sets it too
    assert options["version"] == "v1" and "RAY_enable_autoscaler_v2" not in head_env
    assert "image" not in options, "the sidecar runs the head's image (kairos, on Ray)"
    (group,) = rc["spec"]["workerGroupSpecs"]
    bounds = (int(head_env["KAIROS_AUTOSCALE_MIN_WORKERS"]["value"]),
              int(head_env["KAIROS_AUTOSCALE_MAX_WORKERS"]["value"]))
    assert bounds == (group["minReplicas"], group["maxReplicas"]) and bounds[1] > 0
    # KubeRay's format for custom resources (ray/autoscaler/_private/kuberay): one unit of
    # the resource Kairos requests per worker, and none on the head
    offered = json.loads(json.loads(group["rayStartParams"]["resources"]))
    assert offered == {settings.AUTOSCALE_RESOURCE: 1}
    assert "resources" not in rc["spec"]["headGroupSpec"]["rayStartParams"]
    assert "KAIROS_AUTOSCALE_RESOURCE" not in head_env
    # a drained worker is removed within its idle timeout; a worker's preStop never waits on it
    assert 0 < options["idleTimeoutSeconds"] <= 600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_services_select_every_ray_pod(overlay):
    for name, headless in (("kairos-gateway", False), ("kairos-gateway-headless", True)):
        svc = one(overlay, "Service", name)
        selector = svc["spec"]["selector"]
        for pod in ray_pods(overlay):
            assert selector.items() <= pod["metadata"]["labels"].items(), \
                f"{name} does not select {pod['metadata']['labels']}"
        assert (svc["spec"].get("clusterIP") == "None") == headless, name
        (port,) = svc["spec"]["ports"]
        assert port["port"] == GATEWAY_PORT and port["appProtocol"] == "kubernetes.io/h2c"


def drain_deadline_s(container: dict) -> float:
    """The --timeout of the container's preStop `kairos drain`: a number, or a variable of the
    container's environment the shell expands."""
    words = container["lifecycle"]["preStop"]["exec"]["command"][2].split()
    timeout = words[words.index("--timeout") + 1]
    variable = re.fullmatch(r'"\$(\w+)"', timeout)
    return float(env_of(container)[variable[1]]["value"] if variable else timeout)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_drain_their_node_before_ray_stops(overlay):
    """preStop runs `kairos drain` on the pod's own address (Ray's node address), with an
    admin key and a deadline (test_operations.py holds the grace period to it); the
    readiness probe notices NOT_SERVING well within the controller's unready window."""
    head_env = env_of(head(overlay)["spec"]["containers"][0])
    unready_s = float(head_env["KAIROS_DRAIN_UNREADY_S"]["value"])
    for group in raycluster(overlay)["spec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        c = spec["containers"][0]
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["/bin/bash", "-c"]
        words = command[2].split()
        assert words[:3] == ["kairos", "drain", '"$POD_IP"']
        # Ray's autoscaler de-registers a node it removes before KubeRay deletes its pod
        assert "--if-present" in words
        # through the Service (any serving gateway): the pod's own may be drained already
        target = words[words.index("--target") + 1]
        assert target == f"kairos-gateway:{GATEWAY_PORT}"
        one(overlay, "Service", target.split(":")[0])
        assert drain_deadline_s(c) > 0
        env = env_of(c)
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["KAIROS_API_KEY_FILE"]["value"] == "/etc/kairos/api-keys/admin-key"
        # the Service's plaintext gRPC, which the CLI refuses off loopback unless told
        assert env["KAIROS_INSECURE"]["value"] == "1" == head_env["KAIROS_INSECURE"]["value"]
        ready = c["readinessProbe"]
        assert ready["periodSeconds"] * ready["failureThreshold"] * 2 <= unready_s
    if overlay == "laptop":  # its example key file holds the admin key preStop uses
        data = one(overlay, "Secret", "kairos-api-keys")["data"]
        keys = yaml.safe_load(base64.b64decode(data["api-keys.yaml"]))["keys"]
        admin_key = base64.b64decode(data["admin-key"]).decode()
        assert any(k["key"] == admin_key and "admin" in k["scopes"] for k in keys)


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is understood here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_opens_only_the_gateway_port_to_outsiders(overlay):
    policies = objects(overlay, "NetworkPolicy")
    ray_pods = [head(overlay)["metadata"]["labels"]] + [
        g["template"]["metadata"]["labels"] for g in raycluster(overlay)["spec"]["workerGroupSpecs"]]
    redis = one(overlay, "StatefulSet", "kairos-redis")["spec"]["template"]["metadata"]["labels"]

    def from_ray_pods(peer: dict) -> bool:
        return set(peer) == {"podSelector"} and all(
            _selects(peer["podSelector"], labels) for labels in ray_pods)

    def prometheus(peer: dict) -> bool:
        return set(peer) == {"namespaceSelector", "podSelector"}

    for target in ray_pods + [redis]:
        applying = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
        assert applying, f"{overlay}: no NetworkPolicy isolates pods {target}"
        for p in applying:
            assert p["spec"]["policyTypes"] == ["Ingress"]
            for rule in p["spec"]["ingress"]:
                ports = {(x.get("protocol", "TCP"), x["port"]) for x in rule.get("ports", [])}
                peers = rule.get("from", [])
                if peers and all(from_ray_pods(peer) for peer in peers):
                    continue  # the RayCluster's own pods
                if peers and all(prometheus(peer) for peer in peers):
                    assert ports == {("TCP", RAY_METRICS_PORT)}, \
                        f"{p['metadata']['name']}: Prometheus may reach {ports}"
                    continue
                assert target is not redis, f"{p['metadata']['name']}: Redis is open to " \
                                            f"{peers or 'anyone'}"
                assert ports == {("TCP", GATEWAY_PORT)}, \
                    f"{p['metadata']['name']}: {peers or 'anyone'} may reach {ports or 'every port'}"
                assert target.get("kairos.io/gateway") == "true", \
                    f"{p['metadata']['name']}: opens {ports} on pods that run no gateway"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_durable(overlay):
    sts = one(overlay, "StatefulSet", "kairos-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    command = " ".join(c.get("command", []) + c.get("args", []))
    assert re.search(r"--appendonly yes\b", command), f"{overlay}: Redis without appendonly yes"
    assert re.search(r"--appendfsync always\b", command), \
        f"{overlay}: Redis without appendfsync always"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data"
               for m in c["volumeMounts"]), "Redis's /data is not its volume claim"
    assert c["readinessProbe"] and c["livenessProbe"]
    svc = one(overlay, "Service", "kairos-redis")
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_refuses_writes_well_below_its_memory_limit(overlay):
    """Redis's maxmemory, as the pod's shell computes it from the container's memory limit
    (the Downward API's limits.memory), is about 70% of that limit, with noeviction: writes fail
    before the kernel OOM-kills Redis, and nothing Kairos stored is evicted."""
    (c,) = one(overlay, "StatefulSet", "kairos-redis")["spec"]["template"]["spec"]["containers"]
    limit = quantity_bytes(c["resources"]["limits"]["memory"])
    script = c["args"][0]
    assert re.search(r"--maxmemory-policy noeviction\b", script), f"{overlay}: no noeviction"
    (given,) = re.findall(r"--maxmemory (\$\(\(.*?\)\)|\S+)", script)  # a number, or $((...))
    source = env_of(c)["REDIS_MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "limits.memory" and source.get("divisor", "1") == "1"
    assert source.get("containerName", c["name"]) == c["name"]
    done = subprocess.run(["/bin/sh", "-c", f"echo {given}"], capture_output=True, text=True,
                          env={"REDIS_MEMORY_LIMIT": str(limit)}, check=True)
    maxmemory = int(done.stdout)
    assert 0.65 * limit <= maxmemory <= 0.75 * limit, \
        f"{overlay}: maxmemory {maxmemory} of a {c['resources']['limits']['memory']} limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_does_not_start_without_its_memory_limit(overlay, tmp_path):
    """The rendered command, run by the shell as the container runs it, with a stand-in for
    redis-server that records its arguments: given the limit, maxmemory is 70% of it; with
    REDIS_MEMORY_LIMIT empty or unset (0 would be no maxmemory at all, silently) the shell
    stops, naming the variable, and redis-server never runs."""
    (c,) = one(overlay, "StatefulSet", "kairos-redis")["spec"]["template"]["spec"]["containers"]
    ran = tmp_path / "ran"
    stand_in = tmp_path / "redis-server"
    stand_in.write_text(f'#!/bin/sh\ncat >/dev/null\necho "$@" > {ran}\n')
    stand_in.chmod(0o755)

    def run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([*c["command"], c["args"][0]], capture_output=True, text=True,
                              timeout=30, env={"PATH": f"{tmp_path}:/usr/bin:/bin",
                                               "REDIS_PASSWORD": "pw", **env})
    done = run(REDIS_MEMORY_LIMIT="1000")
    assert done.returncode == 0, done.stderr
    assert "--maxmemory 700 --maxmemory-policy noeviction" in ran.read_text()
    ran.unlink()
    for env in ({"REDIS_MEMORY_LIMIT": ""}, {}):
        done = run(**env)
        assert done.returncode != 0 and "REDIS_MEMORY_LIMIT" in done.stderr, (env, done)
        assert not ran.exists(), f"{overlay}: redis-server ran without a memory limit ({env})"


def test_production_has_disruption_budgets_and_more_workers():
    budgets = objects("production", "PodDisruptionBudget")
    covered = [labels for labels in (head("production")["metadata"]["labels"],)]
    for labels in covered + [g["template"]["metadata"]["labels"] for g in
                             raycluster("production")["spec"]["workerGroupSpecs"]]:
        assert any(_selects(b["spec"]["selector"], labels) for b in budgets), \
            f"no PodDisruptionBudget covers {labels}"
    (workers,) = raycluster("production")["spec"]["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (2, 10)
    assert not objects("production", "Secret"), "production's Secrets are the operator's"
    assert not objects("laptop", "PodDisruptionBudget")


# -- metrics ---------------------------------------------------------------------------------

def kairos_metrics() -> dict[str, str]:
    """The metrics cluster/metrics.py defines: name -> Counter, Gauge or Histogram."""
    source = (REPO / "cluster" / "metrics.py").read_text()
    found = dict((name, kind) for kind, name in
                 re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(kairos_\w+)\"", source))
    assert len(found) >= 10, f"metrics.py changed shape: found only {found}"
    return found


def exported_series() -> set[str]:
    """The series names Prometheus sees from Ray: the prefix, and a histogram's parts."""
    names = set()
    for name, kind in kairos_metrics().items():
        name = RAY_METRIC_PREFIX + name
        names |= ({name + s for s in ("_bucket", "_sum", "_count")} if kind == "Histogram"
                  else {name})
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:ray_)?kairos_\w+", expr))


def dashboard() -> dict:
    return json.loads((K8S / "base" / "grafana" / "kairos-dashboard.json").read_text())


def test_dashboard_and_alerts_name_only_metrics_kairos_exports():
    exported = exported_series()
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    exprs += [r["expr"] for rule in objects("production", "PrometheusRule")
              for g in rule["spec"]["groups"] for r in g["rules"]]
    named = set().union(*map(metric_names_in, exprs))
    assert named, "no Kairos metric named at all"
    assert named <= exported, f"not exported by Kairos through Ray: {sorted(named - exported)}"


def test_dashboard_shows_what_operators_need():
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for needed in ("ray_kairos_decisions_total", "ray_kairos_request_latency_ms_bucket",
                   "ray_kairos_queue_depth", "ray_kairos_rejected_total",
                   "ray_kairos_fallbacks_total", "ray_kairos_calls_shed_total",
                   "ray_kairos_resident_customers", "ray_kairos_recoveries_total",
                   "ray_kairos_unsnapshotted_partitions", "ray_kairos_model_version"):
        assert needed in exprs, f"the dashboard has no panel on {needed}"
    assert "by (channel)" in exprs and re.search(r"histogram_quantile\(0\.99,.*by \(shard", exprs)
    cm = one("laptop", "ConfigMap", "kairos-grafana-dashboard")
    assert cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    assert json.loads(cm["data"]["kairos-dashboard.json"]) == dashboard()


def test_alerts_cover_latency_rejections_queues_recoveries_and_snapshots():
    rules = {r["alert"]: r for rule in objects("production", "PrometheusRule")
             for g in rule["spec"]["groups"] for r in g["rules"]}
    wanted = {"KairosDecideP99OverSLA": 'ray_kairos_request_latency_ms_bucket{kind="decide"}',
              "KairosRejectingRequests": "ray_kairos_rejected_total",
              "KairosFallbackDecisions": "ray_kairos_fallbacks_total",
              "KairosGatewayShedding": "ray_kairos_calls_shed_total",
              "KairosQueueSaturated": "ray_kairos_queue_depth",
              "KairosShardRecoveringInALoop": "ray_kairos_recoveries_total",
              "KairosSnapshotsStalled": "ray_kairos_unsnapshotted_partitions"}
    for alert, metric in wanted.items():
        assert alert in rules and metric in rules[alert]["expr"], f"{alert} on {metric}"
    source = (REPO / "cluster" / "metrics.py").read_text()
    assert '"kind"' in source, "the latency histogram's kind tag (decide) is gone"


def test_the_ray_metrics_port_is_what_prometheus_scrapes():
    rc = raycluster("production")
    groups = [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == str(RAY_METRICS_PORT)
        ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert ports.get("metrics") == RAY_METRICS_PORT
    head_env = env_of(head("production")["spec"]["containers"][0])
    assert {"RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST"} <= set(head_env)
