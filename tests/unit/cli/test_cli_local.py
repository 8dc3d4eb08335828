"""`kairos up`, `down` and the commands that read their record, as the local machine's other
users and the operator's own mistakes meet them (issue 18 hardening): Ray's authentication
mode, Ray's temp dir, the files in KAIROS_HOME, the key sent to a recorded gateway, bounds,
stops that fail, errors without tracebacks. Ray's start is stubbed out: nothing here starts
Ray."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.cluster.cli import local, main as cli
from kairos.cluster.cli.main import main


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no token file in the user's ~/.ray
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    for name in ("KAIROS_API_KEYS", "KAIROS_STORE_PASSWORD_FILE", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def environment():
    """`up` sets Ray's environment in its own process: put back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def nothing_starts(monkeypatch):
    def started(*args):
        raise AssertionError("went past the checks")
    monkeypatch.setattr(local, "start_ray", started)


@pytest.fixture
def stand_in_start(monkeypatch, environment):
    """`up` runs to its end: Ray's start and Kairos's on it stubbed, one gateway."""
    monkeypatch.setattr(local, "start_ray", lambda run, dashboard_port: None)
    monkeypatch.setattr(cli, "_start_kairos", lambda *args, **kwargs: [("127.0.0.1", 50051)])


def up(*options: str) -> list[str]:
    return ["up", "--ray-port", str(local.free_port()), "--port", "0", "--no-dashboard",
            "--console-port", "0", "--store", "memory", *options]


# -- 1: Ray's authentication mode ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["tokens", "enabled", "on", "1"])
def test_a_mistyped_ray_auth_mode_is_refused(home, nothing_starts, environment, monkeypatch,
                                              capsys, mode):
    """Ray enables token auth only for exactly `token`: any other value ran Ray without it."""
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert main(up()) == 2
    err = capsys.readouterr().err
    assert f"RAY_AUTH_MODE={mode!r} is neither token nor disabled" in err
    assert not (home / "run.json").exists()


def test_disabled_auth_is_refused_for_several_nodes(home, nothing_starts, environment,
                                                    monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "Disabled")
    assert main(up("--nodes", "2")) == 2
    err = capsys.readouterr().err
    assert "refusing RAY_AUTH_MODE=disabled with --nodes 2" in err and "kairos start" in err


@pytest.mark.parametrize("mode, warned", [("DISABLED", True), (" Token ", False), ("", False)])
def test_up_warns_when_rays_authentication_is_off(home, stand_in_start, monkeypatch, capsys,
                                                  mode, warned):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert main(up()) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Kairos is up")
    assert ("warning: Ray runs without authentication (RAY_AUTH_MODE=disabled)" in err) == warned
    assert local.read_run().auth_mode == ("disabled" if warned else "token")
