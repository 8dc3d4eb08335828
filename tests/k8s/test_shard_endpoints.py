"""The shard-endpoints component (k8s/components/shard-endpoints) added to the production
overlay, rendered by the real kustomize: the head hands `kairos start` a port range, its own
NetworkPolicy opens exactly that range on the Ray pods (where shards run) and clashes with no
port those pods serve or that Ray and the OS hand out at random, the objects stay valid, and
the head's entrypoint passes the range on (run with stand-ins for `ray` and `kairos`)."""
from __future__ import annotations

import os
import signal
import subprocess

import jsonschema
import pytest
import yaml

from kairos.cluster.cli.main import parser

from tests.k8s import kuberay
from tests.k8s.test_manifests import GATEWAY_PORT, KUBERNETES_VERSION, raycluster_schema
from tests.support.manifests import K8S, RUNBOOK, env_of, render
from tests.support.waiting import wait_until

COMPONENT = K8S / "components" / "shard-endpoints"
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default min/max-worker-port (none set here)
EPHEMERAL_PORTS = range(32768, 61000)  # Linux's default: what a bind to port 0 takes
# The label an operator puts on a namespace whose pods may call the shards directly
OPT_IN = {"kairos.io/shard-endpoint-clients": "true"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[dict, ...]:
    """As an operator adds it: the overlay plus `components: [.../shard-endpoints]`."""
    folder = tmp_path_factory.mktemp("production-with-shard-endpoints")
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "kairos",
        "resources": [os.path.relpath(K8S / "overlays" / "production", folder)],
        "components": [os.path.relpath(COMPONENT, folder)]}))
    return render(folder)


def the(rendered: tuple[dict, ...], kind: str, name: str) -> dict:
    found = [o for o in rendered if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def head_range(rendered: tuple[dict, ...]) -> tuple[int, int]:
    head = the(rendered, "RayCluster", "kairos")["spec"]["headGroupSpec"]["template"]
    value = env_of(head["spec"]["containers"][0])["KAIROS_SHARD_ENDPOINT_PORTS"]["value"]
    return parser(GATEWAY_PORT).parse_args(  # as `kairos start` reads it
        ["start", "--address", "127.0.0.1:6379", "--shard-endpoint-ports", value]
    ).shard_endpoint_ports


def test_the_policy_opens_the_range_the_head_hands_kairos_on_every_ray_pod(rendered):
    low, high = head_range(rendered)
    policy = the(rendered, "NetworkPolicy", "kairos-shard-endpoints")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [
        [{"port": low, "endPort": high, "protocol": "TCP"}]]
    assert [rule["from"] for rule in policy["spec"]["ingress"]] == [
        [{"namespaceSelector": {"matchLabels": OPT_IN}}]], \
        "pods of the namespaces labelled for it only: not every namespace, nor whatever " \
        "reaches pod IPs"
    selector = policy["spec"]["podSelector"]["matchLabels"]
    cluster = the(rendered, "RayCluster", "kairos")["spec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in
                                                     cluster["workerGroupSpecs"]]
    assert all(selector.items() <= p["metadata"]["labels"].items() for p in pods)
    redis = the(rendered, "StatefulSet", "kairos-redis")["spec"]["template"]["metadata"]
    assert not selector.items() <= redis["labels"].items(), "Redis is no shard's pod"
    served = {c["containerPort"] for p in pods for c in p["spec"]["containers"][0]["ports"]}
    params = [cluster["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in cluster["workerGroupSpecs"]]
    served |= {int(v) for p in params for k, v in p.items() if k.endswith("port")}
    assert not {p for p in served if low <= p <= high}, "the range holds ports in use"
    for taken in (RAY_WORKER_PORTS, EPHEMERAL_PORTS):  # ports Ray and the OS hand out
        assert high < taken.start or low >= taken.stop, f"the range overlaps {taken}"
    assert not any("worker-port" in k for p in params for k in p), \
        "Ray's worker ports are set: hold the range against them"


def test_the_runbook_says_how_to_let_a_namespace_in_and_what_a_cni_without_endport_does():
    text = RUNBOOK.read_text()
    section = text[text.index("## Clients that route"):]
    section = section[:section.index("\n## ", 1)]
    ((key, value),) = OPT_IN.items()
    assert "kubectl label namespace" in section and f"{key}={value}" in section
    assert "endPort" in section and "20100" in section


def test_the_objects_stay_valid(rendered):
    import kubernetes_validate
    kubernetes_validate.validate(the(rendered, "NetworkPolicy", "kairos-shard-endpoints"),
                                 KUBERNETES_VERSION, strict=True)
    errors = list(jsonschema.Draft7Validator(raycluster_schema()).iter_errors(
        the(rendered, "RayCluster", "kairos")))
    assert not errors, [e.message for e in errors]
    assert kuberay.refusals(the(rendered, "RayCluster", "kairos")) == []


@pytest.mark.parametrize("ports", ["20100-20163", None])
def test_the_head_s_entrypoint_passes_the_range_to_kairos_start(rendered, tmp_path, ports):
    script = the(rendered, "ConfigMap", "kairos-head-start")["data"]["kairos-head.sh"]
    (tmp_path / "kairos-head.sh").write_text(script)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    said = tmp_path / "kairos-args"
    for name, body in (("ray", "exit 0"),  # `ray health-check`: the GCS answers
                       ("kairos", f'printf "%s\\n" "$@" > {said}.new; mv {said}.new {said}')):
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "KUBERAY_GEN_RAY_START_CMD": "sleep 60",
           "RAY_TMPDIR": str(tmp_path),  # the script prunes Ray's old sessions there
           **({"KAIROS_SHARD_ENDPOINT_PORTS": ports} if ports else {})}  # whole, or not there
    head = subprocess.Popen(["bash", str(tmp_path / "kairos-head.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        args = wait_until(lambda: said.exists() and said.read_text().split("\n"), 30,
                          "kairos-head.sh to call kairos start")
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(30)
    assert args[:2] == ["start", "--address"]
    if ports:
        assert args[args.index("--shard-endpoint-ports") + 1] == ports
    else:
        assert "--shard-endpoint-ports" not in args
