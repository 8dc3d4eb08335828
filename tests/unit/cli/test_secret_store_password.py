"""`kairos start` and `kairos up` check the Redis store's password in the file
KAIROS_STORE_PASSWORD_FILE names (a secret's file, checked as the others are) and pass the URL
on without it: each process that opens the store puts it in from the file itself, so that
nothing before them (kairos-head.sh, a shell, `env`) holds it on a command line or in an
environment, and no Ray task's arguments do."""
from __future__ import annotations

import os

import pytest

from kairos.cluster.cli import main as cli
from kairos.cluster.storage.providers import STORE_PASSWORD_FILE_ENV
from kairos.cluster.storage.providers import open_store
from tests.unit.cli.test_cli import KEYS

PASSWORD = "p@ss/w#rd?:%"  # what a URL would cut short unencoded
STORE = "redis://kairos-redis:6379/0?prefix=kairos"
COMMANDS = [["up", "--no-dashboard"], ["start", "--address", "127.0.0.1:1"]]


@pytest.fixture
def password_file(tmp_path, monkeypatch):
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")  # a Secret made --from-file keeps the file's newline
    path.chmod(0o600)
    monkeypatch.setenv("KAIROS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(path))
    return path


def parsed(argv: list[str]):
    from kairos.cluster.settings import GATEWAY_PORT
    return cli.parser(GATEWAY_PORT).parse_args(argv)


@pytest.mark.parametrize("command", COMMANDS, ids=["up", "start"])
def test_the_store_url_stays_without_the_password_which_opening_it_reads_from_the_file(
        password_file, monkeypatch, command):
    monkeypatch.setenv("KAIROS_STORE", STORE)
    store = parsed(command).store
    assert store == STORE
    client = open_store(store).r  # no connection is made
    assert client.connection_pool.connection_kwargs["password"] == PASSWORD
    assert client.connection_pool.connection_kwargs["host"] == "kairos-redis"
    # --store too, and TLS's scheme
    store = parsed([*command, "--store", "rediss://kairos-redis:6379/0"]).store
    assert store == "rediss://kairos-redis:6379/0"
    assert open_store(store).r.connection_pool.connection_kwargs["password"] == PASSWORD


@pytest.mark.parametrize("user", ["kairos", "app%40team"])
def test_the_password_goes_after_a_redis_acl_user_in_the_url(password_file, user):
    """The README's ACL user with the password from the file: every `@` was refused."""
    store = parsed(["start", "--address", "x:1", "--store",
                    f"rediss://{user}@kairos-redis:6379/0?prefix=kairos"]).store
    assert store == f"rediss://{user}@kairos-redis:6379/0?prefix=kairos"
    kwargs = open_store(store).r.connection_pool.connection_kwargs  # no connection is made
    assert kwargs["username"] == user.replace("%40", "@") and kwargs["password"] == PASSWORD
    assert kwargs["host"] == "kairos-redis"


def test_kairos_start_hands_the_runtime_the_store_without_the_password(password_file,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("KAIROS_STORE", STORE)
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)  # its gateways are on 0.0.0.0
    given = []
    monkeypatch.setattr(cli, "_start_kairos",
                        lambda args, *rest, **kwargs: given.append(args.store) or [])
    assert cli.main(["start", "--address", "127.0.0.1:1", "--insecure"]) == 0
    assert given == [STORE]
    assert open_store(given[0]).r.connection_pool.connection_kwargs["password"] == PASSWORD
    assert PASSWORD not in capsys.readouterr().out  # "store redis://***@kairos-redis..."


def test_without_the_setting_the_store_is_as_given(monkeypatch):
    monkeypatch.delenv(STORE_PASSWORD_FILE_ENV, raising=False)
    monkeypatch.setenv("KAIROS_STORE", STORE)
    assert parsed(COMMANDS[1]).store == STORE


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        parsed(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert PASSWORD not in err and "p%40ss" not in err
    return err


@pytest.mark.parametrize("command", COMMANDS, ids=["up", "start"])
def test_a_password_file_others_can_read_is_refused(password_file, capsys, command):
    password_file.chmod(0o644)
    err = _refused(capsys, [*command, "--store", STORE])
    assert f"{STORE_PASSWORD_FILE_ENV} {password_file} has mode 0644" in err


@pytest.mark.parametrize("store", ["memory", "/var/lib/kairos"])
def test_a_store_the_password_cannot_go_into_is_refused(password_file, capsys, store):
    assert "must be a redis://, rediss:// or unix:// URL" in _refused(
        capsys, ["start", "--address", "x:1", "--store", store])


@pytest.mark.parametrize("store, words, status", [
    ("redis://:other@kairos-redis:6379/0", "--store redis://***@kairos-redis:6379/0 holds a "
                                           "password", 2),
    ("redis://kairos:other@kairos-redis:6379/0", "holds a password", 2),
    ("redis://kairos:p@ss@kairos-redis:6379/0", "holds a password", 2),  # "@" unencoded
    ("redis://kairos-redis:6379/0?user=a@b", "not a valid Redis URL", 1),
])
def test_a_store_url_with_a_password_besides_the_file_is_refused(password_file, capsys,
                                                                  monkeypatch, store, words,
                                                                  status):
    monkeypatch.setattr(cli, "_start_kairos", lambda *a, **k: pytest.fail("started"))
    assert cli.main(["start", "--address", "x:1", "--store", store]) == status
    err = capsys.readouterr().err
    assert words in err and "other" not in err and "p@ss" not in err


def test_a_missing_or_empty_password_file_is_refused(password_file, capsys):
    password_file.write_text("\n")
    assert "is empty" in _refused(capsys, ["start", "--address", "x:1", "--store", STORE])
    os.unlink(password_file)
    assert f"{password_file}: No such file" in _refused(
        capsys, ["start", "--address", "x:1", "--store", STORE])


def test_other_commands_do_not_read_it(password_file, monkeypatch):
    password_file.chmod(0o644)  # refused by up and start, never read by status
    assert parsed(["status"]).command == "status"
