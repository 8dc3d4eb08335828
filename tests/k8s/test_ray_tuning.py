"""The Ray pods run Ray with Kairos's Ray settings (cluster/raytuning.py), as `kairos up`, the
bench and the tests' Ray do: every Ray container, head and workers, in every overlay."""
from __future__ import annotations

import pytest

from kairos.cluster.raytuning import RAY_SETTINGS
from tests.support.manifests import env_of, raycluster

OVERLAYS = ("laptop", "production")


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_ray_container_has_kairos_ray_settings(overlay):
    spec = raycluster(overlay)["spec"]
    pods = [spec["headGroupSpec"]["template"]] + \
        [group["template"] for group in spec["workerGroupSpecs"]]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        env = {name: e.get("value") for name, e in env_of(container).items()}
        assert {name: env.get(name) for name in RAY_SETTINGS} == RAY_SETTINGS, container["name"]
