"""`kairos up`, `down` and the commands that read their record, as the local machine's other
users and the operator's own mistakes meet them (issue 18 hardening): Ray's authentication
mode, Ray's temp dir, the files in KAIROS_HOME, the key sent to a recorded gateway, bounds,
stops that fail, errors without tracebacks. Ray's start is stubbed out: nothing here starts
Ray."""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kairos.cluster.cli import graceful, local, main as cli, private
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


# -- 2: Ray's temp dir ---------------------------------------------------------------------------

@pytest.fixture
def short_home(monkeypatch):
    """A KAIROS_HOME short enough for Ray's socket paths under it (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="kh-")) / "home"
    monkeypatch.setenv(local.HOME_ENV, str(path))
    yield path
    shutil.rmtree(path.parent)


def test_rays_temp_dir_is_private_to_this_user_by_default(home, short_home, stand_in_start,
                                                          monkeypatch):
    """Ray makes its temp dir and session dirs 0777: in /tmp (its default) any user could read
    the run's logs, replace its sockets, or make /tmp/ray first."""
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    assert main(up()) == 0
    assert local.read_run().temp_dir == str(short_home / "ray" / "tmp")
    for path in (short_home, short_home / "ray"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    monkeypatch.setenv("RAY_TMPDIR", str(short_home.parent))  # the operator's own choice
    assert local.default_ray_temp_dir() == str(short_home.parent / "ray")


def test_a_kairos_home_too_long_for_rays_sockets_keeps_rays_temp_dir_in_tmp(monkeypatch):
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv(local.HOME_ENV, "/home/" + "a" * 40)
    assert local.default_ray_temp_dir() == f"/tmp/kairos-ray-{os.geteuid()}/tmp"
    monkeypatch.setenv(local.HOME_ENV, "/home/u/.kairos")
    assert local.default_ray_temp_dir() == "/home/u/.kairos/ray/tmp"


def test_a_ray_temp_dir_too_long_for_rays_sockets_is_refused(home, nothing_starts, tmp_path,
                                                            capsys):
    long = tmp_path / ("d" * 60)
    assert main(up("--ray-temp-dir", str(long))) == 2
    assert (f"error: --ray-temp-dir {long} is too long: Ray makes Unix sockets under it"
            in capsys.readouterr().err)


@pytest.mark.parametrize("made", ["another's mode", "a link"])
def test_a_private_folder_in_a_shared_one_is_refused_unless_it_is_closed_and_no_link(
        tmp_path, made):
    """/tmp/kairos-ray-UID: another user may have made it (or a link of that name) first."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    folder = shared / "kairos-ray"
    if made == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
        said = "is not a directory"
    else:
        folder.mkdir(mode=0o755)
        folder.chmod(0o755)
        said = "has mode 0755: other users could reach"
    with pytest.raises(SystemExit, match=said):
        private.own_dir(folder, "the folder of Ray's temp dir", closed=0o077)
    assert private.own_dir(shared / "new", "the folder", closed=0o077) == shared / "new"


# -- 3: the files in KAIROS_HOME -----------------------------------------------------------------

def test_a_link_planted_as_the_lock_is_not_followed(home, capsys):
    """`ln -s victim $H/up.lock; kairos down` emptied the victim (the lock was opened "w")."""
    home.mkdir(mode=0o700)
    victim = home.parent / "victim"
    victim.write_text("precious")
    (home / "up.lock").symlink_to(victim)
    with pytest.raises(SystemExit, match="up.lock: Too many levels of symbolic links"):
        main(["down"])
    assert victim.read_text() == "precious"


def test_kairos_home_is_made_for_this_user_only(home, capsys):
    assert main(["down"]) == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.parametrize("command", [["down"], ["status"]])
def test_a_kairos_home_others_may_write_is_refused(home, command):
    home.mkdir()
    home.chmod(0o777)
    with pytest.raises(SystemExit, match=f"error: {home} has mode 0777: other users could"):
        main(command)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_a_kairos_home_of_another_user_is_refused(home):
    home.mkdir(mode=0o700)
    os.chown(home, 12345, -1)
    with pytest.raises(SystemExit, match=f"error: {home} is owned by uid 12345, not by this"):
        main(["down"])


def test_the_record_is_this_users_only_and_written_through_no_fixed_name(home):
    home.mkdir(mode=0o700)
    victim = home.parent / "victim"
    victim.write_text("precious")
    (home / "run.tmp").symlink_to(victim)  # the fixed temp name the record was written to
    run = local.Run(ray_address="127.0.0.1:1", temp_dir="/tmp/r", sessions=[], started=0,
                    loopback=True, auth_mode="token")
    local.write_run(run)
    assert victim.read_text() == "precious"
    assert stat.S_IMODE((home / "run.json").stat().st_mode) == 0o600
    assert local.read_run() == run
    assert sorted(p.name for p in home.iterdir()) == ["run.json", "run.tmp"]


def test_a_record_that_is_a_link_is_not_read(home):
    home.mkdir(mode=0o700)
    elsewhere = home.parent / "elsewhere.json"
    elsewhere.write_text("{}")
    (home / "run.json").symlink_to(elsewhere)
    with pytest.raises(SystemExit, match="run.json: Too many levels of symbolic links"):
        main(["status"])


def test_ray_starts_log_holds_this_run_only_and_is_this_users_only(home, tmp_path,
                                                                    monkeypatch):
    """Appended across runs, the lines a failed start showed could be an earlier run's."""
    failing = tmp_path / "ray"
    failing.write_text("#!/bin/sh\necho \"this run's failure: $1\" >&2\nexit 1\n")
    failing.chmod(0o700)
    monkeypatch.setattr(local, "_ray_cli", lambda: str(failing))
    home.mkdir(mode=0o700)
    log = home / local.START_LOG
    log.write_text("an earlier run's failure\n")
    log.chmod(0o644)
    run = local.Run(ray_address="127.0.0.1:1", temp_dir="/tmp/r", sessions=[], started=0,
                    loopback=True, auth_mode="token")
    with pytest.raises(local.StartFailed) as failed:
        local.start_ray(run, None)
    assert "this run's failure: start" in str(failed.value)
    assert "earlier" not in str(failed.value) and "earlier" not in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    log.unlink()
    log.symlink_to(tmp_path / "victim")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        local.start_ray(run, None)
    assert not (tmp_path / "victim").exists()


def test_the_consoles_log_holds_this_run_only(home):
    from kairos.cluster.cli import console
    home.mkdir(mode=0o700)
    (home / console.CONSOLE_LOG).write_text("an earlier run's failure\n")
    args = argparse.Namespace(tls_client_ca=None, keys=None, tls_cert=None, tls_key=None,
                              insecure=False)
    run = local.Run(ray_address="127.0.0.1:1", temp_dir="/tmp/r", sessions=[], started=0,
                    loopback=True, auth_mode="token", gateways=["127.0.0.1:1"])
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        args.console_port = other.getsockname()[1]
        with pytest.raises(local.StartFailed, match="(?s)the console did not start.*in use") \
                as failed:
            console.spawn(args, run)
    assert "earlier" not in str(failed.value)
    assert stat.S_IMODE((home / console.CONSOLE_LOG).stat().st_mode) == 0o600


# -- 4: the API key goes to a Kairos known to be there -------------------------------------------

LISTEN = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
          "print(s.getsockname()[1], flush=True); time.sleep(300)")


def recorded(gateway: str, sessions: list[int], token: str) -> local.Run:
    run = local.Run(ray_address="127.0.0.1:1", temp_dir="/tmp/r", sessions=sessions,
                    started=time.time() - 60, loopback=True, auth_mode="token",
                    gateways=[gateway], token=token)
    local.write_run(run)
    return run


def test_the_key_is_not_sent_to_a_stranger_on_a_recorded_gateways_port(home, monkeypatch,
                                                                        capsys):
    """A record that outlived its Kairos (a reboot, say): whoever listens on its port now would
    have been sent KAIROS_API_KEY in clear."""
    monkeypatch.setenv("KAIROS_API_KEY", "the-secret-key")
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        recorded(f"127.0.0.1:{stranger.getsockname()[1]}", [os.getsid(0)], "a-token")
        with pytest.raises(SystemExit, match="Kairos is not running here: no process of the "
                                             "Kairos recorded in .* listens on 127.0.0.1"):
            main(["status"])
        stranger.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection was made
            stranger.accept()


def test_a_recorded_gateway_its_run_listens_on_is_the_default_target(home):
    token = secrets.token_hex(8)
    env = {**os.environ, local.TOKEN_ENV: token}
    gateway = subprocess.Popen([sys.executable, "-c", LISTEN], env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        target = f"127.0.0.1:{gateway.stdout.readline().strip()}"
        recorded(target, [gateway.pid], token)
        assert cli.default_target(50051) == target
    finally:
        gateway.kill()
        gateway.wait()


def test_with_nothing_recorded_the_key_goes_only_to_a_named_target(home, monkeypatch):
    assert cli.default_target(50051) == "127.0.0.1:50051"  # no key: as before
    monkeypatch.setenv("KAIROS_API_KEY", "the-secret-key")
    with pytest.raises(SystemExit, match="nothing is recorded in .*--target 127.0.0.1:50051"):
        main(["status"])


# -- 5: bounds first -----------------------------------------------------------------------------

@pytest.mark.parametrize("options, said", [
    (["--nodes", "1000000"], "--nodes must be 1..16 (Ray nodes on this machine), got 1000000"),
    (["--nodes", "0"], "--nodes must be 1..16"), (["--shards", "100000000"], "--shards must be")])
def test_node_and_shard_counts_are_bounded_before_anything_loops_over_them(
        home, nothing_starts, capsys, options, said):
    """`up --nodes 10000000000` made a list of a gateway port per node before the bound."""
    assert main(["up", "--no-dashboard", "--console-port", "0", *options]) == 2
    assert said in capsys.readouterr().err


# -- 6: a record is kept while its processes live ------------------------------------------------

@pytest.fixture
def would_not_stop(monkeypatch):
    """terminate() as it ends when a process outlives SIGKILL (one in uninterruptible sleep,
    say, which no test can make): the process 4242 left."""
    monkeypatch.setattr(local, "terminate", lambda run: (3, [4242]))


@pytest.mark.parametrize("failure, status", [(local.StartFailed("no"), 1),
                                             (KeyboardInterrupt(), 130)])
def test_an_up_that_fails_keeps_its_record_when_its_processes_would_not_stop(
        home, environment, would_not_stop, monkeypatch, capsys, failure, status):
    def start_ray(run, dashboard_port):
        run.sessions.append(4242)
        local.write_run(run)
        raise failure
    monkeypatch.setattr(local, "start_ray", start_ray)
    assert main(up()) == status
    err = capsys.readouterr().err
    assert "1 of Kairos's Ray processes would not stop (processes 4242 of sessions [4242])" in err
    assert "not all of what had started stopped" in err
    assert local.read_run().sessions == [4242]


def test_down_names_the_processes_that_would_not_stop(home, would_not_stop, capsys):
    token = secrets.token_hex(8)
    carrier = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                               env={**os.environ, local.TOKEN_ENV: token},
                               start_new_session=True)
    try:
        recorded(f"127.0.0.1:{local.free_port()}", [carrier.pid], token)
        assert main(["down"]) == 1
        assert "would not stop (processes 4242 of sessions" in capsys.readouterr().err
        assert local.read_run().sessions == [carrier.pid]
    finally:
        carrier.kill()
        carrier.wait()


# -- 7: errors, not tracebacks -------------------------------------------------------------------

BINARY = b"\xff\xfe\x00keys"


def test_validating_a_file_that_is_not_text_names_it(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(BINARY)
    assert main(["catalog", "validate", str(binary)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {binary}: not UTF-8 text (byte 0xff at offset 0)")


def test_an_api_key_file_that_is_not_text_is_named(home, tmp_path, monkeypatch):
    binary = tmp_path / "key"
    binary.write_bytes(BINARY)
    binary.chmod(0o600)
    monkeypatch.setenv("KAIROS_API_KEY_FILE", str(binary))
    with pytest.raises(SystemExit, match=f"error: KAIROS_API_KEY_FILE {binary}: not UTF-8 text"):
        main(["--target", "127.0.0.1:1", "status"])


@pytest.mark.parametrize("option", ["--keys", "--catalog"])
def test_an_up_file_that_is_not_text_is_named(home, nothing_starts, tmp_path, capsys, option):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(BINARY)
    binary.chmod(0o600)
    assert main(up(option, str(binary))) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {option} {binary}: not UTF-8 text (byte 0xff at offset 0)")


@pytest.mark.parametrize("command", [["status"], ["demo"]])
def test_ctrl_c_while_a_command_waits_on_a_gateway_exits_130_quietly(home, command):
    """A gateway that accepts and never answers: the command waits in its call, and ^C there
    printed a KeyboardInterrupt traceback."""
    code = "import sys; from kairos.cluster.cli.main import main; sys.exit(main(sys.argv[1:]))"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        waiting = subprocess.Popen([sys.executable, "-c", code, "--target", target, *command],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        silent.settimeout(60)
        connections = []
        while True:  # demo first checks that something accepts connections, and closes
            connections.append(silent.accept()[0])
            connections[-1].settimeout(60)
            if connections[-1].recv(1):  # gRPC's preface: the command waits in its call
                break
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
        for connection in connections:
            connection.close()
    assert waiting.returncode == 130 and "Traceback" not in err, err


# -- 8: why the graceful stop failed -------------------------------------------------------------

def stoppable(address: str) -> local.Run:
    return local.Run(ray_address=address, temp_dir="/tmp/r", sessions=[], started=0,
                     loopback=True, auth_mode="token")


def test_a_graceful_stop_that_fails_says_why_not_that_it_took_too_long(home):
    """The child that stops the runtime through Ray exited at once (here: ray.init refuses the
    address): down said it 'did not stop through Ray within 30 s'."""
    stopped, why = graceful.stop_runtime(stoppable("not-an-address"))
    assert stopped is None
    assert why.startswith("stopping the runtime through Ray failed (exit 1); its last words:")
    assert "not-an-address" in why


def test_a_graceful_stop_that_takes_too_long_says_so(home, monkeypatch):
    monkeypatch.setattr(graceful, "GRACEFUL_STOP_S", 1.0)  # no GCS answers there: ray.init waits
    stopped, why = graceful.stop_runtime(stoppable(f"127.0.0.1:{local.free_port()}"))
    assert stopped is None and why.startswith("the runtime did not stop through Ray within 1 s")


# -- 9: what a setting does not concern ----------------------------------------------------------

MAIN = "import sys; from kairos.cluster.cli.main import main; sys.exit(main(sys.argv[1:]))"


def test_a_gateway_port_of_0_is_not_said_as_a_target_the_user_gave(home):
    """KAIROS_GATEWAY_PORT=0 made a bare `kairos status` say '--target 127.0.0.1:0: port 0 is
    out of range', of an option the user had not given."""
    done = subprocess.run([sys.executable, "-c", MAIN, "status"], capture_output=True,
                          env={**os.environ, "KAIROS_GATEWAY_PORT": "0"}, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: KAIROS_GATEWAY_PORT is 0 (gateways on any free port)")
    assert "name a gateway with --target" in done.stderr


def test_down_stops_a_kairos_whatever_an_unrelated_setting_says(home, tmp_path):
    """A bad KAIROS_TICK_S made `kairos down` refuse (exit 2), leaving the cluster running."""
    token = secrets.token_hex(8)
    carrier = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                               env={**os.environ, local.TOKEN_ENV: token},
                               start_new_session=True)
    try:
        recorded(f"127.0.0.1:{local.free_port()}", [carrier.pid], token)
        done = subprocess.run([sys.executable, "-c", MAIN, "down"],
                              env={**os.environ, "KAIROS_TICK_S": "abc"}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Kairos is down: Ray's GCS at 127.0.0.1:1 was gone")
        assert carrier.wait(timeout=10) is not None
        done = subprocess.run([sys.executable, "-c", MAIN, "status"],
                              env={**os.environ, "KAIROS_TICK_S": "abc"}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and "KAIROS_TICK_S must be" in done.stderr
    finally:
        carrier.kill()
        carrier.wait()
