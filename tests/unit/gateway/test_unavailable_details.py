"""A call that ends UNAVAILABLE tells its caller whether the request may have been applied,
never the transport's or the shard's detail (shard names, socket errors, paths, exception
classes): that is logged at the gateway, at most once a UNAVAILABLE_LOG_S."""
from __future__ import annotations

import asyncio
import logging
import math

import grpc
import pytest

from kairos.cluster.gateway import calls
from kairos.cluster.protocol import Event
from kairos.cluster.transport.backend import NotCarried, NotSent, Unavailable
from kairos.cluster.transport.client import ShardUnavailable
from kairos.cluster.transport.dataplane import PlaneConnection, PlaneServer

INTERNAL = "OSError: [Errno 28] No space left on device: '/var/lib/kairos/journals/s0'"
LEAKS = ("kairos-shard-0003", "Errno", "OSError", "/var/lib", "StoreCorrupt")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def _aborted(exc: BaseException) -> Aborted:
    with pytest.raises(Aborted) as aborted:
        await calls.abort(Context(), exc)
    return aborted.value


@pytest.fixture(autouse=True)
def _logs_each(monkeypatch):
    monkeypatch.setattr(calls, "_logged_at", -math.inf)  # an earlier test's log holds none back


@pytest.mark.parametrize("exc, told", [
    (Unavailable(f"kairos-shard-0003: {INTERNAL}"), calls.NO_ANSWER),
    (NotSent(f"kairos-shard-0003: no connection: {INTERNAL}"), calls.NOT_SENT),
    (NotCarried(f"kairos-shard-0003: the batch cannot be sent: {INTERNAL}"), calls.NOT_CARRIED),
    (ShardUnavailable(f"kairos-shard-0003: journal: {INTERNAL}"), calls.SHARD_FAILED),
    (ShardUnavailable("this customer's stored profile (partition 7) is damaged: StoreCorrupt: "
                      "/var/lib/kairos/customers/p7/ab.blk"),
     "this customer's stored profile (partition 7) is damaged"),  # README, Corruption
])
def test_the_caller_is_told_what_happened_and_the_log_has_the_detail(exc, told, caplog):
    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        aborted = asyncio.run(_aborted(exc))
    assert aborted.code == grpc.StatusCode.UNAVAILABLE and aborted.details == told
    assert not [leak for leak in LEAKS if leak in aborted.details]
    assert str(exc) in caplog.text and type(exc).__name__ in caplog.text


def test_a_shards_internal_error_over_the_data_plane_reaches_only_the_log(caplog):
    """The error frame of a shard whose handler raised names the exception's class and
    message; through RayBackend the call ends UNAVAILABLE saying the shard failed it."""
    from kairos.cluster.transport.ray_backend import RayBackend

    async def handle(session, seq, requests, routed):
        raise OSError(28, "No space left on device", "/var/lib/kairos/journals/s0")

    async def main() -> Aborted:
        server = PlaneServer(handle)
        address = await server.start("127.0.0.1")
        backend = RayBackend()

        async def connect(name):
            return await PlaneConnection.open(*address, server.secret)

        backend._connect = connect
        try:
            with pytest.raises(Unavailable) as failed:
                await backend.send("kairos-shard-0003", "a", 0,
                                   [Event(customer_id="ana", event_type="e", time=1.0)], [1])
            return await _aborted(failed.value)
        finally:
            await backend.close()
            server.close()

    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        aborted = asyncio.run(main())
    assert aborted.code == grpc.StatusCode.UNAVAILABLE and aborted.details == calls.SHARD_FAILED
    assert not [leak for leak in LEAKS if leak in aborted.details]
    assert "kairos-shard-0003" in caplog.text and "OSError" in caplog.text
    assert "/var/lib/kairos/journals/s0" in caplog.text


def test_the_detail_is_logged_at_most_once_a_while(caplog):
    with caplog.at_level(logging.WARNING, logger="kairos.gateway"):
        for n in range(3):
            asyncio.run(_aborted(Unavailable(f"kairos-shard-000{n}: gone")))
    assert "kairos-shard-0000" in caplog.text and "kairos-shard-0001" not in caplog.text
