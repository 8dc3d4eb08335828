"""`kairos up`, `down` and the commands that read their record, as the local machine's other
users and the operator's own mistakes meet them (issue 18 hardening): Ray's authentication
mode, Ray's temp dir, the files in KAIROS_HOME, the key sent to a recorded gateway, bounds,
stops that fail, errors without tracebacks. Ray's start is stubbed out: nothing here starts
Ray."""
from __future__ import annotations

import argparse
import contextlib
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
from types import SimpleNamespace
from typing import Iterator

import pytest

from kairos.cluster.cli import graceful, local, main as cli, private
from kairos.cluster.cli.main import main

from tests.support.waiting import wait_until


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
    assert main(["down"]) == 0
    monkeypatch.setenv("RAY_TMPDIR", str(short_home.parent))  # the operator's own choice
    assert main(up()) == 0
    assert local.read_run().temp_dir == str(short_home.parent / "ray")


def test_a_kairos_home_too_long_for_rays_sockets_keeps_rays_temp_dir_in_a_new_one_in_tmp(
        home, stand_in_start, monkeypatch, capsys):
    """/tmp/kairos-ray-UID, a name any user could make first, blocked every `kairos up`; and
    down now removes what it made, once empty."""
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv(local.HOME_ENV, str(home / ("a" * 60)))
    temp_dirs = []
    try:
        for _ in range(2):
            assert main(up()) == 0
            temp_dirs.append(Path(local.read_run().temp_dir))
            assert f"; Ray's temp dir {temp_dirs[-1]}." in capsys.readouterr().out
            folder = temp_dirs[-1].parent
            assert folder.parent == Path("/tmp") and temp_dirs[-1].name == "tmp"
            assert folder.name.startswith(f"kairos-ray-{os.geteuid()}-")
            assert stat.S_IMODE(folder.lstat().st_mode) == 0o700
            assert main(["down"]) == 0
            assert not folder.exists()
        assert temp_dirs[0] != temp_dirs[1]
    finally:  # a failure between up and down leaves no folder in /tmp
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir.parent, ignore_errors=True)


@pytest.mark.parametrize("where", ["--ray-temp-dir", "RAY_TMPDIR"])
def test_a_ray_temp_dir_too_long_for_rays_sockets_is_refused_before_it_is_made(
        home, nothing_starts, monkeypatch, tmp_path, capsys, where):
    long = tmp_path / ("d" * 60)
    if where == "RAY_TMPDIR":
        monkeypatch.setenv("RAY_TMPDIR", str(long))
        assert main(up()) == 2
        said = f"error: Ray's temp dir {long / 'ray'} ($RAY_TMPDIR/ray) is too long: Ray makes"
    else:
        assert main(up("--ray-temp-dir", str(long))) == 2
        said = f"error: --ray-temp-dir {long} is too long: Ray makes Unix sockets under it"
    err = capsys.readouterr().err
    assert said in err and "choose another with --ray-temp-dir DIR or RAY_TMPDIR" in err
    assert not long.exists()


@pytest.mark.parametrize("made", ["0755", "a link"])
def test_the_folder_of_rays_temp_dir_is_made_closed_and_is_no_link(tmp_path, made):
    """Ray makes its folders in it 0777: this folder is all that keeps other users out. A link
    to any 0755 directory of this user's was taken, and one of mode 0755 was made 0700."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    folder = home / "ray"
    if made == "a link":
        (tmp_path / "pub").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "pub")
        with pytest.raises(SystemExit, match=f"error: {folder} is a link: the folder of Ray's"):
            private.closed_dir(folder, "the folder of Ray's temp dir")
    else:
        folder.mkdir()
        folder.chmod(0o755)
        with pytest.raises(SystemExit, match=f"error: {folder} has mode 0755: other users could "
                                             f"reach .* `chmod 700 {folder}`"):
            private.closed_dir(folder, "the folder of Ray's temp dir")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert private.closed_dir(home / "new", "the folder") == home / "new"
    assert stat.S_IMODE((home / "new").stat().st_mode) == 0o700


def test_up_keeps_no_ray_temp_dir_in_a_ray_folder_that_is_a_link(home, short_home,
                                                                 nothing_starts, monkeypatch,
                                                                 capsys):
    """The probe: $KAIROS_HOME/ray a link to a 0755 folder of this user's, and Ray's temp dir
    (its folders 0777) was made in it."""
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    short_home.mkdir(mode=0o700)
    pub = short_home.parent / "pub"
    pub.mkdir(mode=0o755)
    pub.chmod(0o755)
    (short_home / "ray").symlink_to(pub)
    assert main(up()) == 2
    assert f"error: {short_home / 'ray'} is a link" in capsys.readouterr().err
    assert not (pub / "tmp").exists()


# -- 3: the files in KAIROS_HOME -----------------------------------------------------------------

def planted(home: Path, name: str, mode: int = 0o700) -> Path:
    """`home` made of `mode`, with `name` in it a link that another user planted, to a file of
    its own ("victim"): the victim."""
    home.mkdir()
    home.chmod(mode)
    victim = home.parent / "victim"
    victim.write_text("precious")
    (home / name).symlink_to(victim)
    return victim


def a_run(temp_dir: Path, **fields) -> local.Run:
    """A record of a run whose Ray keeps its temp dir in `temp_dir`."""
    return local.Run(**{"ray_address": "127.0.0.1:1", "temp_dir": str(temp_dir), "sessions": [],
                        "started": 0, "loopback": True, "auth_mode": "token", **fields})


def test_a_link_planted_as_the_lock_is_not_followed(home, capsys):
    """`ln -s victim $H/up.lock; kairos down` emptied the victim (the lock was opened "w")."""
    victim = planted(home, "up.lock")
    with pytest.raises(SystemExit, match="up.lock: Too many levels of symbolic links"):
        main(["down"])
    assert victim.read_text() == "precious"


def test_kairos_home_is_made_for_this_user_only(home, capsys):
    assert main(["down"]) == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


# status with a target of its own: the default is the README's running Kairos, left alone
@pytest.mark.parametrize("command", [["down"], ["--target", "127.0.0.1:1", "status"]])
def test_a_home_others_may_only_read_is_read_as_it_is(home, capsys, command):
    """`status` and `down` made any home of this user's 0700 ($HOME, a team's folder, one
    with a public_html): they only read."""
    home.mkdir()
    home.chmod(0o755)
    (home / "public_html").mkdir()
    main(command)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o775, 0o757])
@pytest.mark.parametrize("command", [["down"], ["status"], up()])
def test_a_home_others_may_write_is_refused_and_left_as_it_is(home, nothing_starts, mode,
                                                             command):
    """A home others could write was made 0700 and what they had planted in it trusted."""
    victim = planted(home, "run.json", mode)
    who = "other users" if mode & 0o002 else "the members of its group"
    with pytest.raises(SystemExit, match=f"error: {home} has mode {mode:04o}: {who}"):
        main(command)
    assert stat.S_IMODE(home.stat().st_mode) == mode
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("where", ["up", "the console's key"])
def test_up_makes_a_home_of_kaiross_own_0700_and_says_it_once(home, stand_in_start, capsys,
                                                             where):
    """One an older Kairos made under the umask (0755), holding only what Kairos keeps."""
    home.mkdir()
    home.chmod(0o755)
    for name in ("run.json.old", "store", "ray-start.log"):
        (home / name).mkdir() if name == "store" else (home / name).write_text("")
    (home / "run.json.old").rename(home / ".run.json.abcd1234")  # a record's temp file
    for _ in range(2):
        if where == "up":
            assert main(up()) == 0
            assert main(["down"]) == 0
        else:
            from kairos.cluster.console.server import keys_text
            keys_text(None, home)
            (home / "console-keys.yaml").unlink()
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert capsys.readouterr().err.count(f"note: {home} had mode 0755: made 0700") == 1


@pytest.mark.parametrize("which", ["the user's home", "one with other files"])
def test_up_refuses_a_wide_home_that_is_not_kaiross_own_and_leaves_it(home, nothing_starts,
                                                                     monkeypatch, which):
    """KAIROS_HOME=$HOME, or a folder with a public_html, was made 0700 by every command."""
    home.mkdir()
    home.chmod(0o755)
    if which == "the user's home":
        monkeypatch.setenv("HOME", str(home))
    else:
        (home / "public_html").mkdir()
    for make in (lambda: main(up()), lambda: local.own_home()):
        with pytest.raises(SystemExit, match=f"error: {home} has mode 0755: other users could "
                                             f"list .* `chmod 700 {home}`"):
            make()
    assert stat.S_IMODE(home.stat().st_mode) == 0o755


def test_the_default_home_is_kaiross_own_whatever_it_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(local.HOME_ENV, raising=False)
    (tmp_path / ".kairos" / "notes").mkdir(parents=True)
    (tmp_path / ".kairos").chmod(0o755)
    assert local.own_home() == tmp_path / ".kairos"
    assert stat.S_IMODE((tmp_path / ".kairos").stat().st_mode) == 0o700


@pytest.mark.parametrize("chmod", ["ignored", "refused"])
def test_a_home_whose_filesystem_keeps_its_mode_is_said_so(home, monkeypatch, chmod):
    """No fstat followed the fchmod: a filesystem that ignores chmod got 'made 0700' every
    time, one that refuses it a misleading 'must be a directory this user may write'. Such a
    filesystem (a FAT or CIFS mount) is stood in for by os.fchmod."""
    home.mkdir()
    home.chmod(0o755)

    def fchmod(fd, mode):
        if chmod == "refused":
            raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchmod", fchmod)
    said = "stays 0755 after `chmod 700`" if chmod == "ignored" else \
        r"cannot be made 0700 \(Operation not permitted\)"
    with pytest.raises(SystemExit, match=f"error: {home} has mode 0755 (and )?{said}"):
        local.own_home()


def test_what_kairos_keeps_in_its_home_is_named_as_its_modules_name_it():
    from kairos.cluster.cli import console, options
    from kairos.cluster.console.server import CONSOLE_KEYS_FILE
    assert private.HOME_NAMES == {local.RUN_FILE, local.LOCK_FILE, local.START_LOG,
                                  console.CONSOLE_LOG, CONSOLE_KEYS_FILE, options.STORE_DIR,
                                  os.path.basename(os.path.dirname(local.own_ray_temp_dir()))}


@pytest.mark.parametrize("mode, who", [(0o777, "other users"),
                                       (0o770, r"the members of its group \(\d+\)")])
def test_a_kairos_home_that_links_to_a_directory_others_may_write_is_refused(
        home, tmp_path, mode, who):
    """Its target is not Kairos's to change; the refusal names who may write it."""
    target = tmp_path / "target"
    target.mkdir()
    target.chmod(mode)
    home.symlink_to(target)
    with pytest.raises(SystemExit, match=f"error: {home} links to a directory of mode "
                                         f"{mode:04o}: {who} could replace"):
        main(["status"])
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_the_consoles_keys_make_kairos_home_0700_whatever_the_umask(tmp_path):
    """keys_text made a missing $KAIROS_HOME under the umask (0775 under 002)."""
    from kairos.cluster.console.server import keys_text
    saved = os.umask(0o002)
    try:
        keys_text(None, tmp_path / "home")
    finally:
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700


def test_the_record_is_read_from_a_home_checked_as_it_is_made(tmp_path, monkeypatch):
    """read_run followed a link where own_dir refused one (in a folder others may write)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (shared / "home").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv(local.HOME_ENV, str(shared / "home"))
    with pytest.raises(SystemExit, match="is not a directory"):
        local.read_run()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_a_kairos_home_of_another_user_is_refused(home):
    home.mkdir(mode=0o700)
    os.chown(home, 12345, -1)
    with pytest.raises(SystemExit, match=f"error: {home} is owned by uid 12345, not by this"):
        main(["down"])


def test_the_record_is_this_users_only_and_written_through_no_fixed_name(home, tmp_path):
    victim = planted(home, "run.tmp")  # the fixed temp name the record was written to
    run = a_run(tmp_path / "ray")
    local.write_run(run)
    assert victim.read_text() == "precious"
    assert stat.S_IMODE((home / "run.json").stat().st_mode) == 0o600
    assert local.read_run() == run
    assert sorted(p.name for p in home.iterdir()) == ["run.json", "run.tmp"]


def test_a_record_that_is_a_link_is_not_read(home):
    planted(home, "run.json")
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
    run = a_run(tmp_path / "temp")
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


def test_the_consoles_log_holds_this_run_only(home, tmp_path):
    from kairos.cluster.cli import console
    home.mkdir(mode=0o700)
    (home / console.CONSOLE_LOG).write_text("an earlier run's failure\n")
    args = argparse.Namespace(tls_client_ca=None, keys=None, tls_cert=None, tls_key=None,
                              insecure=False)
    run = a_run(tmp_path / "ray", gateways=["127.0.0.1:1"])
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


@contextlib.contextmanager
def carrying(token: str) -> Iterator[subprocess.Popen]:
    """A process, in a session of its own, that carries the run's `token` (as Ray's GCS does),
    killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            env={**os.environ, local.TOKEN_ENV: token}, start_new_session=True)
    try:
        # until it has exec'd: forked, it shows its parent's environment, without the token,
        # and a loaded machine's `down` then found the run's processes exited
        wait_until(lambda: token.encode() in Path(f"/proc/{proc.pid}/environ").read_bytes(),
                   30.0, "the carrier to start with the run's token")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def recorded(gateway: str, sessions: list[int], token: str) -> local.Run:
    """A run recorded in the test's KAIROS_HOME, its Ray's temp dir there as `up` makes it."""
    run = a_run(local.own_ray_temp_dir(), sessions=sessions, started=time.time() - 60,
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
    with carrying(token) as carrier:
        recorded(f"127.0.0.1:{local.free_port()}", [carrier.pid], token)
        assert main(["down"]) == 1
        assert "would not stop (processes 4242 of sessions" in capsys.readouterr().err
        assert local.read_run().sessions == [carrier.pid]


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
    # ^C as a terminal's foreground process takes it: a suite run as a background job (`&` in
    # a script) has SIGINT ignored, which the command would inherit, and wait out its deadline
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from kairos.cluster.cli.main import main; sys.exit(main(sys.argv[1:]))")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        waiting = subprocess.Popen([sys.executable, "-c", code, "--target", target, *command],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        silent.settimeout(60)
        connections = []
        try:
            while True:  # demo first checks that something accepts connections, and closes
                connections.append(silent.accept()[0])
                connections[-1].settimeout(60)
                if connections[-1].recv(1):  # gRPC's preface: the command waits in its call
                    break
            waiting.send_signal(signal.SIGINT)
            out, err = waiting.communicate(timeout=60)
        finally:  # not left waiting out its deadline where the test failed first
            waiting.kill()
            waiting.wait()
            for connection in connections:
                connection.close()
    assert waiting.returncode == 130 and "Traceback" not in err, err


# -- 8: why the graceful stop failed -------------------------------------------------------------

def stoppable(address: str) -> local.Run:
    return a_run(local.own_ray_temp_dir(), ray_address=address)


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
    with carrying(token) as carrier:
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


# -- 10: down of a healthy Kairos under a bad unrelated setting ----------------------------------

SERVE = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
         "s.listen(); print('listening', flush=True); time.sleep(300)")


def test_ray_env_names_the_store_password_variable_as_the_store_does():
    from kairos.cluster.storage.providers import STORE_PASSWORD_FILE_ENV
    assert local.STORE_PASSWORD_FILE_ENV == STORE_PASSWORD_FILE_ENV


def test_up_takes_up_a_store_without_waiting_for_nodes_unless_told_to(monkeypatch):
    """`up` starts every node before the controller: a store a run of more --nodes saved made
    each later start wait KAIROS_TAKEUP_NODES_WAIT_S (120 s) for nodes that never come."""
    monkeypatch.delenv("KAIROS_TAKEUP_NODES_WAIT_S", raising=False)
    assert local.ray_env(True, "token")["KAIROS_TAKEUP_NODES_WAIT_S"] == "0"
    monkeypatch.setenv("KAIROS_TAKEUP_NODES_WAIT_S", "30")  # the operator's own value wins
    assert local.ray_env(True, "token")["KAIROS_TAKEUP_NODES_WAIT_S"] == "30"


@contextlib.contextmanager
def healthy_ray(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen]]]:
    """A recorded run whose Ray looks healthy to `down` (its GCS answering, a raylet alive),
    stood in for by processes of their names: (the GCS port, the processes)."""
    token, port = secrets.token_hex(8), local.free_port()
    env = {**os.environ, local.TOKEN_ENV: token}
    procs = []
    try:
        for name, code in (("gcs_server", SERVE), ("raylet", "import time; time.sleep(300)")):
            (tmp_path / name).symlink_to(sys.executable)
            procs.append(subprocess.Popen([str(tmp_path / name), "-c", code, str(port)], env=env,
                                          stdout=subprocess.PIPE, text=True,
                                          start_new_session=True))
        assert procs[0].stdout.readline() == "listening\n"
        run = recorded("127.0.0.1:1", [p.pid for p in procs], token)
        run.ray_address = f"127.0.0.1:{port}"
        local.write_run(run)
        yield port, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_down_of_a_healthy_kairos_stops_it_whatever_an_unrelated_setting_says(home, tmp_path):
    """The GCS answering and a raylet alive, down went on to the graceful stop, whose Ray
    environment imported cluster.settings: KAIROS_TICK_S=abc raised there (a traceback, exit 1,
    nothing stopped)."""
    with healthy_ray(tmp_path) as (port, procs):
        code = ("import sys; from kairos.cluster.cli import graceful; graceful.GRACEFUL_STOP_S = "
                "5.0; from kairos.cluster.cli.main import main; sys.exit(main(sys.argv[1:]))")
        done = subprocess.run([sys.executable, "-c", code, "down"], capture_output=True,
                              env={**os.environ, "KAIROS_TICK_S": "abc"}, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stdout.startswith("Kairos is down: ") and "KAIROS_TICK_S" not in done.stdout
        assert f"Ray's 2 processes at 127.0.0.1:{port}" in done.stdout, done.stdout
        assert all(p.wait(timeout=10) is not None for p in procs)
        assert local.read_run() is None


def test_down_says_what_the_graceful_stop_warned_of(home, tmp_path, monkeypatch, capsys):
    """The learner's last merges that the store did not take were said in the stop's child's
    stderr, which `down` shows only when the stop fails: it said "Kairos is down" alone."""
    lost = "stop: the learner did not save its last merges: the store did not take it"
    monkeypatch.setattr(graceful, "stop_runtime",
                        lambda run: ({"shards": 4, "warnings": [lost]}, ""))
    with healthy_ray(tmp_path) as (port, procs):
        assert main(["down"]) == 0
        said = capsys.readouterr()
        assert said.out.startswith("Kairos is down: ") and f"warning: {lost}\n" in said.err
        assert all(p.wait(timeout=10) is not None for p in procs)


def test_the_graceful_stop_hands_down_what_the_runtime_warned_of_in_one_line(monkeypatch,
                                                                            capsys):
    """A refused last save reached the log as the task error's whole traceback. The stop's
    child also writes it to stderr as it comes: a stop killed past GRACEFUL_STOP_S says it as
    its last words."""
    from ray.exceptions import RayTaskError

    from kairos.cluster.control import runtime
    from kairos.cluster.storage.store import StoreUnavailable
    refused = StoreUnavailable("the store did not take the learner's last save: the 7 merges "
                               "since the last save that landed are lost if its process ends now")

    def get(ref, timeout):
        raise RayTaskError("flush", "Traceback (most recent call last):\n  ...", refused)
    learner = SimpleNamespace(flush=SimpleNamespace(remote=lambda: "a ref"))
    monkeypatch.setattr(runtime.ray, "get_actor", lambda name, namespace: learner)
    monkeypatch.setattr(runtime.ray, "get", get)
    warnings = graceful._Warnings()
    runtime.log.addHandler(warnings)
    try:
        runtime._flush_learner()
    finally:
        runtime.log.removeHandler(warnings)
    said = f"stop: the learner did not save its last merges: StoreUnavailable: {refused}"
    assert warnings.said == [said] and capsys.readouterr().err == said + "\n"


def test_the_graceful_stops_child_reads_no_kairos_setting(home, monkeypatch):
    """The child that stops the runtime imports cluster.settings: with the operator's bad
    KAIROS_TICK_S it exited 1 at once, and down stopped Ray's processes without draining."""
    monkeypatch.setenv("KAIROS_TICK_S", "abc")
    stopped, why = graceful.stop_runtime(stoppable("not-an-address"))
    assert stopped is None and "not-an-address" in why and "KAIROS_TICK_S" not in why


def test_a_graceful_stop_that_raises_falls_back_to_stopping_rays_processes(home, monkeypatch):
    def raising(run):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(graceful, "stop_runtime", raising)
    assert cli._stop_runtime(stoppable("127.0.0.1:1")) == (
        None, "stopping the runtime through Ray failed (OSError: [Errno 24] Too many open files)")


# -- 11: down removes the run's own Ray session directories --------------------------------------

def session(at: float, pid: int) -> str:
    return time.strftime("session_%Y-%m-%d_%H-%M-%S_", time.localtime(at)) + f"123456_{pid}"


def test_only_the_named_session_and_the_links_into_it_are_removed(tmp_path):
    from kairos.cluster.cli import raytemp
    temp, victim, now = tmp_path / "ray", tmp_path / "victim", time.time()
    victim.mkdir()
    (victim / "precious").write_text("precious")
    ours, others, same_id = session(now, 4242), session(now, 4243), session(now + 1, 4242)
    for name in (ours, others, same_id):
        (temp / name / "logs").mkdir(parents=True)
    (temp / ours / "logs" / "into-victim").symlink_to(victim)
    (temp / "session_latest").symlink_to(temp / ours)
    (temp / "prom_metrics_service_discovery.json").symlink_to(
        temp / ours / "prom_metrics_service_discovery.json")
    (temp / "other_latest").symlink_to(temp / others)
    (temp / "ray_current_cluster").write_text("127.0.0.1:1")
    for name in ("", "..", f"{ours}/logs", "ray_current_cluster"):  # none of a session's name
        raytemp.remove_session(str(temp), name)
    raytemp.remove_session(str(temp), ours)
    assert sorted(p.name for p in temp.iterdir()) == sorted(
        [others, same_id, "other_latest", "ray_current_cluster"])
    assert (victim / "precious").read_text() == "precious"
    (temp / "linked").symlink_to(victim)  # a link of a session's name: not followed
    (temp / ours).symlink_to(victim)
    raytemp.remove_session(str(temp), ours)
    assert (victim / "precious").read_text() == "precious"


def test_the_session_is_the_one_session_latest_names_if_the_heads(tmp_path):
    from kairos.cluster.cli import raytemp
    temp, now = tmp_path / "ray", time.time()
    temp.mkdir()
    assert raytemp.session_of(str(temp), 4242, now - 60, now) == ""  # none made
    for name, ours in ((session(now - 30, 4242), True), (session(now - 30, 4243), False),
                       (session(now - 120, 4242), False), (session(now + 30, 4242), False)):
        (temp / name).mkdir()
        (temp / "session_latest").unlink(missing_ok=True)
        (temp / "session_latest").symlink_to(temp / name)
        assert raytemp.session_of(str(temp), 4242, now - 60, now) == (name if ours else "")
    (temp / "session_latest").unlink()
    (temp / "session_latest").symlink_to(tmp_path)  # out of the temp dir
    assert raytemp.session_of(str(temp), 4242, now - 60, now) == ""


# Ray's own start, stood in for: its session directory, named as Ray names it (the local time to
# the microsecond, the pid of `ray start`), and session_latest
RAY_START = """#!/bin/sh
for a in "$@"; do case "$a" in --temp-dir=*) t="${a#--temp-dir=}";; esac; done
s="$t/session_$(date +%Y-%m-%d_%H-%M-%S_%6N)_$$"
mkdir -p "$s/logs" && ln -sfn "$s" "$t/session_latest"
"""


@pytest.mark.parametrize("case", ["pid reused", "another TZ"])
def test_down_removes_exactly_the_session_the_heads_ray_start_made(home, tmp_path,
                                                                  monkeypatch, case):
    """down looked for sessions by the head's pid and a 180 s window after the start, read in
    its own TZ: another `ray start --head` that got the same pid within the window (in a shared
    RAY_TMPDIR) lost its live session, and a `down` in another TZ than `up` left the run's."""
    ray = tmp_path / "ray-cli"
    ray.write_text(RAY_START)
    ray.chmod(0o700)
    monkeypatch.setattr(local, "_ray_cli", lambda: str(ray))
    home.mkdir(mode=0o700)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        run = a_run(tmp_path / "temp", started=time.time())
        local.start_ray(run, None)
        ours = run.session
        assert ours.endswith(f"_{run.sessions[0]}") and (run.temp_dir / Path(ours)).is_dir()
        assert local.read_run().session == ours
        # another's: the same pid, the same second (its `ray start` given the id since)
        another = ours[:-len(str(run.sessions[0])) - 7] + f"654321_{run.sessions[0]}"
        if case == "pid reused":
            (tmp_path / "temp" / another).mkdir()
        else:
            monkeypatch.setenv("TZ", "Asia/Tokyo")
            time.tzset()
        local.forget_stopped(run)
    finally:
        monkeypatch.undo()
        time.tzset()
    left = sorted(p.name for p in (tmp_path / "temp").iterdir())
    assert left == ([another] if case == "pid reused" else [])


def test_a_record_without_its_sessions_name_removes_none(home, tmp_path):
    """An older Kairos's: a pid and a window could name another cluster's session."""
    run = a_run(tmp_path / "temp", sessions=[4242], started=time.time() - 10)
    (tmp_path / "temp" / session(time.time() - 5, 4242)).mkdir(parents=True)
    local.forget_stopped(run)
    assert len(list((tmp_path / "temp").iterdir())) == 1


def test_down_removes_the_session_its_ray_made(home, tmp_path, capsys):
    token = secrets.token_hex(8)
    with carrying(token) as carrier:
        ours, another = session(time.time(), carrier.pid), session(time.time(), carrier.pid + 1)
        run = recorded("127.0.0.1:1", [carrier.pid], token)
        run.temp_dir, run.session = str(tmp_path / "ray"), ours
        local.write_run(run)
        (tmp_path / "ray" / ours / "logs").mkdir(parents=True)
        (tmp_path / "ray" / another).mkdir()
        assert main(["down"]) == 0
        assert [p.name for p in (tmp_path / "ray").iterdir()] == [another]


def test_the_graceful_stops_child_keeps_rays_authentication_and_the_paths(home, monkeypatch):
    """It drops Kairos's own settings only: without Ray's token or mode it could not join the
    run's Ray, without PYTHONPATH or HOME not import Kairos or find ~/.ray's token."""
    kept = {"RAY_AUTH_TOKEN": "1" * 64, "PYTHONPATH": "/opt/kairos", "HOME": "/home/op"}
    for name, value in {**kept, "KAIROS_TICK_S": "abc"}.items():
        monkeypatch.setenv(name, value)
    env = graceful._child_env(stoppable("127.0.0.1:1"))
    assert {name: env.get(name) for name in kept} == kept and env["RAY_AUTH_MODE"] == "token"
    assert not [name for name in env if name.startswith("KAIROS_")]


# -- 12: the recorded gateways a command calls ---------------------------------------------------

def test_the_first_recorded_gateway_its_run_listens_on_is_the_default_target(home):
    """Only the first recorded gateway was tried: with it gone, a Kairos whose other gateways
    served was said not to run."""
    token = secrets.token_hex(8)
    gateway = subprocess.Popen([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, local.TOKEN_ENV: token}, start_new_session=True)
    try:
        target = f"127.0.0.1:{gateway.stdout.readline().strip()}"
        run = recorded(f"127.0.0.1:{local.free_port()}", [gateway.pid], token)
        run.gateways.append(target)
        local.write_run(run)
        assert cli.default_target(50051) == target
        run.gateways = [run.gateways[0]]
        local.write_run(run)
        with pytest.raises(SystemExit) as said:  # a run alive: no stale record to clear
            cli.default_target(50051)
        assert "(it may be starting, or stopping)" in str(said.value)
        assert "kairos down" not in str(said.value)
    finally:
        gateway.kill()
        gateway.wait()


def test_a_record_without_gateways_yet_is_not_said_to_be_nothing(home, monkeypatch):
    monkeypatch.setenv("KAIROS_API_KEY", "the-secret-key")
    run = recorded("127.0.0.1:1", [], "a-token")
    run.gateways = []
    local.write_run(run)
    with pytest.raises(SystemExit, match=r"Kairos is not running here: the Kairos recorded in "
                                         r".* has no gateway yet \(`kairos up` may still"):
        main(["status"])
