"""Real redis-servers for the store tests: a plain one, and one that speaks only TLS with a
password (Debian's redis-server 7; the pip-shipped 6.2 has no TLS)."""
from __future__ import annotations

import pytest

from kairos.cluster.storage.redis_server import RedisServer, RedisTls
from kairos.cluster.storage.redis_store import RedisStore

from tests.support import pki

TLS_PASSWORD = "tls-secret"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def logs(redis_server, request):
    """The same decision log opened by two shards."""
    url = f"{redis_server.url}?prefix=dl{abs(hash(request.node.name))}"
    return RedisStore(url).decision_log("s0"), RedisStore(url).decision_log("s0")


@pytest.fixture(scope="session")
def pki_files(tmp_path_factory):
    return pki.write(tmp_path_factory.mktemp("pki"))


def tls_server(directory, pki_files, mutual: bool = False) -> RedisServer:
    """With `mutual`, clients must present a certificate from the CA."""
    admin = (pki_files["client_cert"], pki_files["client_key"]) if mutual else None
    return RedisServer(directory, password=TLS_PASSWORD, tls=RedisTls(
        pki_files["server_cert"], pki_files["server_key"], pki_files["ca"], admin_client=admin))


@pytest.fixture(scope="module")
def redis_tls_server(tmp_path_factory, pki_files):
    server = tls_server(tmp_path_factory.mktemp("redis-tls"), pki_files).start()
    yield server
    server.stop()
