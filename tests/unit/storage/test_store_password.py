"""A Redis store's password as each process that opens the store reads it: from the file
KAIROS_STORE_PASSWORD_FILE names, or from a URL that still holds one (an older Kairos's
controller hands its shards such a URL); a server that refuses the credentials says where the
password comes from, never the password."""
from __future__ import annotations

import subprocess
import time

import pytest

from kairos.cluster.storage.providers import STORE_PASSWORD_FILE_ENV, open_store, split_password
from kairos.cluster.storage import redis_server
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.store import StoreUnavailable, redact

PASSWORD = "s3cret+pw"


def password_server(password: str):
    """A module's fixture: a redis-server of its own that requires `password`."""
    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        redis_ = RedisServer(tmp_path_factory.mktemp("redis"), durable=False,
                             password=password).start()
        yield redis_
        redis_.stop()
    return server


server = password_server(PASSWORD)


@pytest.fixture
def password_file(tmp_path, monkeypatch):
    """The variable set, to a file holding `text`."""
    def written(text: str) -> str:
        path = tmp_path / "password"
        path.write_text(text + "\n")
        path.chmod(0o600)
        monkeypatch.setenv(STORE_PASSWORD_FILE_ENV, str(path))
        return str(path)
    monkeypatch.delenv(STORE_PASSWORD_FILE_ENV, raising=False)
    return written


def _refusal(url: str) -> str:
    with pytest.raises(StoreUnavailable) as refused:
        open_store(url).get_meta("k")
    return str(refused.value)


def test_a_node_without_the_password_file_is_told_to_set_it_on_every_node(server,
                                                                           password_file):
    said = _refusal(server.url)  # HELLO (NOAUTH) before any command
    assert f"{STORE_PASSWORD_FILE_ENV} is not set" in said
    assert "on every Ray node" in said


def test_a_wrong_password_says_which_file_it_came_from_and_not_the_password(server,
                                                                            password_file):
    path = password_file("not-the-s3cret")
    said = _refusal(server.url)  # WRONGPASS
    assert f"{STORE_PASSWORD_FILE_ENV} names {path}" in said and "on every Ray node" in said
    assert "not-the-s3cret" not in said and PASSWORD not in said


def test_a_url_that_holds_a_password_is_opened_with_it_though_the_file_is_set(
        server, password_file, caplog):
    """A cluster an older Kairos started: its controller passes shards the password in the
    URL, on nodes that have the variable too; that the file is not what was used is said."""
    password_file("not-the-s3cret")
    store = open_store(server.url.replace("//", "//:s3cret%2Bpw@"))
    store.put_meta("k", b"v")
    assert store.get_meta("k") == b"v"
    assert "the URL holds a password" in caplog.text and "s3cret" not in caplog.text


def test_a_percent_encoded_password_parameter_is_redacted():
    assert redact("redis://h/0?pass%77ord=s3cret") == "redis://h/0?pass%77ord=***"


def test_a_unix_socket_store_opens_with_and_without_a_password(tmp_path, monkeypatch):
    """`unix:///path` went through urlunparse as unix:/path, which redis-py refused as no
    Redis URL; and a socket's database (?db=) was an unknown parameter (review rev42
    d-storepw2 finding 1)."""
    monkeypatch.delenv(STORE_PASSWORD_FILE_ENV, raising=False)
    socket = tmp_path / "r.sock"
    server = subprocess.Popen([redis_server.EXECUTABLE, "--port", "0", "--unixsocket",
                               str(socket), "--dir", str(tmp_path), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket.exists():
                break
            time.sleep(0.025)
        for url in (f"unix://{socket}", f"unix://{socket}?prefix=k&db=1"):
            store = open_store(url)
            store.put_meta("k", url.encode())
            assert store.get_meta("k") == url.encode()
        with pytest.raises(ValueError, match="a socket's"):
            open_store("redis://h/0?db=1")
    finally:
        server.terminate()
        server.wait()


@pytest.mark.parametrize("url, password", [
    ("redis://h/0?password=s3cret+pw", "s3cret pw"),  # parse_qs: "+" is a space
    ("redis://h/0?password=s3cret%2Bpw&prefix=k", "s3cret+pw"),
    ("redis://:s3cret+pw@h/0", "s3cret+pw"),  # the credentials: no "+" decoded
    ("redis://:a@h/0?password=b", "a"),  # the credentials win over the parameter
    ("redis://h/0?pass%77ord=s3cret", "s3cret"),  # a name parse_qs decodes: refused as well
])
def test_split_password_reads_the_password_as_redis_py_does(url, password):
    from redis.connection import parse_url

    assert split_password(url)[1] == password == parse_url(url)["password"]
