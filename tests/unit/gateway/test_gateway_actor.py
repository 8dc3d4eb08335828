"""The gateway actor's logic without Ray: constructed, it serves (keys read from its file, not
passed); a second instance built the same way, as Ray builds a restarted actor, serves again on
the port the first one bound. A shard's endpoint binds the first free port of a range, and
answers the health it was last told, also when told while it started. Health is NOT_SERVING
while the controller has published no map, and for good once drained."""
from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.gateway import actor as actor_module
from kairos.cluster.gateway.actor import GatewayServer
from kairos.cluster.remembered import Remembered
from kairos.cluster.settings import LONG_POLL_S
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

KEY = "decide-key-0123456789"


async def decide(port: int, key: str | None) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await DecisionServiceStub(channel).Decide(
                pb.DecideRequest(customer_id="c", channel="web"), timeout=10,
                metadata=(("x-api-key", key),) if key else ())
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def test_constructed_it_serves_and_a_restart_serves_on_the_same_port(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{key: {KEY}, name: d, scopes: [decide]}}\n")
    keys.chmod(0o600)
    remembered = Remembered(str(tmp_path / "gateway.port"), actor="actor-1")

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        made = dict(host="127.0.0.1", port=0, keys_file=str(keys), backend=backend,
                    remembered=remembered)
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


def test_a_port_range_binds_its_first_free_port_and_one_all_taken_is_an_oserror(capfd):
    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            low = busy.getsockname()[1]
            ranged = GatewayServer("kairos-shard-0000", "127.0.0.1", 0, backend=backend,
                                   ports=(low, min(low + 20, 65535)), of_shard=True)
            bound = await ranged.start()
            assert low < bound <= low + 20
            await ranged.stop(0)
            assert "Failed to add port" not in capfd.readouterr().err  # taken: not tried
            taken = GatewayServer("kairos-shard-0001", "127.0.0.1", 0, backend=backend,
                                  ports=(low, low), of_shard=True)
            with pytest.raises(OSError, match=f"could not bind 127.0.0.1 on port {low}"):
                await taken.start()
    asyncio.run(main())


def test_a_shard_endpoint_told_to_serve_while_it_starts_answers_serving(monkeypatch):
    """Health set while serve() starts the server (it yields) is what health answers."""
    real = actor_module.serve
    made: list[GatewayServer] = []

    async def told_meanwhile(*args, **kwargs):
        await made[0].set_serving(True)  # the shard's tick, in the window
        return await real(*args, **kwargs)
    monkeypatch.setattr(actor_module, "serve", told_meanwhile)

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        made.append(GatewayServer("kairos-shard-0000", "127.0.0.1", 0, backend=backend,
                                  of_shard=True))
        port = await made[0].start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = (await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)).status
        await made[0].stop(0)
        return status
    assert asyncio.run(main()) == health_pb2.HealthCheckResponse.SERVING


class MapWithheld:
    """A controller that has published no partition map until `publish()` (a cluster that is
    starting); everything else is `controller`'s."""

    def __init__(self, controller):
        self._controller = controller
        self._published = asyncio.Event()

    def publish(self) -> None:
        self._published.set()

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S):
        try:
            async with asyncio.timeout(timeout_s):
                await self._published.wait()
        except TimeoutError:
            return None
        return await self._controller.get_map(known_version, timeout_s)

    def __getattr__(self, name: str):
        return getattr(self._controller, name)


async def health_of(port: int) -> dict[str, int]:
    """What health answers for the server and for DecisionService."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {service: (await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                           timeout=5)).status
                for service in ("", "kairos.v1.DecisionService")}


SERVING = dict.fromkeys(("", "kairos.v1.DecisionService"), health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = dict.fromkeys(SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


@pytest.mark.parametrize("of_shard", [False, True], ids=["gateway", "shard endpoint"])
def test_health_is_not_serving_until_the_controller_publishes_a_map(of_shard):
    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        withheld = MapWithheld(backend.local_controller)
        backend.controller = lambda: withheld
        server = GatewayServer("kairos-shard-0000" if of_shard else "kairos-gateway-0",
                               "127.0.0.1", 0, backend=backend, of_shard=of_shard)
        port = await server.start()
        assert await health_of(port) == NOT_SERVING
        await server.set_serving(True)  # a shard's tick: it owns partitions
        assert await health_of(port) == NOT_SERVING
        assert await decide(port, None) == grpc.StatusCode.UNAVAILABLE

        withheld.publish()
        await until(lambda: server.gateway.client.version, 10, "the map to reach the gateway")
        for _ in range(100):  # health follows within a few ms
            if await health_of(port) == SERVING:
                break
            await asyncio.sleep(0.02)
        assert await health_of(port) == SERVING
        assert await decide(port, None) == grpc.StatusCode.OK

        await server.unready()  # a drain
        await server.set_serving(True)
        assert await health_of(port) == NOT_SERVING
        await server.stop(0)
    asyncio.run(main())


def test_a_gateway_drained_while_it_starts_never_answers_serving(monkeypatch):
    real = actor_module.serve
    made: list[GatewayServer] = []

    async def drained_meanwhile(*args, **kwargs):
        await made[0].unready()  # the controller's drain, in the window
        return await real(*args, **kwargs)
    monkeypatch.setattr(actor_module, "serve", drained_meanwhile)

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        made.append(GatewayServer("kairos-gateway-0", "127.0.0.1", 0, backend=backend))
        port = await made[0].start()
        assert await health_of(port) == NOT_SERVING
        await made[0].set_serving(True)
        assert await health_of(port) == NOT_SERVING
        await made[0].stop(0)
    asyncio.run(main())
