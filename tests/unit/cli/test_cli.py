"""The `kairos` command line, as a user runs it.

`catalog validate`, `demo --local`, what `status`, `demo` and `down` say when nothing runs and
what the commands say when a gateway refuses a call UNAVAILABLE (Kairos runs), whatever form
of gRPC target names it, or serves TLS to a client that does not trust it, a stale record,
a second `up`, busy ports, and that `down` stops exactly the process sessions `up` recorded
that carry its token (stand-ins for Ray's processes). The real `kairos up` ...
`kairos down` runs in the cluster tier (tests/cluster/test_kairos_up.py).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest

from kairos.core.catalog import default_catalog_text
from kairos.cluster.cli import demo, local
from kairos.cluster.cli.main import NOT_RUNNING, main, parser, up_message
from kairos.cluster.cli.remote import TLS_ENV, tls_hint
from kairos.cluster.storage.redis_server import free_port

from tests.support import pki

KAIROS = str(Path(sys.executable).parent / "kairos")  # the installed console script
KEYS = "keys:\n- key: 0123456789abcdef0123\n  scopes: [admin]\n"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A KAIROS_HOME of the test's own."""
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


# -- no cluster ----------------------------------------------------------------------------------

def test_catalog_validate_says_ok_with_what_the_catalog_holds(default_yaml):
    done = subprocess.run([KAIROS, "catalog", "validate", str(default_yaml)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{default_yaml}: ok — catalog 'omni-retail'")
    assert "49 actions" in done.stdout and done.stderr == ""


def test_catalog_validate_names_file_line_and_column_and_exits_1(tmp_path, default_yaml,
                                                                 capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(default_yaml.read_text().replace('applicability: "since_cart', 'applicability: "sinc_cart',
                                                    1))
    missing = tmp_path / "missing.yaml"
    assert main(["catalog", "validate", str(default_yaml), str(bad), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert "default.yaml: ok" in out
    errors = err.splitlines()
    assert errors[0].startswith(f"error: {bad}:") and "unknown name 'sinc_cart" in errors[0]
    assert errors[0].split(":")[2].isdigit() and errors[0].split(":")[3].isdigit()  # line:col
    assert errors[1] == f"error: {missing}: No such file or directory"


def test_demo_local_replays_the_journey_in_process(capsys):
    assert main(["demo", "--local"]) == 0
    out = capsys.readouterr().out
    assert "Kairos demo: customer 'ana'" in out
    assert "call_started" in out and "call_center" in out


# how gRPC takes one TCP address: host:port, and with a scheme (cluster/cli/targets.py)
TARGET_FORMS = ["{}", "ipv4:{}", "dns:///{}"]


@pytest.mark.parametrize("form", TARGET_FORMS)
@pytest.mark.parametrize("command", [["status"], ["demo"], ["catalog", "push"]])
def test_commands_say_plainly_that_nothing_runs(command, form, home, default_yaml, capsys):
    target = form.format(f"127.0.0.1:{free_port()}")
    argv = ["--target", target, *command] + ([str(default_yaml)] if "push" in command else [])
    began = time.monotonic()
    assert main(argv) == 1
    assert time.monotonic() - began < 15
    out, err = capsys.readouterr()
    assert err.strip() == (f"Kairos is not running: no gateway answers at {target} "
                           f"(`kairos up` starts one)")


REFUSAL = "no shard prepared catalog 2026.12.3: kairos-shard-0001 did not answer"


class Unavailable(grpc.GenericRpcHandler):
    """A gateway that answers every call UNAVAILABLE with its reason, as Kairos's does when a
    catalog switch was prepared by no shard or the store refuses a write."""

    def service(self, handler_call_details):
        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)
        return grpc.unary_unary_rpc_method_handler(refuse)  # streaming calls end the same


@pytest.mark.parametrize("form", TARGET_FORMS)
@pytest.mark.parametrize("command", [
    ["status"], ["demo"], ["catalog", "push", "CATALOG"], ["catalog", "rollback", "--to", "1"],
    ["drain", "n1"], ["log", "export", "--since", "0", "--until", "1", "--out", "OUT"]])
def test_commands_print_the_reason_a_running_gateway_gives_for_unavailable(
        command, form, home, tmp_path, default_yaml, capsys):
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Unavailable()])
    target = form.format(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
    server.start()
    files = {"CATALOG": str(default_yaml), "OUT": str(tmp_path / "log.jsonl")}
    try:
        assert main(["--target", target, *(files.get(a, a) for a in command)]) == 1
    finally:
        server.stop(None)
    assert capsys.readouterr().err.strip() == f"error: {target}: UNAVAILABLE: {REFUSAL}"


def test_a_unix_socket_with_nothing_there_gets_grpcs_own_words(home, tmp_path, capsys):
    """No TCP address to look at: what gRPC said, not a guess that Kairos does not run."""
    target = f"unix:{tmp_path / 'gateway.sock'}"
    assert main(["--target", target, "status"]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: {target}: UNAVAILABLE: failed to connect to all addresses")


@pytest.fixture
def tls_gateway(tmp_path, monkeypatch):
    """A gateway that serves TLS only (its certificate signed by pki's `ca`), answering every
    call UNAVAILABLE; the client's TLS settings start unset."""
    files = pki.write(tmp_path)
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)
    # `demo` waits this long for a connection a TLS mismatch never makes (5 s by default);
    # one with the right CA is ready in milliseconds
    monkeypatch.setattr(demo, "READY_TIMEOUT_S", 1.0)
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Unavailable()])
    credentials = grpc.ssl_server_credentials(
        [(files["server_key"].read_bytes(), files["server_cert"].read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield files, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("command", [["status"], ["demo"]])
@pytest.mark.parametrize("ca", [None, "foreign_ca"], ids=["plaintext", "another CA"])
def test_a_client_that_cannot_talk_to_a_tls_gateway_is_told_to_check_its_tls_settings(
        tls_gateway, home, monkeypatch, capsys, command, ca):
    files, target = tls_gateway
    if ca:
        monkeypatch.setenv("KAIROS_TLS_CA", str(files[ca]))
    assert main(["--target", target, *command]) == 1
    err = capsys.readouterr().err
    assert not err.startswith(NOT_RUNNING) and f"error: {target}: " in err
    assert f"({tls_hint()})" in err
    assert "does the gateway serve TLS" in err and "KAIROS_TLS_CA" in err
    monkeypatch.setenv("KAIROS_TLS_CA", str(files["ca"]))  # the right CA: the gateway's words
    assert main(["--target", target, *command]) == 1
    assert capsys.readouterr().err.strip() == f"error: {target}: UNAVAILABLE: {REFUSAL}"


def test_down_with_nothing_recorded(home, capsys):
    assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"Kairos is not running (nothing recorded in {home / 'run.json'})")


def fake_run(sessions: list[int], started: float, **fields) -> local.Run:
    run = local.Run(ray_address=f"127.0.0.1:{free_port()}", temp_dir=tempfile.gettempdir(),
                    sessions=sessions, started=started, loopback=True, auth_mode="token",
                    gateways=[f"127.0.0.1:{free_port()}"], **fields)
    local.write_run(run)
    return run


def test_down_removes_the_record_of_a_kairos_whose_processes_are_gone(home, capsys):
    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()
    fake_run([gone.pid], time.time() - 60)
    assert main(["down"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Kairos is not running: the processes of the Kairos started")
    assert not (home / "run.json").exists()
    assert main(["down"]) == 0  # and again: nothing recorded


SLEEP = "import time; time.sleep(300)"
# a Ray worker's stand-in: its process title hides its environment, and so the run's token
WORKER = ("import os, subprocess, sys, time; "
          f"env = {{k: v for k, v in os.environ.items() if k != {local.TOKEN_ENV!r}}}; "
          f"subprocess.Popen([sys.executable, '-c', {SLEEP!r}], env=env); time.sleep(300)")


def sleeper(token: str = "", code: str = SLEEP) -> subprocess.Popen:
    """A process in a session of its own, with `token` in its environment as the processes
    `kairos up` starts have the run's."""
    env = {k: v for k, v in os.environ.items() if k != local.TOKEN_ENV}
    if token:
        env[local.TOKEN_ENV] = token
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def test_a_second_up_refuses_and_down_stops_exactly_the_recorded_sessions(home, capsys):
    """Stand-ins for Ray's processes: `up` sees them and leaves them alone; `down` stops the
    recorded session's processes, the token's carrier and a worker without it, and no other
    process (a bystander in another session)."""
    started, token = time.time() - 1, secrets.token_hex(16)
    ours, bystander = sleeper(token, WORKER), sleeper(token)
    deadline = time.monotonic() + 30
    while not psutil.Process(ours.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = psutil.Process(ours.pid).children()[0]
    try:
        run = fake_run([ours.pid], started, token=token)
        assert main(["up", "--port", "0"]) == 1
        assert "Kairos is already running (started" in capsys.readouterr().err
        assert ours.poll() is None and json.loads((home / "run.json").read_text())["sessions"] \
            == run.sessions
        began = time.monotonic()
        assert main(["down"]) == 0
        assert time.monotonic() - began < 15
        out = capsys.readouterr().out
        assert out.startswith(f"Kairos is down: Ray's GCS at {run.ray_address} was gone")
        assert "Ray's 2 processes" in out
        assert ours.wait(timeout=5) is not None
        with contextlib.suppress(psutil.NoSuchProcess):  # or a zombie nobody reaps here
            assert worker.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None
        assert not (home / "run.json").exists()
    finally:
        with contextlib.suppress(psutil.Error):
            worker.kill()
        for proc in (ours, bystander):
            proc.kill()
            proc.wait()


def test_a_recorded_session_id_that_came_back_as_another_session_is_left_alone(home, capsys):
    """The processes of a run are gone (a reboot without `kairos down`, say) and a terminal's
    session got one of its ids: `down` says Kairos is not running and stops nothing, `up` does
    not take it for a Kairos running."""
    terminal = sleeper()
    try:
        fake_run([terminal.pid], time.time() - 3600)
        assert main(["down"]) == 0
        assert capsys.readouterr().out.startswith("Kairos is not running: the processes of")
        assert terminal.poll() is None and not (home / "run.json").exists()
        fake_run([terminal.pid], time.time() - 3600)
        with socket.socket() as busy:  # `up` then stops at the ports, having started nothing
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert main(["up", "--ray-port", str(port), "--port", "0", "--no-dashboard"]) == 1
        assert f"in use on this machine: port {port} (Ray)" in capsys.readouterr().err
        assert terminal.poll() is None
    finally:
        terminal.kill()
        terminal.wait()


def test_a_record_without_a_token_is_stale_after_a_reboot(home):
    """A record an older `kairos up` wrote (no token): its sessions' processes that run Ray are
    still found (its Kairos may be running), unless it was written before the machine last
    started."""
    # a Ray worker's stand-in: its process title
    older = subprocess.Popen([sys.executable, "-c", SLEEP, "ray::Shard"], start_new_session=True)
    try:
        for started, found in ((time.time() - 1, [older.pid]), (psutil.boot_time() - 60, [])):
            record = {field: value for field, value
                      in dataclasses.asdict(fake_run([older.pid], started)).items()
                      if field != "token"}
            (home / "run.json").write_text(json.dumps(record))
            assert [proc.pid for proc in local.processes(local.read_run())] == found
    finally:
        older.kill()
        older.wait()


def test_up_refuses_ports_in_use_and_starts_nothing(home, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["up", "--ray-port", str(port), "--port", "0", "--no-dashboard"]) == 1
    assert f"in use on this machine: port {port} (Ray)" in capsys.readouterr().err
    assert not (home / "run.json").exists()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
@pytest.mark.parametrize("host", ["::", "::1"])
def test_up_checks_an_ipv6_gateway_address_with_an_ipv6_socket(home, capsys, host,
                                                              monkeypatch):
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)  # a gateway off loopback needs keys
    with socket.socket() as busy, socket.socket(socket.AF_INET6) as busy_v6:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        busy_v6.bind(("::1", 0))
        busy_v6.listen()
        assert not local.port_free(host, busy_v6.getsockname()[1])
        gateway = free_port()
        # a console port of its own: the user's Kairos may hold the default 8080
        assert main(["up", "--host", host, "--ray-port", str(port), "--port", str(gateway),
                     "--no-dashboard", "--console-port", str(free_port()), "--insecure"]) == 1
    err = capsys.readouterr().err
    assert f"in use on this machine: port {port} (Ray);" in err and "gateway" not in err
    assert local.port_free(host, gateway) and not (home / "run.json").exists()


def test_up_refuses_a_store_url_that_cannot_work_and_starts_nothing(home, capsys):
    store = "rediss://:pw-secret@redis.svc:6379/0?ssl_ca_certs=/nowhere/ca.pem"
    assert main(["up", "--store", store, "--port", "0", "--no-dashboard"]) == 1
    err = capsys.readouterr().err
    assert "'/nowhere/ca.pem' is not a readable file on this node" in err
    assert "pw-secret" not in err and not (home / "run.json").exists()


def test_up_refuses_a_console_port_in_use(home, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["up", "--ray-port", str(local.free_port()), "--port", "0",
                     "--no-dashboard", "--console-port", str(port)]) == 1
    assert f"in use on this machine: port {port} (the console)" in capsys.readouterr().err
    assert not (home / "run.json").exists()


OWN = ": each needs a port of its own"


def _distinct_ports(count: int) -> list[int]:
    """`count` ports free on loopback, each unlike the others and the first's next: drawn while
    those before are held (free_port's draws, each let go at once, gave the dashboard and the
    console the same port on a busy machine, and the refusal named them, not the one given)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket())
            s.bind((local.LOOPBACK, 0))
            drawn = s.getsockname()[1]
            if not ports or drawn != ports[0] + 1:
                ports.append(drawn)
        return ports


@pytest.mark.parametrize("given, said", [
    ({"--console-port": "A", "--port": "A"}, "--console-port and --port are both port A" + OWN),
    ({"--dashboard-port": "A", "--ray-port": "A"},
     "--ray-port and --dashboard-port are both port A" + OWN),
    ({"--nodes": "2", "--port": "A", "--console-port": "A+1"},
     "--console-port and --port + 1 are both port A+1" + OWN),
    ({"--port": "A", "--shard-endpoint-ports": "A-A+1"},
     "--port A is within --shard-endpoint-ports A-A+1")])
def test_up_refuses_a_port_given_for_two_things_and_starts_nothing(home, capsys, monkeypatch,
                                                                   given, said):
    def started():
        raise AssertionError("`kairos up` went past its checks of options")
    monkeypatch.setattr(local, "up_lock", started)
    a, *others = _distinct_ports(5)

    def port(text: str) -> str:
        return text.replace("A+1", str(a + 1)).replace("A", str(a))
    options = {**dict(zip(("--ray-port", "--dashboard-port", "--console-port", "--port"),
                          map(str, others))),
               **{option: port(value) for option, value in given.items()}}
    assert main(["up", *(x for pair in options.items() for x in pair)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {port(said)}"


WORKERS = "Ray's worker ports 10002-19999, one of which each Ray worker takes"
A_PORT = ": choose a port outside them"


@pytest.mark.parametrize("given, said", [
    (["--ray-port", "16391"], f"port 16391 (--ray-port) is within {WORKERS}{A_PORT}"),
    (["--port", "10002"], f"port 10002 (--port) is within {WORKERS}{A_PORT}"),
    (["--nodes", "2", "--port", "10001"], f"port 10002 (--port + 1) is within {WORKERS}{A_PORT}"),
    (["--console-port", "19999"], f"port 19999 (--console-port) is within {WORKERS}{A_PORT}"),
    (["--dashboard-port", "12000"], f"port 12000 (--dashboard-port) is within {WORKERS}{A_PORT}"),
    (["--shard-endpoint-ports", "19990-20010"],
     f"--shard-endpoint-ports 19990-20010 overlaps {WORKERS}: choose ports outside them")],
    ids=["ray", "gateway", "second gateway", "console", "dashboard", "shard endpoints"])
def test_up_refuses_a_port_among_rays_worker_ports_and_starts_nothing(home, capsys, monkeypatch,
                                                                      given, said):
    """A Ray worker (a shard, a gateway, any task) serves on a port of `ray start`'s worker
    range: `ray start` fails on a GCS port there, and takes any other port there at random."""
    def started():
        raise AssertionError("`kairos up` went past its checks of options")
    monkeypatch.setattr(local, "up_lock", started)
    options = [x for option, port in zip(("--ray-port", "--dashboard-port", "--console-port",
                                          "--port"), _distinct_ports(4))
               for x in (option, str(port))]
    assert main(["up", *options, *given]) == 2  # the last of an option given twice counts
    assert capsys.readouterr().err.strip() == f"error: {said}"


def test_rays_worker_ports_are_those_ray_start_uses():
    from ray.scripts.scripts import start
    defaults = {p.name: p.default for p in start.params}
    assert local.RAY_WORKER_PORTS == (defaults["min_worker_port"], defaults["max_worker_port"])


def test_up_says_the_console_did_not_start_when_another_process_holds_its_port(home):
    """Something answering on the console's port is not the console: one that could not bind
    it exits, and `kairos up` says so rather than report a console that is not running."""
    from kairos.cluster.cli import console
    args = argparse.Namespace(tls_client_ca=None, keys=None, tls_cert=None, tls_key=None,
                              insecure=False)
    run = fake_run([], time.time(), dashboard="")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        args.console_port = other.getsockname()[1]
        with pytest.raises(local.StartFailed, match="(?s)the console did not start.*in use"):
            console.spawn(args, run)
    assert not run.console


# -- a real `kairos up` --------------------------------------------------------------------------


@pytest.mark.parametrize("given,error", [
    ("20100-20163", None), ("20100", None), ("20163-20100", "the low one first"),
    ("80-90", "within 1024-65535"), ("2000-9000", "at most 1024 ports"),
    ("a-b", "must be LOW-HIGH")])
def test_shard_endpoint_ports_are_a_bounded_range(home, capsys, given, error):
    if error is None:
        args = parser(50051).parse_args(["up", "--shard-endpoint-ports", given])
        low, _, high = given.partition("-")
        assert args.shard_endpoint_ports == (int(low), int(high or low))
        return
    with pytest.raises(SystemExit):
        main(["up", "--shard-endpoint-ports", given])
    assert error in capsys.readouterr().err and not (home / "run.json").exists()


def test_up_says_where_shard_endpoints_serve():
    run = local.Run(ray_address="127.0.0.1:6380", temp_dir="/tmp/r", sessions=[], started=0,
                    loopback=True, auth_mode="token", gateways=["127.0.0.1:50051"])
    ranged = parser(50051).parse_args(["up", "--shard-endpoint-ports", "20100-20110"])
    assert "each shard serves its own endpoint (ports 20100-20110" in up_message(ranged, run)
    assert "its own endpoint (free ports" in up_message(
        parser(50051).parse_args(["up", "--shard-endpoints"]), run)
    assert "endpoint" not in up_message(parser(50051).parse_args(["up"]), run)


@pytest.mark.parametrize("command", [["up"], ["start", "--address", "127.0.0.1:1"]])
def test_up_and_start_reach_ray_init(command, monkeypatch):
    """What both commands do before joining Ray (up passes no --ray-wait: its own Ray answers)
    runs through; ray.init is where this test stops them."""
    import ray

    from kairos.cluster.cli import main as cli

    class Reached(Exception):
        pass

    def init(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(ray, "init", init)
    args = parser(50051).parse_args(command)
    with pytest.raises(Reached):
        cli._start_kairos(args, "127.0.0.1:1", None, consecutive=command == ["up"],
                          ray_wait_s=getattr(args, "ray_wait", None))


@pytest.mark.parametrize("host, node, shown", [
    ("127.0.0.1", "10.0.0.5", "127.0.0.1:50051"), ("0.0.0.0", "10.0.0.5", "10.0.0.5:50051"),
    ("", "10.0.0.5", "10.0.0.5:50051"), ("::", "fd00::5", "[fd00::5]:50051"),
    ("::1", "fd00::5", "[::1]:50051"), ("0.0.0.0", None, "")])
def test_a_gateway_is_shown_where_it_is_reached(host, node, shown):
    from kairos.cluster.control.endpoints import endpoint
    assert endpoint(host, node, 50051) == shown


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`kairos demo --local | head -1`: the rest of the output had nowhere to go, and Python
    printed a BrokenPipeError traceback (review rev42 walk finding 6)."""
    code = ("from kairos.cluster.cli.main import main\n"
            "for _ in range(60):  # past a pipe's 64 KiB, so the writer meets the reader gone\n"
            "    main(['demo', '--local'])")
    done = subprocess.run(["bash", "-c", f"{sys.executable} -c \"{code}\" | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("Kairos demo") and "Traceback" not in done.stderr, done.stderr


def test_a_command_run_with_stdout_closed_still_succeeds(tmp_path):
    """`kairos catalog validate FILE >&-`: Python starts with sys.stdout None, and the flush
    meant for a reader that left failed the command (review rev42 d-late finding 3)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(default_catalog_text())
    code = "import sys; from kairos.cluster.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(["bash", "-c", f'{sys.executable} -c "{code}" catalog validate '
                                         f'{catalog} >&-'], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
