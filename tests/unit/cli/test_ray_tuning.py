"""Every starter of Ray runs it with Kairos's Ray settings (cluster/raytuning.py): `kairos up`,
the bench and the tests' own Ray (the pods': tests/k8s/test_ray_tuning.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from bench import systems
from kairos.cluster.cli import local
from kairos.cluster.raytuning import RAY_SETTINGS
from tests import conftest


def test_there_are_settings_and_they_are_rays():
    assert RAY_SETTINGS
    assert all(name.startswith("RAY_") and isinstance(value, str)
               for name, value in RAY_SETTINGS.items())


def test_kairos_up_starts_ray_with_them(monkeypatch):
    for name in RAY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert RAY_SETTINGS.items() <= local.ray_env(True, "token", "t0k3n").items()
    assert RAY_SETTINGS.items() <= local.ray_env(False, "token").items()  # drivers too


def test_an_operators_own_value_wins(monkeypatch):
    name = next(iter(RAY_SETTINGS))
    monkeypatch.setenv(name, "12345")
    assert local.ray_env(True, "token")[name] == "12345"


def test_the_bench_starts_ray_with_them_and_an_operators_own_value_wins(monkeypatch):
    own, *others = RAY_SETTINGS
    monkeypatch.setenv(own, "12345")
    for name in others:
        monkeypatch.delenv(name, raising=False)
    for name in systems.NODE_ENV:
        monkeypatch.setenv(name, os.environ.get(name, ""))  # put back after the test
    systems.set_node_env()
    assert os.environ[own] == "12345"
    assert all(os.environ[name] == RAY_SETTINGS[name] for name in others)


def test_every_setting_is_one_ray_reads():
    """Ray ignores a RAY_ variable it does not know: each name is in the raylet's binary (its
    RAY_CONFIG names) or read by Ray's Python."""
    root = Path(ray.__file__).parent
    raylet = (root / "core/src/ray/raylet/raylet").read_bytes()
    python = "".join(p.read_text(errors="replace") for p in (root / "_private").glob("*.py"))
    for name in RAY_SETTINGS:
        assert name[len("RAY_"):].encode() in raylet or f'"{name}"' in python, name


class Started(Exception):
    """Where the tests' Ray would have started: the environment it would have inherited."""


def test_the_tests_ray_starts_with_them(monkeypatch):
    for name in RAY_SETTINGS:
        monkeypatch.delenv(name, raising=False)

    def start(nodes, node_args):
        raise Started(dict(os.environ))

    monkeypatch.setattr(conftest, "_started", start)
    name = next(iter(RAY_SETTINGS))
    with pytest.raises(Started) as started, conftest.local_ray(env={"KAIROS_X": "1"}):
        pass
    assert RAY_SETTINGS.items() <= started.value.args[0].items()
    with pytest.raises(Started) as started, conftest.local_ray(env={name: "7"}):
        pass
    assert started.value.args[0][name] == "7"  # a test's own value wins
    assert all(name not in os.environ for name in RAY_SETTINGS)  # put back afterwards
