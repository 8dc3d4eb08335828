"""What k8s/README.md says of the rendered manifests and of what KubeRay makes of them: the
store's URL, the head Service's ports, the autoscaler's Role, the Secrets a worker mounts."""
from __future__ import annotations

import re

from tests.k8s import kuberay
from tests.k8s.test_manifests import OVERLAYS
from tests.support.manifests import RUNBOOK, env_of, head, raycluster


def runbook() -> str:
    return re.sub(r"\s+", " ", RUNBOOK.read_text())


def test_the_store_urls_the_runbook_shows_are_the_rendered_ones():
    rendered = {env_of(head(o)["spec"]["containers"][0])["KAIROS_STORE"]["value"]
                for o in OVERLAYS}
    shown = set(re.findall(r"`(rediss?://[^`]*kairos-redis[^`]*)`", runbook()))
    assert shown and shown <= rendered, f"not what the overlays render: {shown - rendered}"


def test_the_runbook_names_every_port_of_the_head_service():
    """KubeRay's head Service maps every port the head's Ray container declares
    (service.go getPortsFromCluster)."""
    (said,) = re.findall(r"`kairos-head-svc`, with every port (.*?)\.", runbook())
    named = {int(n) for n in re.findall(r"\b\d+\b", said)}
    for overlay in OVERLAYS:
        declared = {p["containerPort"] for p in head(overlay)["spec"]["containers"][0]["ports"]}
        assert named == declared, f"{overlay}: the head declares {sorted(declared)}, the " \
            f"runbook names {sorted(named)}"


def test_the_runbook_says_the_autoscalers_role_as_kuberay_makes_it():
    def said(verbs: tuple[str, ...]) -> str:
        return " and ".join(filter(None, [", ".join(verbs[:-1]), verbs[-1]]))
    names = {"rayclusters": "RayClusters"}
    role = ", ".join(f"{said(v)} {names.get(r, r)}" for r, v in kuberay.AUTOSCALER_ROLE.items())
    assert f"KubeRay v1.7.0's Role: {role}, in this namespace;" in runbook()


def test_the_runbook_says_which_secrets_a_worker_mounts():
    (sentence,) = re.findall(r"Workers hold no store URL[^.]*\.[^.]*\.", runbook())
    for overlay in OVERLAYS:
        for group in raycluster(overlay)["spec"]["workerGroupSpecs"]:
            secrets = {v["secret"]["secretName"] for v in group["template"]["spec"]["volumes"]
                       if "secret" in v}
            assert ("kairos-redis" in secrets) == ("mount Secret `kairos-redis`" in sentence), \
                f"{overlay}: workers mount {sorted(secrets)}; the runbook: {sentence}"
