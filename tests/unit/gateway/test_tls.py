"""TLS and mTLS on the gateway, with a throwaway PKI minted for the test."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import Tls, serve
from kairos.cluster.transport.client import KairosClient
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.local_backend import LocalBackend
from tests.support.pki import mint


@pytest.fixture(scope="module")
def pki():
    return mint()


async def _decide_over(tls: Tls, channels) -> list:
    """Serve with `tls`; for each channel factory, the decision or the status code."""
    backend = LocalBackend()
    await backend.start_runtime(1, n_partitions=16)
    client = await KairosClient(backend).connect()
    gateway = Gateway("g", client, backend)
    await gateway.refresh_catalog()
    server, _, port = await serve(gateway, Auth({}), "127.0.0.1", 0, tls)
    results = []
    for make in channels:
        async with make(f"127.0.0.1:{port}") as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            try:
                d = await stub.Decide(pb.DecideRequest(customer_id="t", channel="web"),
                                      timeout=5)
                results.append(d.channel)
            except grpc.aio.AioRpcError as exc:
                results.append(exc.code())
    await server.stop(0)
    await gateway.close()
    return results


def test_tls_serves_clients_that_trust_the_ca_only(pki):
    cert, key = pki["server"]
    trusted = grpc.ssl_channel_credentials(pki["ca"])
    results = asyncio.run(_decide_over(Tls(cert, key), [
        lambda target: grpc.aio.secure_channel(target, trusted),
        grpc.aio.insecure_channel,
    ]))
    assert results == ["web", grpc.StatusCode.UNAVAILABLE]


def test_a_client_trusting_another_ca_is_refused_the_handshake(pki):
    cert, key = pki["server"]
    wrong_ca = grpc.ssl_channel_credentials(pki["foreign_ca"])
    results = asyncio.run(_decide_over(Tls(cert, key), [
        lambda target: grpc.aio.secure_channel(target, wrong_ca),
    ]))
    assert results == [grpc.StatusCode.UNAVAILABLE]


def test_mtls_refuses_a_client_certificate_from_a_foreign_ca(pki):
    cert, key = pki["server"]
    foreign_cert, foreign_key = pki["foreign_client"]
    foreign = grpc.ssl_channel_credentials(pki["ca"], foreign_key, foreign_cert)
    results = asyncio.run(_decide_over(Tls(cert, key, client_ca=pki["ca"]), [
        lambda target: grpc.aio.secure_channel(target, foreign),
    ]))
    assert results == [grpc.StatusCode.UNAVAILABLE]


def test_mtls_needs_a_client_certificate_from_the_ca(pki):
    cert, key = pki["server"]
    client_cert, client_key = pki["client"]
    with_cert = grpc.ssl_channel_credentials(pki["ca"], client_key, client_cert)
    without = grpc.ssl_channel_credentials(pki["ca"])
    results = asyncio.run(_decide_over(Tls(cert, key, client_ca=pki["ca"]), [
        lambda target: grpc.aio.secure_channel(target, with_cert),
        lambda target: grpc.aio.secure_channel(target, without),
    ]))
    assert results == ["web", grpc.StatusCode.UNAVAILABLE]


def test_tls_from_files(tmp_path, pki):
    cert, key = pki["server"]
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    (tmp_path / "k.pem").chmod(0o600)
    (tmp_path / "ca.pem").write_bytes(pki["ca"])
    tls = Tls.from_files(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"),
                         str(tmp_path / "ca.pem"))
    assert tls == Tls(cert, key, pki["ca"])
