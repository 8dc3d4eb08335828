"""A Redis store's password is in no Ray task's arguments (Ray's GCS keeps them with the
tasks' specs) nor on `kairos up`'s command line (Ray's GCS keeps the driver's as its job's
entrypoint): `kairos start` and `kairos up` create the controller and the learner (which
passes its URL on to every shard) with a URL that holds none, each process that opens the
store reads it from the file KAIROS_STORE_PASSWORD_FILE names, and both commands refuse a URL
that holds one, in --store or in $KAIROS_STORE (which Ray's processes inherit)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from kairos.cluster.cli import local
from kairos.cluster.cli import main as cli
from kairos.cluster.control import runtime
from kairos.cluster.storage.providers import STORE_PASSWORD_FILE_ENV, open_store
from kairos.cluster.storage.store import StoreUnavailable
from tests.unit.cli.test_cli import KEYS
from tests.unit.storage.test_store_password import password_server

PASSWORD = "p@ss/w#rd?:%"


server = password_server(PASSWORD)


@pytest.fixture
def environment(tmp_path, monkeypatch):
    """A KAIROS_HOME of the test's own; the environment as it was afterwards (`kairos up`
    replaces this process's with Ray's)."""
    saved = dict(os.environ)
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(STORE_PASSWORD_FILE_ENV, raising=False)
    monkeypatch.delenv("KAIROS_STORE", raising=False)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def password_file(folder, mode: int = 0o600):
    path = folder / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def test_open_store_connects_with_the_password_from_the_file(server, environment,
                                                             monkeypatch):
    with pytest.raises(StoreUnavailable):
        open_store(server.url).get_meta("k")
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(password_file(environment)))
    store = open_store(server.url)
    store.put_meta("k", b"v")
    assert store.get_meta("k") == b"v"


def test_open_store_refuses_a_password_file_others_can_read(server, environment, monkeypatch):
    path = password_file(environment, 0o644)
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(path))
    with pytest.raises(ValueError, match=f"{STORE_PASSWORD_FILE_ENV} {path} has mode 0644") \
            as refused:
        open_store(server.url)
    assert PASSWORD not in str(refused.value)


class Actor:
    """A stand-in for an actor class: records the arguments of what it creates."""

    def __init__(self, created: list):
        self.created = created

    def options(self, **_):
        return self

    def remote(self, *args, **kwargs):
        self.created.append(args)
        return SimpleNamespace(claim_store=SimpleNamespace(remote=lambda: None),
                               start=SimpleNamespace(remote=lambda n: {}),
                               status=SimpleNamespace(remote=lambda: {"node_status": []}))


@pytest.fixture
def ray_stub(monkeypatch):
    """Ray as far as `_start_kairos` and runtime.start use it: the controller's and the
    learner's arguments, as Ray would keep them; the store is opened for real."""
    import ray

    created = {"controller": [], "learner": []}
    monkeypatch.setattr(ray, "init", lambda **_: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "get", lambda ref, **_: ref)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setattr(runtime, "NodeAffinitySchedulingStrategy", lambda *a, **k: None)
    monkeypatch.setattr(runtime, "ControllerActor", Actor(created["controller"]))
    monkeypatch.setattr(runtime, "LearnerActor", Actor(created["learner"]))
    monkeypatch.setattr(runtime, "controller", lambda: Actor([]).remote())
    return created


def given_stores(created: dict) -> list[str]:
    # ControllerActor(catalog_text, n_partitions, store, ...), LearnerActor(catalog, store)
    return [created["controller"][0][2], created["learner"][0][1]]


def test_kairos_start_creates_the_actors_with_a_store_url_without_the_password(
        server, environment, monkeypatch, ray_stub):
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(password_file(environment)))
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)
    args = cli.parser(50051).parse_args(["start", "--address", "x:1", "--store", server.url])
    cli._start_kairos(args, "x:1", None, consecutive=False)  # runtime.start opened the store
    assert given_stores(ray_stub) == [server.url, server.url]


INLINE = ["redis://:pw@kairos-redis:6379/0", "redis://kairos:pw@kairos-redis:6379/0",
          "rediss://kairos-redis:6379/0?password=pw&prefix=k"]
UP = ["up", "--no-dashboard", "--port", "0", "--console-port", "0"]


@pytest.fixture
def nothing_starts(environment, monkeypatch):
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")  # no token file made
    monkeypatch.setattr(local, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    monkeypatch.setattr(cli, "_start_kairos", lambda *a, **k: pytest.fail("started"))


def _refused_store(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a password" in err and f"set {STORE_PASSWORD_FILE_ENV}" in err
    assert "pw" not in err.replace("password", "")
    return err


@pytest.mark.parametrize("command", [UP, ["start", "--address", "x:1"]], ids=["up", "start"])
@pytest.mark.parametrize("store", INLINE)
def test_up_and_start_refuse_a_store_url_with_a_password_and_say_how(
        nothing_starts, capsys, command, store):
    """`up` too: its command line would be the entrypoint of its job in Ray's GCS, and
    $KAIROS_STORE in the environment of every Ray process."""
    assert "--store" in _refused_store(capsys, [*command, "--store", store])


@pytest.mark.parametrize("command", [UP, ["start", "--address", "x:1"]], ids=["up", "start"])
def test_up_and_start_refuse_a_password_in_kairos_store_even_beside_a_store_option(
        nothing_starts, monkeypatch, capsys, command):
    monkeypatch.setenv("KAIROS_STORE", INLINE[0])
    assert "$KAIROS_STORE" in _refused_store(capsys, command)
    assert "$KAIROS_STORE" in _refused_store(
        capsys, [*command, "--store", "redis://kairos-redis:6379/0"])


def test_up_passes_the_password_file_to_its_ray_and_the_bare_url_to_the_actors(
        server, environment, monkeypatch, ray_stub):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")  # no token file made
    monkeypatch.chdir(environment)
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, password_file(environment).name)
    ray_envs = []
    monkeypatch.setattr(local, "start_ray", lambda run, *_: ray_envs.append(
        local.ray_env(run.loopback, run.auth_mode, run.token)))
    monkeypatch.setattr(local, "write_run", lambda run: None)
    assert cli.main([*UP, "--ray-port", str(local.free_port()), "--store", server.url]) == 0
    assert given_stores(ray_stub) == [server.url, server.url]
    # absolute: Ray's workers do not run in this directory
    assert ray_envs[0][STORE_PASSWORD_FILE_ENV] == str(environment / "password")
    assert PASSWORD not in str(ray_envs[0])


@pytest.mark.parametrize("store", ["unix:///run/redis.sock?prefix=a@b",
                                   "unix:///run/redis.sock?bogus=1"])
def test_start_checks_a_unix_socket_store_before_ray_starts(nothing_starts, capsys, store):
    assert cli.main(["start", "--address", "x:1", "--store", store]) == 1
    err = capsys.readouterr().err
    assert "not a valid Redis URL" in err or "'bogus' is unknown" in err
