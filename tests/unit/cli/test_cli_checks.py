"""What `kairos` refuses before it starts or dials anything, in one clear line rather than a
traceback or a start that fails once Ray runs (review rev42 cli). Ray's start is stubbed out:
nothing here starts Ray."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from kairos.cluster.cli import local, main as cli, watchdog
from kairos.cluster.cli.checks import Refused, checked_inputs, made_temp_dir
from kairos.cluster.cli.main import main, parser
from tests.support import pki
from tests.unit.cli.test_cli import KAIROS, KEYS, SLEEP

# the gateway's own words (gateway/server.py's serve)
NO_KEYS = ("error: refusing to serve without API keys on {}: auth may be off only on a "
           "loopback address")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv("KAIROS_API_KEYS", raising=False)
    monkeypatch.delenv("KAIROS_STORE_PASSWORD_FILE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def nothing_starts(monkeypatch):
    def started(*args):
        raise AssertionError("went past the checks")
    monkeypatch.setattr(local, "start_ray", started)


# -- ports ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--ray-port", "0"), ("--ray-port", "70000"), ("--dashboard-port", "99999"),
    ("--dashboard-port", "0"), ("--console-port", "-5"), ("--console-port", "70000"),
    ("--port", "-1"), ("--port", "70000")])
def test_up_refuses_a_port_outside_1_to_65535(home, nothing_starts, capsys, option, value):
    with pytest.raises(SystemExit) as exited:
        main(["up", option, value])
    assert exited.value.code == 2
    assert f"argument {option}: must be a port, 1-65535, got {value}" in capsys.readouterr().err


def test_zero_is_taken_only_where_it_means_something():
    args = parser(50051).parse_args(["up", "--port", "0", "--console-port", "0"])
    assert (args.port, args.console_port) == (0, 0)  # any free port; no console
    assert parser(50051).parse_args(["start", "--address", "x:1", "--port", "0"]).port == 0
    with pytest.raises(SystemExit):
        parser(50051).parse_args(["console", "--port", "0"])


def test_up_refuses_gateway_ports_past_65535(home, nothing_starts, capsys):
    assert main(["up", "--nodes", "2", "--port", "65535", "--console-port", "0"]) == 2
    assert "--port + 1 is port 65536, past 65535" in capsys.readouterr().err


def test_port_free_checks_the_range_and_tells_an_unknown_host_from_a_port_in_use():
    with pytest.raises(ValueError, match="out of range"):
        local.port_free(local.LOOPBACK, 70000)  # getaddrinfo: port 4464
    with pytest.raises(ValueError, match="out of range"):
        local.port_free(local.LOOPBACK, -1)
    with pytest.raises(local.AddressUnusable, match="cannot resolve host 'no.such.host.invalid'"):
        local.port_free("no.such.host.invalid", 50051)
    with pytest.raises(local.AddressUnusable, match="cannot listen on 192.0.2.1"):
        local.port_free("192.0.2.1", 50051)  # TEST-NET-1: no machine's own address


@pytest.mark.parametrize("port", ["50051", "0"])
@pytest.mark.parametrize("host, said", [
    ("no.such.host.invalid", "error: --host: cannot resolve host 'no.such.host.invalid'"),
    ("192.0.2.1", "error: --host: cannot listen on 192.0.2.1 port")])
def test_up_says_a_host_cannot_be_listened_on_rather_than_in_use(home, nothing_starts, capsys,
                                                                 monkeypatch, port, host, said):
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)
    assert main(["up", "--host", host, "--port", port, "--ray-port", str(local.free_port()),
                 "--no-dashboard", "--console-port", "0", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert said in err and "in use" not in err


@pytest.mark.parametrize("target, said", [
    ("127.0.0.1:99999", "error: --target 127.0.0.1:99999: port 99999 is out of range"),
    ("127.0.0.1:-1", "error: --target 127.0.0.1:-1: port -1 is out of range"),
    ("127.0.0.1:x", "error: --target 127.0.0.1:x: port 'x' is not a number"),
    ("no.such.host.invalid:50051",
     "error: --target no.such.host.invalid:50051: cannot resolve host 'no.such.host.invalid'")])
def test_a_target_is_checked_before_it_is_dialled(home, capsys, target, said):
    assert main(["--target", target, "status"]) == 2
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("target", ["passthrough:///127.0.0.1:50051", "xds:///kairos",
                                    "unix:/tmp/kairos.sock"])
def test_a_target_of_another_grpc_resolver_is_left_to_grpc(target):
    """Review rev42 d-cli finding 4: passthrough:/// and xds:/// were refused as hosts that
    do not resolve."""
    assert cli.refused_target(target) is None


# -- what would fail only once Ray runs -----------------------------------------------------------

def up_args(*options: str):
    return parser(50051).parse_args(["up", "--store", "memory", *options])


@pytest.mark.parametrize("options, said", [
    (["--shards", "0"], "--shards must be 1..1024, got 0"),
    (["--shards", "-3"], "--shards must be 1..1024, got -3"),
    (["--shards", "100000"], "--shards must be 1..1024, got 100000"),
    (["--nodes", "0"], "--nodes must be 1..16"), (["--nodes", "1000"], "--nodes must be 1..16")])
def test_shard_and_node_counts_are_bounded(home, options, said):
    with pytest.raises(Refused, match=said) as refused:
        checked_inputs(up_args(*options))
    assert refused.value.status == 2


def test_start_bounds_its_shards_too(home):
    with pytest.raises(Refused, match="--shards must be 1..1024, got 0"):
        checked_inputs(parser(50051).parse_args(["start", "--address", "x:1", "--host",
                                                 local.LOOPBACK, "--shards", "0"]))


def test_a_tls_pair_that_is_not_pem_is_refused(home, tmp_path):
    files = pki.write(tmp_path)
    for key in ("server_key", "client_key"):
        files[key].chmod(0o600)
    assert checked_inputs(up_args("--tls-cert", str(files["server_cert"]), "--tls-key",
                                  str(files["server_key"]), "--tls-client-ca",
                                  str(files["ca"]))) is None
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    junk.chmod(0o600)
    with pytest.raises(Refused, match="refused by this host's OpenSSL as a certificate chain "
                                      "and its unencrypted"):
        checked_inputs(up_args("--tls-cert", str(junk), "--tls-key", str(junk)))
    with pytest.raises(Refused, match="refused by this host's OpenSSL"):  # another's key
        checked_inputs(up_args("--tls-cert", str(files["server_cert"]), "--tls-key",
                               str(files["client_key"])))
    with pytest.raises(Refused, match=f"--tls-client-ca {junk} holds no PEM certificate"):
        checked_inputs(up_args("--tls-cert", str(files["server_cert"]), "--tls-key",
                               str(files["server_key"]), "--tls-client-ca", str(junk)))


@pytest.mark.parametrize("command", [["up", "--host", "0.0.0.0"],
                                     ["start", "--address", "x:1"]])  # start's default host
def test_a_gateway_off_loopback_without_keys_is_refused_before_ray(home, monkeypatch, command):
    with pytest.raises(Refused) as refused:
        checked_inputs(parser(50051).parse_args([*command, "--store", "memory"]))
    assert str(refused.value).startswith(NO_KEYS.format("0.0.0.0"))
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)
    assert checked_inputs(parser(50051).parse_args([*command, "--store", "memory",
                                                    "--insecure"])) is None


def test_a_ray_temp_dir_that_cannot_be_made_is_refused(home, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(Refused, match=f"--ray-temp-dir {afile}/ray: Not a directory; choose "
                                      f"another with --ray-temp-dir DIR or RAY_TMPDIR"):
        made_temp_dir(str(afile / "ray"))
    assert made_temp_dir(str(tmp_path / "ray" / "tmp")) == str(tmp_path / "ray" / "tmp")


@pytest.mark.parametrize("db, refused", [("/abc", True), ("/1/2", True), ("/-1", True),
                                         ("/0", False), ("/15", False), ("", False),
                                         ("/", False)])
def test_a_redis_database_that_is_no_number_is_refused(home, db, refused):
    args = parser(50051).parse_args(["up", "--store", f"redis://kairos@h:6379{db}"])
    if not refused:
        assert checked_inputs(args) is None
        return
    with pytest.raises(Refused, match="the database after the host must be a number"):
        checked_inputs(args)


def test_a_refused_database_is_named_without_the_password_before_it():
    args = parser(50051).parse_args(["up", "--store", "redis://:s3cret@h:6379/abc"])
    with pytest.raises(Refused, match="the database after the host") as refused:
        checked_inputs(args)
    assert "s3cret" not in str(refused.value)


def test_up_stops_its_ray_when_joining_it_takes_too_long(home, tmp_path, monkeypatch, capsys):
    """ray.init retries a GCS that does not answer with no end, holding up.lock: `up` bounds
    it, stops the Ray it started and exits (the process exit is stubbed here)."""
    import ray

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)  # no token file is made
    monkeypatch.setattr(local, "start_ray", lambda run, dashboard_port: None)
    monkeypatch.setattr(local, "RAY_INIT_TIMEOUT_S", 0.3)
    stopped, statuses, exited = [], [], threading.Event()
    monkeypatch.setattr(local, "terminate", lambda run: stopped.append(run.ray_address) or (0, 0))

    def exit_(status: int) -> None:
        statuses.append(status)
        exited.set()

    def init(*args, **kwargs):  # hangs until the watchdog would have ended the process
        exited.wait(20)
        raise RuntimeError("the process has exited")

    monkeypatch.setattr(watchdog.os, "_exit", exit_)
    monkeypatch.setattr(ray, "init", init)
    port = local.free_port()
    saved = dict(os.environ)  # `up` sets Ray's environment in its own process
    try:
        main(["up", "--ray-port", str(port), "--port", "0", "--no-dashboard",
              "--console-port", "0", "--store", "memory"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert statuses == [1] and stopped[0] == f"127.0.0.1:{port}"
    assert (f"error: no Ray cluster answered at 127.0.0.1:{port} within 0.3 s; stopping what "
            f"it started") in capsys.readouterr().err
    assert not (home / "run.json").exists()


# -- tracebacks turned into errors ----------------------------------------------------------------

def test_a_bad_kairos_setting_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "KAIROS_GATEWAY_PORT": "abc", local.HOME_ENV: str(tmp_path)}
    done = subprocess.run([KAIROS, "status"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: KAIROS_GATEWAY_PORT must be an integer, got 'abc'"
    assert "usage: kairos" in subprocess.run([KAIROS, "--help"], capture_output=True, text=True,
                                             timeout=120).stdout


def test_a_missing_tls_ca_file_is_named(home, monkeypatch):
    monkeypatch.setenv("KAIROS_TLS_CA", "/nonexistent/ca.pem")
    with pytest.raises(SystemExit, match="error: KAIROS_TLS_CA /nonexistent/ca.pem: No such file"):
        main(["--target", "127.0.0.1:1", "status"])


def test_the_clients_tls_key_is_checked_as_a_secrets_file(home, tmp_path, monkeypatch):
    files = pki.write(tmp_path)
    files["client_key"].chmod(0o644)
    monkeypatch.setenv("KAIROS_TLS_CA", str(files["ca"]))
    monkeypatch.setenv("KAIROS_TLS_CERT", str(files["client_cert"]))
    monkeypatch.setenv("KAIROS_TLS_KEY", str(files["client_key"]))
    with pytest.raises(SystemExit, match="KAIROS_TLS_KEY .* has mode 0644: group or others"):
        main(["--target", "127.0.0.1:1", "status"])


EXPORT = ["--target", "127.0.0.1:1", "log", "export", "--since", "0", "--until", "1"]


def test_an_export_into_a_missing_folder_says_so(home, tmp_path, capsys):
    out = tmp_path / "missing" / "x.jsonl"
    assert main([*EXPORT, "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == \
        f"error: --out {out}: cannot write in {out.parent}: No such file or directory"


@pytest.mark.parametrize("options, said", [
    (["--max-records", "-5"], "argument --max-records: must be 0 (all) to 20,000, got -5"),
    (["--max-records", "20001"], "argument --max-records: must be 0 (all) to 20,000"),
    (["--since", "nan"], "argument --since: must be a time in years 1 to 9999 UTC, got 'nan'"),
    (["--until", "inf"], "argument --until: must be a time in years 1 to 9999 UTC, got 'inf'")])
def test_export_bounds_are_checked(home, tmp_path, capsys, options, said):
    with pytest.raises(SystemExit) as exited:
        main([*EXPORT, "--out", str(tmp_path / "x.jsonl"), *options])
    assert exited.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("command", [["down"], ["status"]])
def test_a_kairos_home_that_is_a_file_is_named(tmp_path, monkeypatch, command):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv(local.HOME_ENV, str(afile))
    with pytest.raises(SystemExit, match=f"error: {afile}.*KAIROS_HOME must be a directory"):
        main(command)


def test_a_run_record_that_is_a_directory_is_named(home):
    (home / "run.json").mkdir(parents=True)
    with pytest.raises(SystemExit, match=f"error: {home / 'run.json'}: Is a directory"):
        main(["status"])


# -- records without a token ----------------------------------------------------------------------

def test_down_leaves_alone_what_a_tokenless_records_sessions_run_that_is_not_ray(home, capsys):
    """A record an older `kairos up` wrote has no token: a session id of it that came back as
    an unrelated session within the same boot is not stopped, and `down` says so; one whose
    process is Ray's (a worker's title) still is."""
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-c", SLEEP, "ray::Shard"],
                              start_new_session=True)
    try:
        run = local.Run(ray_address=f"127.0.0.1:{local.free_port()}", temp_dir=str(home),
                        sessions=[unrelated.pid, worker.pid], started=time.time() - 60,
                        loopback=True, auth_mode="token")
        home.mkdir(parents=True)
        (home / "run.json").write_text(json.dumps(
            {k: v for k, v in dataclasses.asdict(run).items() if k != "token"}))
        assert main(["down"]) == 0
        captured = capsys.readouterr()
        assert f"processes {unrelated.pid} of its sessions are left running" in captured.err
        assert "Ray's 1 processes" in captured.out
        assert worker.wait(timeout=10) is not None
        assert unrelated.poll() is None
    finally:
        for proc in (unrelated, worker):
            proc.kill()
            proc.wait()


def test_down_never_counts_itself_or_its_shell_among_a_records_sessions(home):
    """Review rev42 d-cli finding 1: a record's session id reused by the shell `down` runs in
    made `down` (its command line names kairos) stop itself, so the record was never cleared
    and `up` kept saying Kairos ran."""
    run = local.Run(ray_address="127.0.0.1:1", temp_dir=str(home), sessions=[os.getsid(0)],
                    started=time.time() - 60, loopback=True, auth_mode="token")
    me = psutil.Process()
    taken = {p.pid for procs in local._members(run).values() for p in procs}
    assert not taken & {me.pid, *(p.pid for p in me.parents())}


# -- help and docs --------------------------------------------------------------------------------

def test_every_command_is_in_mains_docstring_and_shards_shows_its_default(capsys):
    commands = next(a for a in parser(50051)._actions if a.dest == "command").choices
    for name, sub in commands.items():
        subs = [a for a in sub._actions if a.dest.endswith("_command")]
        names = [f"{name} {s}" for a in subs for s in a.choices] if subs else [name]
        for full in names:
            assert f"kairos {full}" in cli.__doc__, full
    with pytest.raises(SystemExit):
        parser(50051).parse_args(["up", "--help"])
    assert "(default 4)" in capsys.readouterr().out
