"""`kairos up` refuses secret files others can read (Ray's token too, which it makes readable by
its user only), and never prints a store's password."""
from __future__ import annotations

import argparse
import os
import stat

import pytest

from kairos.cluster.cli import local
from kairos.cluster.cli.main import main, parser, up_message
from kairos.cluster.secret_files import SecretFileError

SECRET = "s3cr3t-Pw0rd"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A KAIROS_HOME of the test's own, and nothing started past the checks of files."""
    def started(*args, **kwargs):
        raise AssertionError("`kairos up` went past its checks of files")
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(local, "up_lock", started)
    return tmp_path / "home"


def _file(tmp_path, name, mode):
    path = tmp_path / name
    path.write_text("secret\n")
    os.chmod(path, mode)
    return str(path)


# `kairos start` checks the same before it joins any Ray cluster (none listens at port 1)
COMMANDS = [["up", "--no-dashboard"], ["start", "--address", "127.0.0.1:1"]]


@pytest.mark.parametrize("command", COMMANDS, ids=["up", "start"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_up_refuses_a_keys_file_others_can_read(tmp_path, home, capsys, mode, command):
    keys = _file(tmp_path, "keys.yaml", mode)
    assert main([*command, "--keys", keys]) == 2
    err = capsys.readouterr().err
    assert keys in err and f"{mode:04o}" in err and f"chmod 600 {keys}" in err
    assert not (home / "run.json").exists()


@pytest.mark.parametrize("command", COMMANDS, ids=["up", "start"])
def test_up_refuses_a_tls_key_others_can_read(tmp_path, home, capsys, command):
    cert = _file(tmp_path, "cert.pem", 0o644)  # a certificate is public: not checked
    key = _file(tmp_path, "key.pem", 0o644)
    assert main([*command, "--tls-cert", cert, "--tls-key", key]) == 2
    err = capsys.readouterr().err
    assert key in err and "0644" in err and f"chmod 600 {key}" in err and cert not in err


def test_a_secret_file_of_another_user_is_refused(tmp_path, home, monkeypatch, capsys):
    from kairos.cluster.cli import main as cli
    keys = _file(tmp_path, "keys.yaml", 0o600)
    monkeypatch.setattr(cli.os, "geteuid", lambda: os.stat(keys).st_uid + 1)
    assert main(["up", "--keys", keys, "--no-dashboard"]) == 2
    assert keys in capsys.readouterr().err


def test_a_private_keys_file_passes_the_check(tmp_path):
    from kairos.cluster.secret_files import check_secret_file
    check_secret_file(_file(tmp_path, "keys.yaml", 0o600), "--keys")
    check_secret_file(_file(tmp_path, "keys2.yaml", 0o400), "--keys")


def test_up_prints_the_store_without_its_password():
    args = argparse.Namespace(nodes=1, shards=4, store=f"redis://kairos:{SECRET}@redis:6379/0",
                              journal_policy="fsync", shard_endpoints=False,
                              shard_endpoint_ports=None)
    run = local.Run(ray_address="127.0.0.1:6380", temp_dir="/tmp/r", sessions=[], started=0,
                    loopback=True, auth_mode="token", gateways=["127.0.0.1:50051"])
    message = up_message(args, run)
    assert SECRET not in message and "store redis://***@redis:6379/0" in message


def test_up_help_shows_the_default_store_without_its_password(monkeypatch, capsys):
    monkeypatch.setenv("KAIROS_STORE", f"redis://:{SECRET}@redis:6379/0")
    with pytest.raises(SystemExit):
        parser(50051).parse_args(["up", "--help"])
    out = capsys.readouterr().out
    assert SECRET not in out and "redis://***@redis:6379/0" in out


def test_the_console_refuses_its_own_keys_file_once_others_can_read_it(home, capsys,
                                                                        monkeypatch):
    from kairos.cluster.console.server import CONSOLE_KEYS_FILE
    monkeypatch.delenv("KAIROS_API_KEYS", raising=False)
    home.mkdir(parents=True)
    own = home / CONSOLE_KEYS_FILE
    own.write_text("keys: []\n")
    os.chmod(own, 0o644)
    assert main(["--target", "127.0.0.1:1", "console", "--port", "8080"]) == 2
    assert str(own) in capsys.readouterr().err


@pytest.fixture
def ray_token(tmp_path, monkeypatch):
    """Where Ray's token is looked for: a home of the test's own (never the user's ~/.ray), a
    umask that lets others read what is made under it, and no Ray started past the checks."""
    def started(*args, **kwargs):
        raise AssertionError("`kairos up` went past Ray's token")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv(local.HOME_ENV, str(tmp_path / "kairos"))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(local, "start_ray", started)
    umask = os.umask(0o022)
    yield tmp_path / "user" / ".ray" / "auth_token"
    os.umask(umask)


@pytest.mark.parametrize("at_path", [False, True], ids=["default", "RAY_AUTH_TOKEN_PATH"])
def test_up_makes_rays_token_readable_by_this_user_only(ray_token, tmp_path, monkeypatch,
                                                         at_path):
    token = tmp_path / "elsewhere" / "token" if at_path else ray_token
    if at_path:
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert local.auth_mode() == "token"
    made = token.read_text()
    assert len(made) == 64
    if at_path:  # where Ray reads it from, not ~/.ray
        assert not ray_token.exists()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700  # made by Kairos
    assert local.auth_mode() == "token" and token.read_text() == made  # kept, not made anew


@pytest.mark.parametrize("given", ["TOKEN", "Token", " token\n", ""])
def test_token_mode_is_read_as_ray_reads_it_whatever_its_case(ray_token, monkeypatch, given):
    """Ray's token mode in any case (blank: unset, the default): the token is made, and
    refused once others may read it, as for `token` itself."""
    monkeypatch.setenv("RAY_AUTH_MODE", given)
    assert local.auth_mode() == "token"
    assert stat.S_IMODE(ray_token.stat().st_mode) == 0o600
    os.chmod(ray_token, 0o644)
    with pytest.raises(SecretFileError, match="has mode 0644"):
        local.auth_mode()


@pytest.mark.parametrize("at_path", [False, True], ids=["default", "RAY_AUTH_TOKEN_PATH"])
def test_up_refuses_a_ray_token_others_can_read(ray_token, tmp_path, monkeypatch, capsys,
                                                at_path):
    token = tmp_path / "token" if at_path else ray_token
    if at_path:
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("0" * 64)
    os.chmod(token, 0o644)
    free = [str(local.free_port()) for _ in range(2)]
    assert main(["up", "--no-dashboard", "--console-port", "0", "--ray-port", free[0],
                 "--port", free[1]]) == 2
    err = capsys.readouterr().err
    assert f"Ray's authentication token {token} has mode 0644" in err
    assert f"chmod 600 {token}" in err
    # older Kairos left it 0644: what else an upgrading user can do
    assert "delete it and `kairos up` makes a new one" in err
    assert "restart any Ray cluster that used it" in err and "set RAY_AUTH_TOKEN" in err


@pytest.mark.parametrize("setting", [{"RAY_AUTH_TOKEN": "0" * 64}, {"RAY_AUTH_MODE": "disabled"}],
                         ids=["RAY_AUTH_TOKEN", "disabled"])
def test_a_ray_token_file_others_can_read_is_left_alone_when_ray_does_not_read_it(
        ray_token, monkeypatch, setting):
    """Ray reads no token file with RAY_AUTH_TOKEN set or with authentication disabled: its
    mode refuses nothing, and it is kept as it is."""
    ray_token.parent.mkdir(parents=True)
    ray_token.write_text("1" * 64)
    os.chmod(ray_token, 0o644)
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert local.auth_mode() == setting.get("RAY_AUTH_MODE", "token")
    assert ray_token.read_text() == "1" * 64 and stat.S_IMODE(ray_token.stat().st_mode) == 0o644
