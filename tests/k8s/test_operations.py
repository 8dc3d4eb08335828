"""What the rendered manifests must get right to run, beyond their schemas, checked offline:
what the KubeRay operator itself refuses (tests/k8s/kuberay.py), disruption budgets the
disruption controller can act on, Ray's object store and logs inside the volumes given them,
probes that neither give up on a start that recovers shards nor restart the cluster for a
gateway's stall, alerts for an outage that leaves no series, the nodes production needs, and
the runbook's steps against the CRD they patch."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

from tests.k8s import kuberay
from kairos.cluster.cli.remote import TIMEOUT_S as STATUS_CALL_S

from tests.k8s.test_manifests import (
    OVERLAYS,
    containers,
    drain_deadline_s,
    kairos_metrics,
    raycluster_crd,
    raycluster_schema,
)
from tests.support.manifests import REPO, RUNBOOK, env_of, head, objects, one, raycluster

SHM = "/dev/shm"
RAY_LOGS = "/tmp/ray"  # Ray's temp dir: logs, session files, plasma's fallback, spilling
# The bound the logs volume is sized for: log files one Ray pod may hold at once. Ray's own
# processes write about 50 (GCS, raylet, dashboard and its modules, agents, log monitor, the
# autoscaler sidecar's monitor, events); every worker process that ever ran on the pod leaves
# three (python-core-worker-*.log, worker-*.out, worker-*.err): 200 is some 50 of those.
LOG_FILES = 200
# What else lives under Ray's temp dir besides rotating logs (session files, sockets, the
# dashboard's state); kept free within the volume's sizeLimit.
OTHER_TEMP_BYTES = 1 << 30
# After `kairos start`'s shards are up: its driver, controller and learner start, and the
# gateways connect and compile the catalog (each within GATEWAY_START_S, counted apart).
STARTUP_SLACK_S = 60
# What a node keeps from pods beyond its capacity (kube-reserved, system-reserved, eviction
# threshold) and what DaemonSets take, as the README's node size is held to it.
NODE_RESERVED_CPU = 1.0
NODE_ALLOCATABLE_MEMORY_SHARE = 0.85
# What a drain costs per customer on the drained node, from the committed run of
# `python -m bench.drain` (2 cores, Decide at 200/s during it): its largest size drained
# 499,974 customers in 68.20 s, of which RETIRE_GRACE_S (5 s) is the retired shards' fixed
# linger: 126.4 us a customer (test_the_drain_cost_is_the_committed_benchmarks holds it).
DRAIN_RUN = REPO / "bench/results/drain-20261203T103621Z.json"
MOVE_S_PER_CUSTOMER = 126.5e-6
DRAIN_SAFETY = 2.0  # a busy cluster, or one on other cores, drains slower than the benchmark's
CLI_START_S = 5.0  # `kairos drain` starting (Python, gRPC: 0.4 s on 2 cores) before its calls
# Ray's stop of its processes once its own SIGTERM drain is over (about 10 s in Ray 2.60:
# SIGTERM, then SIGKILL to what is left)
RAY_STOP_S = 20.0
# KairosQueueSaturated fires past this share of a shard's queue (base/prometheusrule.yaml)
QUEUE_ALERT_SHARE = 0.8


def quantity(value) -> float:
    """A Kubernetes quantity (2Gi, 500m, 8) as a number of bytes or cores."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    assert m, f"not a quantity this test reads: {value!r}"
    units = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
    return float(m[1]) * units[m[2]]


def ray_groups(overlay: str) -> list[tuple[str, dict]]:
    """(name, group) of the head and of every worker group: rayStartParams and template."""
    spec = raycluster(overlay)["spec"]
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]]


def mounted(pod_spec: dict, container: dict, path: str) -> dict:
    """The volume `container` mounts at `path`."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    return volume


# -- KubeRay's own validation ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kuberay_operator_accepts_the_raycluster(overlay):
    assert kuberay.refusals(raycluster(overlay)) == [], \
        f"{overlay}: KubeRay v1.7.0 would create no pods for RayCluster kairos"


def test_the_port_of_kuberays_validation_refuses_what_kuberay_refuses():
    """Not vacuous: the head env var KubeRay sets itself, beside autoscalerOptions.version."""
    rc = json.loads(json.dumps(raycluster("laptop")))
    head_c = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_c["env"].append({"name": "RAY_enable_autoscaler_v2", "value": "0"})
    assert kuberay.refusals(rc) == [
        ("both .spec.autoscalerOptions.version and head Pod env var RAY_enable_autoscaler_v2 "
         "are set, please only use the former")]
    rc["spec"]["enableInTreeAutoscaling"] = False
    head_c["env"][-1]["value"] = "true"
    assert any("cannot be set to 'true'" in r for r in kuberay.refusals(rc))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_version_is_kuberays_to_pin(overlay):
    """KubeRay sets RAY_enable_autoscaler_v2 on the head from autoscalerOptions.version
    (pod.go setAutoscalerV1EnvVars); no Ray container sets it besides."""
    assert raycluster(overlay)["spec"]["autoscalerOptions"]["version"] == "v1"
    for where, c in containers(overlay):
        assert "RAY_enable_autoscaler_v2" not in env_of(c), where


# -- disruption budgets ----------------------------------------------------------------------

def crd_has_scale() -> bool:
    return any("scale" in (v.get("subresources") or {})
               for v in raycluster_crd()["spec"]["versions"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_of_ray_pods_are_ones_the_disruption_controller_can_act_on(overlay):
    """KubeRay owns the Ray pods through a RayCluster, a custom resource without a /scale
    subresource: the disruption controller then cannot count the pods it expects, and a
    budget with maxUnavailable or a percentage allows no disruption at all. An integer
    minAvailable needs no count. A worker budget below the group's minReplicas lets a node
    drain take a worker even at the floor (the head's is meant to hold: README, Maintenance)."""
    assert not crd_has_scale(), "RayCluster has /scale now: budgets may use maxUnavailable"
    groups = ray_groups(overlay)
    for pdb in objects(overlay, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        selected = [(name, g) for name, g in groups
                    if selector.items() <= g["template"]["metadata"]["labels"].items()]
        if not selected:
            continue
        name = pdb["metadata"]["name"]
        assert "maxUnavailable" not in pdb["spec"], f"{overlay}: {name} uses maxUnavailable"
        floor = pdb["spec"].get("minAvailable")
        assert type(floor) is int and floor >= 1, \
            f"{overlay}: {name}: minAvailable {floor!r} is not an integer of at least 1"
        for group_name, group in selected:
            if group_name != "head":
                assert floor < group["minReplicas"], \
                    f"{overlay}: {name} blocks every drain of group {group_name} at its floor"


# -- Ray's object store and logs -------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rays_object_store_fits_in_dev_shm(overlay):
    """Ray sizes its store from the container's memory unless told (30%, up to 200 GB),
    and a store bigger than /dev/shm goes to its temp dir, the logs volume, whose sizeLimit
    the kubelet enforces by evicting the pod."""
    from ray._private import ray_constants
    for name, group in ray_groups(overlay):
        spec = group["template"]["spec"]
        shm = mounted(spec, spec["containers"][0], SHM)["emptyDir"]
        assert shm.get("medium") == "Memory", f"{overlay} {name}: /dev/shm is not tmpfs"
        store = int(group["rayStartParams"]["object-store-memory"])
        assert ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES <= store \
            < quantity(shm["sizeLimit"]), \
            f"{overlay} {name}: object store {store} B against /dev/shm {shm['sizeLimit']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rays_rotated_logs_fit_the_logs_volume(overlay):
    """Every rotating log file holds at most RAY_ROTATION_MAX_BYTES times (backups + 1); with
    LOG_FILES of them and Ray's other temp files the volume at /tmp/ray stays under its
    sizeLimit. The autoscaler sidecar writes to the head's volume too (KubeRay mounts it)."""
    rc = raycluster(overlay)
    for name, group in ray_groups(overlay):
        spec = group["template"]["spec"]
        writers = [env_of(spec["containers"][0])]
        if name == "head" and rc["spec"].get("enableInTreeAutoscaling"):
            writers.append(env_of(rc["spec"]["autoscalerOptions"]))
        limit = quantity(mounted(spec, spec["containers"][0], RAY_LOGS)["emptyDir"]["sizeLimit"])
        for env in writers:
            assert {"RAY_ROTATION_MAX_BYTES", "RAY_ROTATION_BACKUP_COUNT"} <= set(env), \
                f"{overlay} {name}: Ray's default rotation (512 MB x 6 a file)"
            per_file = int(env["RAY_ROTATION_MAX_BYTES"]["value"]) * (
                int(env["RAY_ROTATION_BACKUP_COUNT"]["value"]) + 1)
            assert per_file * LOG_FILES + OTHER_TEMP_BYTES <= limit, \
                f"{overlay} {name}: {LOG_FILES} logs of {per_file} B overflow {limit} B"


# -- probes ----------------------------------------------------------------------------------

def controller_settings(overlay: str, *names: str) -> dict[str, float]:
    """settings.py's values as the head's pod has them."""
    return container_settings(head(overlay)["spec"]["containers"][0], *names)


def container_settings(container: dict, *names: str) -> dict[str, float]:
    """settings.py's values as a process in `container` has them."""
    code = ("import json, sys; from kairos.cluster import settings; "
            "print(json.dumps({n: getattr(settings, n) for n in sys.argv[1:]}))")
    return in_container(container, code, *names)


def shard_residents(container: dict) -> int:
    """The most customers a shard in `container` keeps resident: the rows its profile table
    is made with (shard.py), RESIDENT_LIMIT, the overflow waiting to be passivated, a round's
    new customers and the sleepers two ticks wake (residency.table_rows)."""
    code = ("from kairos.cluster.settings import RESIDENT_LIMIT as limit; "
            "from kairos.cluster.shard.residency import overflow_of, table_rows; "
            "print(table_rows(limit, overflow_of(limit)))")
    return in_container(container, code)


def in_container(container: dict, code: str, *args: str):
    """What Python `code` prints, as JSON, run with the container's literal KAIROS_ variables
    and no other (those of this test run included): settings.py reads them at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
    env.update({e["name"]: e["value"] for e in container["env"]
                if e["name"].startswith("KAIROS_") and "$(" not in e.get("value", "$(")})
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def gcs_wait_s(overlay: str) -> int:
    """How long kairos-head.sh waits for the GCS before it gives up."""
    script = one(overlay, "ConfigMap", "kairos-head-start")["data"]["kairos-head.sh"]
    (default,) = re.findall(r"^GCS_WAIT_S=\$\{KAIROS_GCS_WAIT_S:-(\d+)\}$", script,
                            re.MULTILINE)
    env = env_of(head(overlay)["spec"]["containers"][0])
    return int(env.get("KAIROS_GCS_WAIT_S", {}).get("value", default))


def startup_budget_s(probe: dict) -> int:
    return probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probes_outlast_a_start_that_recovers_shards(overlay):
    """The head's gateway answers after Ray's GCS (kairos-head.sh waits up to GCS_WAIT_S),
    the wait for the nodes that host the shards a restart brings back (TAKEUP_NODES_WAIT_S),
    the shards' recovery from the store (up to SHARD_START_S) and the gateways' start; a
    worker's gateway starts after the same shards. A startup probe that gives up sooner
    restarts the head, the GCS with it, and recovery starts over."""
    values = controller_settings(overlay, "TAKEUP_NODES_WAIT_S", "SHARD_START_S",
                                 "GATEWAY_START_S")
    need = gcs_wait_s(overlay) + sum(values.values()) + STARTUP_SLACK_S
    for name, group in ray_groups(overlay):
        probe = group["template"]["spec"]["containers"][0]["startupProbe"]
        assert startup_budget_s(probe) >= need, \
            f"{overlay} {name}: startup probe gives {startup_budget_s(probe)} s, a start " \
            f"may take {need} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_live_while_ray_does_not_while_a_gateway_answers(overlay):
    """Liveness is Ray's own health from the node's dashboard agent, on a path Ray 2.60
    serves without its token: on the head /api/healthz (the raylet and the GCS), so that a
    stalled gateway, which only fails readiness, never restarts the GCS and the cluster."""
    from ray.dashboard import http_server_agent
    from ray.dashboard.modules.reporter import healthz_agent
    public = set(http_server_agent.PUBLIC_EXACT_PATHS)
    served = set(re.findall(r'@routes\.get\("([^"]+)"\)', inspect.getsource(healthz_agent)))
    for name, group in ray_groups(overlay):
        c = group["template"]["spec"]["containers"][0]
        alive = c["livenessProbe"]
        assert set(alive) & {"grpc", "exec", "tcpSocket"} == set(), f"{overlay} {name}: {alive}"
        path, port = alive["httpGet"]["path"], alive["httpGet"]["port"]
        assert path in public & served, f"{overlay} {name}: {path} is not Ray's public health"
        assert str(port) == group["rayStartParams"]["dashboard-agent-listen-port"]
        if name == "head":
            assert path == "/api/healthz", "the head's liveness checks the GCS too"


# -- draining a worker -----------------------------------------------------------------------

def test_the_drain_cost_is_the_committed_benchmarks():
    """MOVE_S_PER_CUSTOMER is the committed drain run's own figure (rounded up, not more)."""
    run = json.loads(DRAIN_RUN.read_text())
    largest = max(run["sizes"], key=lambda r: r["on_drained_node"])
    (retire_s,) = controller_settings("laptop", "RETIRE_GRACE_S").values()
    measured = (largest["drain_s"] - retire_s) / largest["on_drained_node"]
    assert measured <= MOVE_S_PER_CUSTOMER <= measured * 1.01, measured


@pytest.mark.parametrize("overlay", (*OVERLAYS, "base"))
def test_a_workers_grace_period_drains_a_full_worker(overlay):
    """A worker holds a shard per CPU (SHARDS_PER_CPU), each at most the residents its
    container's settings let it keep (shard_residents). preStop's DrainNode deadline covers
    moving all of them at the benchmark's cost per customer, DRAIN_SAFETY times over (sleepers
    held for their timers past the limit too), and the drain's fixed steps (the unready
    window, the retired shards' linger, the gateway's stop); the grace period covers the
    CLI's start and status call, that deadline, Ray's own drain on SIGTERM (set explicitly:
    its default may change) and Ray's stop."""
    values = controller_settings(overlay, "SHARDS_PER_CPU", "DRAIN_UNREADY_S",
                                 "RETIRE_GRACE_S", "GATEWAY_STOP_GRACE_S")
    for group in raycluster(overlay)["spec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        cpus = float(group["rayStartParams"]["num-cpus"])
        # the controller's shards for a node that joins (control/nodes.py)
        shards = max(1, round(cpus * values["SHARDS_PER_CPU"]))
        customers = shards * shard_residents(container)
        need_s = customers * MOVE_S_PER_CUSTOMER * DRAIN_SAFETY + values["DRAIN_UNREADY_S"] \
            + values["RETIRE_GRACE_S"] + values["GATEWAY_STOP_GRACE_S"]
        deadline_s = drain_deadline_s(container)
        assert deadline_s >= need_s, \
            f"{overlay}: a drain of {customers:,} customers may take {need_s:.0f} s, " \
            f"preStop waits {deadline_s:.0f} s"
        ray_drain_s = float(env_of(container)["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]["value"])
        grace_s = CLI_START_S + STATUS_CALL_S + deadline_s + ray_drain_s + RAY_STOP_S
        assert spec["terminationGracePeriodSeconds"] >= grace_s, \
            f"{overlay}: the kubelet kills the pod after " \
            f"{spec['terminationGracePeriodSeconds']} s, its stop may take {grace_s:.0f} s"


@pytest.mark.parametrize("overlay", (*OVERLAYS, "base"))
def test_the_heads_grace_period_covers_rays_own_drain_and_stop(overlay):
    """The head is not drained by Kairos; its gateway finishes its calls while Ray drains. A
    SIGTERM during `kairos start` first gives it its own time (stop_kairos in the script)."""
    spec = head(overlay)["spec"]
    env = env_of(spec["containers"][0])
    ray_drain_s = float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]["value"])
    (stop_s,) = controller_settings(overlay, "GATEWAY_STOP_GRACE_S").values()
    script = one(overlay, "ConfigMap", "kairos-head-start")["data"]["kairos-head.sh"]
    (start_stop_s,) = map(int, re.findall(r"for _ in \{1\.\.(\d+)\}; do", script))
    assert ray_drain_s >= stop_s
    assert spec["terminationGracePeriodSeconds"] >= start_stop_s + ray_drain_s + RAY_STOP_S


# -- alerts ----------------------------------------------------------------------------------

def alert_rules(overlay: str = "production") -> dict[str, dict]:
    return {r["alert"]: r for rule in objects(overlay, "PrometheusRule")
            for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_queue_alert_fires_at_its_share_of_the_shards_queue_limit(overlay):
    """KairosQueueSaturated's threshold is a number in the rule, which follows no setting: a
    KAIROS_SHARD_QUEUE_LIMIT set on the Ray pods must change it too (k8s/README.md)."""
    expr = alert_rules(overlay)["KairosQueueSaturated"]["expr"]
    (threshold,) = map(float, re.findall(r"ray_kairos_queue_depth\)\s*>\s*(\d+)\s*$", expr))
    for name, group in ray_groups(overlay):
        container = group["template"]["spec"]["containers"][0]
        (limit,) = container_settings(container, "SHARD_QUEUE_LIMIT").values()
        assert threshold == QUEUE_ALERT_SHARE * limit, \
            f"{overlay} {name}: the alert fires past {threshold:,.0f} queued requests, " \
            f"{QUEUE_ALERT_SHARE:.0%} of a queue limit of {limit:,}"


def test_alerts_fire_when_kairos_or_redis_is_gone_entirely():
    """The other alerts compare series that exist; an outage of the whole service removes
    them. absent() of a gauge every shard and every gateway sets on each flush, a scrape
    that fails, and Redis's readiness from kube-state-metrics cover it."""
    gauges = {"ray_" + n for n, kind in kairos_metrics().items() if kind == "Gauge"}
    rules = alert_rules()

    def absent_of(prefix: str) -> list[str]:
        return [a for a, r in rules.items() for m in re.findall(r"absent\(\s*(\w+)", r["expr"])
                if m in gauges and m.startswith(prefix)]

    shards = absent_of("ray_kairos_resident_customers")
    gateways = absent_of("ray_kairos_gateway_")
    scrape = [a for a, r in rules.items()
              if re.search(r"\bup\{[^}]*container=~\"ray-head\|ray-worker\"[^}]*\}\s*==\s*0",
                           r["expr"])]
    redis = [a for a, r in rules.items() if re.search(
        r"absent\(\s*kube_statefulset_status_replicas_ready\{[^}]*statefulset=\"kairos-redis\"",
        r["expr"])]
    for kind, found in (("shards", shards), ("gateways", gateways), ("scrapes", scrape),
                        ("redis", redis)):
        assert found, f"no alert fires when Kairos's {kind} are gone"
        for alert in found:
            assert rules[alert].get("for") and rules[alert]["labels"]["severity"] in (
                "critical", "warning"), alert
    assert {rules[a]["labels"]["severity"] for a in shards + gateways + redis} == {"critical"}
    runbook = RUNBOOK.read_text()
    for alert in shards + gateways + scrape + redis:
        assert f"| {alert} |" in runbook, f"k8s/README.md's Alerts table lacks {alert}"


# -- nodes -----------------------------------------------------------------------------------

def pod_requests(group: dict, rc: dict, is_head: bool) -> tuple[float, float]:
    """CPU and memory a Ray pod requests, KubeRay's autoscaler sidecar on the head included."""
    found = [c["resources"]["requests"] for c in group["template"]["spec"]["containers"]]
    if is_head and rc["spec"].get("enableInTreeAutoscaling"):
        found.append(rc["spec"]["autoscalerOptions"]["resources"]["requests"])
    return (sum(quantity(r["cpu"]) for r in found),
            sum(quantity(r["memory"]) for r in found))


def test_the_runbook_names_nodes_production_pods_fit_on():
    m = re.search(r"Nodes \(production\): (\d+) vCPU / (\d+) GiB", RUNBOOK.read_text())
    assert m, "k8s/README.md's prerequisites name no node size for production"
    node_cpu, node_memory = int(m[1]), int(m[2]) * 2 ** 30
    rc = raycluster("production")
    for name, group in ray_groups("production"):
        cpu, memory = pod_requests(group, rc, name == "head")
        assert cpu <= node_cpu - NODE_RESERVED_CPU, f"{name}: {cpu} CPU on {node_cpu} vCPU"
        assert memory <= node_memory * NODE_ALLOCATABLE_MEMORY_SHARE, \
            f"{name}: {memory / 2 ** 30:.1f} GiB on {m[2]} GiB"


# -- the runbook -----------------------------------------------------------------------------

def test_the_runbook_waits_for_a_pod_to_exist_before_it_waits_for_its_condition():
    """`kubectl wait --for=condition=...` fails at once when no pod matches yet (as right
    after `kubectl apply` or a scale-up): a condition is waited for only after a loop that
    waits for the pod to exist, as the same `get pod` of that selector or name."""
    lines = RUNBOOK.read_text().splitlines()
    for i, line in enumerate(lines):
        wait = re.search(r"kubectl -n \S+ wait pod (-l \S+|\S+) --for=condition", line)
        if wait:
            before = "\n".join(lines[max(0, i - 3):i])
            assert re.search(r"until kubectl -n \S+ get pod " + re.escape(wait[1]), before), \
                f"README line {i + 1} waits for a condition of a pod that may not exist yet"


def test_the_runbooks_redis_backup_and_restore_follow_redis_and_stop_kairos():
    """Redis 7's AOF backup: automatic rewrites off, no rewrite running, appendonlydir copied,
    rewrites back on; a restore with Kairos suspended (a field the CRD has) and Redis stopped."""
    text = RUNBOOK.read_text()
    section = text[text.index("## Redis: back up and restore"):]
    section = section[:section.index("\n## ", 1)]
    steps = ["CONFIG SET auto-aof-rewrite-percentage 0", "aof_rewrite_in_progress:0",
             "-C /data appendonlydir", "CONFIG SET auto-aof-rewrite-percentage 100",
             '{"spec":{"suspend":true}}', "--replicas=0", "--replicas=1",
             '{"spec":{"suspend":false}}']
    at = [section.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), \
        f"runbook steps missing or out of order: {dict(zip(steps, at))}"
    assert raycluster_schema()["properties"]["spec"]["properties"]["suspend"]["type"] \
        == "boolean"
