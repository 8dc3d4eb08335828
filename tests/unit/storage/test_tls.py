"""The Redis store over TLS (`rediss://`), against a real redis-server that speaks only TLS:
the server's certificate is verified, a client certificate is presented where the server
asks for one, and a URL that cannot work is refused when the store opens, naming what is
wrong and never the password."""
from __future__ import annotations

import pytest

from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable

from tests.unit.storage.conftest import TLS_PASSWORD, tls_server


def _url(server, **parameters) -> str:
    query = "&".join(f"{name}={value}" for name, value in parameters.items())
    return f"rediss://:{TLS_PASSWORD}@127.0.0.1:{server.port}/0?{query}"


def test_a_store_that_trusts_the_servers_ca_works_and_plain_redis_is_refused(
        redis_tls_server, pki_files):
    store = open_store(_url(redis_tls_server, ssl_ca_certs=pki_files["ca"], prefix="tls"))
    store.put(1, "ana", b"home")
    assert store.get(1, "ana") == b"home"
    with redis_tls_server.client() as admin:  # on the server, under the prefix
        assert admin.hget("tls:c:1", "ana") == b"home"
    plain = open_store(f"redis://:{TLS_PASSWORD}@127.0.0.1:{redis_tls_server.port}/0")
    with pytest.raises(StoreUnavailable, match="redis: reading a customer"):
        plain.get(1, "ana")


def test_a_server_certificate_from_another_ca_is_refused(redis_tls_server, pki_files, caplog):
    store = open_store(_url(redis_tls_server, ssl_ca_certs=pki_files["foreign_ca"]))
    with pytest.raises(StoreUnavailable, match="redis: writing customers") as refused:
        store.put(1, "ana", b"x")
    assert "certificate verify failed" in str(refused.value.__cause__ or refused.value)
    assert TLS_PASSWORD not in str(refused.value) + repr(store) + caplog.text


def test_mutual_tls_needs_a_client_certificate_from_the_ca(tmp_path, pki_files):
    with tls_server(tmp_path, pki_files, mutual=True) as server:
        anonymous = open_store(_url(server, ssl_ca_certs=pki_files["ca"]))
        with pytest.raises(StoreUnavailable):
            anonymous.put(1, "ana", b"x")
        foreign = open_store(_url(server, ssl_ca_certs=pki_files["ca"],
                                  ssl_certfile=pki_files["foreign_client_cert"],
                                  ssl_keyfile=pki_files["foreign_client_key"]))
        with pytest.raises(StoreUnavailable):
            foreign.put(1, "ana", b"x")
        known = open_store(_url(server, ssl_ca_certs=pki_files["ca"],
                                ssl_certfile=pki_files["client_cert"],
                                ssl_keyfile=pki_files["client_key"]))
        known.put(1, "ana", b"x")
        journal = known.journal("kairos-shard-0000")
        assert journal.append([("event", 1, "ana", 1)]) == 1


@pytest.mark.parametrize("query, reason", [
    ("sslcacerts=/etc/ca.pem", "parameter 'sslcacerts' is unknown"),
    ("ssl_ca_certs=/nowhere/ca.pem", "'/nowhere/ca.pem' is not a readable file on this node"),
    ("ssl_cert_reqs=maybe", "parameter 'ssl_cert_reqs' must be none, optional or required"),
    ("prefix=a&prefix=b", "parameter 'prefix' must be given once"),
    ("ssl_cert_reqs=none&ssl_cert_reqs=none", "parameter 'ssl_cert_reqs' is given 2 times"),
])
def test_a_rediss_url_that_cannot_work_is_refused_at_open(query, reason):
    with pytest.raises(ValueError, match=reason) as refused:
        open_store(f"rediss://:{TLS_PASSWORD}@redis.svc:6379/0?{query}")
    assert TLS_PASSWORD not in str(refused.value)


def test_tls_parameters_on_a_plain_url_are_refused(pki_files):
    with pytest.raises(ValueError, match="parameter 'ssl_ca_certs' needs TLS: use rediss://"):
        open_store(f"redis://redis.svc:6379/0?ssl_ca_certs={pki_files['ca']}")


def test_no_verification_is_allowed_and_warned(redis_tls_server, caplog):
    with caplog.at_level("WARNING", "kairos.store"):
        store = open_store(_url(redis_tls_server, ssl_cert_reqs="none", prefix="unverified"))
    store.put(1, "ana", b"x")
    assert "without verifying the server's certificate" in caplog.text
    assert TLS_PASSWORD not in caplog.text
