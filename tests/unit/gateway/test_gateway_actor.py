"""The gateway actor's logic without Ray: constructed, it serves (keys read from its file, not
passed); a second instance built the same way, as Ray builds a restarted actor, serves again on
the port the first one bound."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.gateway.actor import GatewayServer
from kairos.v1 import decision_pb2 as pb

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

KEY = "decide-key-0123456789"


async def decide(port: int, key: str | None) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/kairos.v1.DecisionService/Decide",
                                   request_serializer=pb.DecideRequest.SerializeToString,
                                   response_deserializer=pb.Decision.FromString)
        try:
            await call(pb.DecideRequest(customer_id="c", channel="web"), timeout=10,
                       metadata=(("x-api-key", key),) if key else ())
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def test_constructed_it_serves_and_a_restart_serves_on_the_same_port(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{key: {KEY}, name: d, scopes: [decide]}}\n")
    port_file = str(tmp_path / "gateway.port")

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        made = dict(host="127.0.0.1", port=0, keys_file=str(keys), backend=backend,
                    port_file=port_file)
        first = GatewayServer("kairos-gateway-0", **made)  # nobody calls start()
        await until(lambda: first.server is not None, 10, "the constructed gateway to serve")
        port = await first.start()
        assert await decide(port, KEY) == grpc.StatusCode.OK
        assert await decide(port, None) == grpc.StatusCode.UNAUTHENTICATED
        await first.server.stop(0)  # the process dies
        await first.gateway.client.close()
        first._pauses.cancel()

        again = GatewayServer("kairos-gateway-0", **made)  # as Ray restarts it
        assert await again.start() == port
        assert await decide(port, KEY) == grpc.StatusCode.OK
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
                health_pb2.HealthCheckResponse.SERVING
        await again.stop(0)
    asyncio.run(main())


def test_a_gateway_that_cannot_serve_says_why(tmp_path):
    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        server = GatewayServer("g", host="127.0.0.1", port=0,
                               keys_file=str(tmp_path / "missing.yaml"), backend=backend)
        with pytest.raises(FileNotFoundError):
            await server.start()
    asyncio.run(main())
