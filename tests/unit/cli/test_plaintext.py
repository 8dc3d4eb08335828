"""API keys never cross the network in clear unless the operator says so: a gateway off
loopback serves TLS or is told --insecure, a client sends plaintext only to this machine or
with KAIROS_INSECURE=1; every gateway checks its key files' modes; guessable keys are refused."""
from __future__ import annotations

import secrets
import uuid

import pytest

from kairos.cluster.cli import remote
from kairos.cluster.cli.checks import Refused, checked_inputs
from kairos.cluster.cli.main import main, parser
from kairos.cluster.gateway.actor import read_keys
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.server import Tls
from kairos.cluster.secret_files import SecretFileError
from tests.support import pki
from tests.unit.cli.test_cli import KEYS, fake_run
from tests.unit.cli.test_cli_checks import home  # noqa: F401 (a fixture)

OFF_LOOPBACK = ["10.0.0.5:50051", "gateway.example:50051", "dns:///gateway.example:50051",
                "ipv4:127.0.0.1:1,10.0.0.5:1", "xds:///kairos"]
ON_THIS_MACHINE = ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:1",
                   "unix:/tmp/kairos.sock"]


@pytest.fixture
def plaintext_env(monkeypatch):
    for name in (remote.INSECURE_ENV, *remote.TLS_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("command", [["up", "--host", "0.0.0.0"],
                                     ["start", "--address", "x:1"]])  # start's default host
def test_a_gateway_off_loopback_serves_tls_or_is_told_insecure(home, monkeypatch,  # noqa: F811
                                                               tmp_path, command):
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)
    args = [*command, "--store", "memory"]
    with pytest.raises(Refused) as refused:
        checked_inputs(parser(50051).parse_args(args))
    said = str(refused.value)
    assert said.startswith("error: refusing to serve plaintext gRPC on --host 0.0.0.0: API "
                           "keys") and "in clear" in said
    assert "--tls-cert" in said and "--insecure" in said and refused.value.status == 2
    assert checked_inputs(parser(50051).parse_args([*args, "--insecure"])) is None
    files = pki.write(tmp_path)
    files["server_key"].chmod(0o600)
    assert checked_inputs(parser(50051).parse_args(
        [*args, "--tls-cert", str(files["server_cert"]), "--tls-key",
         str(files["server_key"])])) is None


def test_kairos_up_on_loopback_still_needs_neither(home):  # noqa: F811
    assert checked_inputs(parser(50051).parse_args(["up", "--store", "memory"])) is None


@pytest.mark.parametrize("target", OFF_LOOPBACK)
def test_a_client_refuses_plaintext_off_this_machine(plaintext_env, target):
    with pytest.raises(SystemExit) as refused:
        remote.channel_to(target)
    said = str(refused.value.code)
    assert said.startswith(f"error: refusing plaintext gRPC to {target}: the API key")
    assert "KAIROS_TLS_CA" in said and "KAIROS_INSECURE=1" in said
    with pytest.raises(SystemExit):
        remote.channel_to(target, aio=True)  # the console's gateway client


def test_a_command_says_why_it_sends_nothing(plaintext_env, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--target", "10.0.0.5:50051", "status"])
    assert "refusing plaintext gRPC to 10.0.0.5:50051" in str(refused.value.code)


@pytest.mark.parametrize("target", ON_THIS_MACHINE)
def test_plaintext_on_this_machine_is_allowed(plaintext_env, target):
    remote.channel_to(target).close()


@pytest.mark.parametrize("target", OFF_LOOPBACK)
def test_plaintext_off_this_machine_when_told_or_tls(plaintext_env, monkeypatch, tmp_path,
                                                     target):
    monkeypatch.setenv(remote.INSECURE_ENV, "1")
    remote.channel_to(target).close()
    monkeypatch.setenv(remote.INSECURE_ENV, "0")  # only 1 says it
    with pytest.raises(SystemExit):
        remote.channel_to(target)
    files = pki.write(tmp_path)
    monkeypatch.setenv("KAIROS_TLS_CA", str(files["ca"]))
    remote.channel_to(target).close()


def test_every_gateway_checks_its_secret_files(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    keys.chmod(0o644)
    with pytest.raises(SecretFileError, match=f"the API keys file \\(--keys\\) {keys} has mode "
                                              "0644"):
        read_keys(str(keys), None)
    keys.chmod(0o600)
    assert read_keys(str(keys), None) == KEYS
    files = pki.write(tmp_path)
    files["server_key"].chmod(0o644)
    with pytest.raises(SecretFileError, match="the TLS private key \\(--tls-key\\) .* has mode "
                                              "0644"):
        Tls.from_files(str(files["server_cert"]), str(files["server_key"]))


@pytest.mark.parametrize("weak", ["a" * 16, "a" * 64, "ab" * 20, "abcdefghijklmnop",
                                  "0123456789012345", "9741acdf7147c8b4"])  # 64 random bits
def test_a_guessable_key_is_refused_saying_how_to_make_one(weak):
    with pytest.raises(ValueError) as refused:
        Auth.load(f"keys:\n  - {{key: '{weak}', scopes: [decide]}}\n")
    said = str(refused.value)
    assert "too easily guessed" in said and "secrets.token_urlsafe(32)" in said
    assert weak not in said


@pytest.mark.parametrize("make", [lambda: secrets.token_urlsafe(32),
                                  lambda: secrets.token_urlsafe(16),
                                  lambda: secrets.token_hex(16),
                                  lambda: str(uuid.uuid4())])
def test_random_keys_pass(make):
    for _ in range(200):  # random draws: no generator of 96 bits or more is ever refused
        assert Auth.load(f"keys:\n  - {{key: '{make()}', scopes: [decide]}}\n").enabled


@pytest.mark.parametrize("target", ["LOCALHOST:50051", "localhost.:50051", "Localhost:1"])
def test_loopback_names_are_loopback_whatever_their_case(target, monkeypatch):
    monkeypatch.delenv(remote.INSECURE_ENV, raising=False)
    assert remote.plaintext_refusal(target) is None


@pytest.mark.parametrize("target", ["198.51.100.9:106445", "198.51.100.9"])
def test_a_target_grpc_still_dials_is_refused_though_this_cannot_read_it(target, monkeypatch):
    """gRPC dials a port past 65535 modulo 65536, and a host alone on port 443."""
    monkeypatch.delenv(remote.INSECURE_ENV, raising=False)
    assert "refusing plaintext gRPC" in remote.plaintext_refusal(target)


def test_the_routed_client_refuses_plaintext_off_this_machine(monkeypatch):
    from kairos.cluster.routed import RoutedClient

    monkeypatch.delenv(remote.INSECURE_ENV, raising=False)
    with pytest.raises(ValueError, match="refusing plaintext gRPC to 198.51.100.9:50051"):
        RoutedClient("198.51.100.9:50051")
    monkeypatch.setenv(remote.INSECURE_ENV, "1")
    RoutedClient("198.51.100.9:50051").close()


def test_kairos_up_told_insecure_has_its_console_call_the_gateway_in_plaintext(
        monkeypatch, home):  # noqa: F811 (the fixture)
    """`kairos up --host <LAN address> --insecure` records that address for its console,
    which refused it, and `up` then stopped everything it had started."""
    import argparse

    from kairos.cluster.cli import console

    seen = {}

    def popen(command, env, **kwargs):
        seen.update(env)
        raise OSError("not started here")
    monkeypatch.setattr(console.subprocess, "Popen", popen)
    monkeypatch.delenv(remote.INSECURE_ENV, raising=False)
    args = argparse.Namespace(tls_client_ca=None, keys=None, tls_cert=None, tls_key=None,
                              insecure=True, console_port=0)
    run = fake_run([], 0.0, dashboard="")
    run.gateways = ["10.9.9.9:50051"]
    with pytest.raises(OSError, match="not started here"):
        console.spawn(args, run)
    assert seen.get(remote.INSECURE_ENV) == "1"
