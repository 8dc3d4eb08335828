"""A real gRPC gateway on 127.0.0.1 over the in-process backend (no Ray), served from an event
loop thread of its own, for tests that call it through grpc as a channel would.

It sheds no load unless asked to (`shed=True`): its loop shares the machine with the test run,
and a loaded machine would otherwise refuse calls of tests about something else, as
tests/cluster/traffic.py's UNSHED does for the clusters the cluster tier starts."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Coroutine, Iterator

import grpc

from kairos.cluster.gateway.admission import Shedder
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import serve
from kairos.cluster.transport.client import KairosClient

from tests.support.local_backend import LocalBackend


class InProcessGateway:
    """Serves on `port` once built; `run(coroutine)` runs on its loop; `close()` stops it."""

    def __init__(self, auth: Auth, backend: LocalBackend | None = None, shed: bool = False):
        self.shed = shed
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.run(self._start(auth, backend or LocalBackend()))

    def run(self, coroutine: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _start(self, auth: Auth, backend: LocalBackend) -> int:
        await backend.start_runtime(1, n_partitions=16)
        self.client = await KairosClient(backend).connect()
        self.gateway = Gateway("g", self.client, backend)
        if not self.shed:  # neither the loop's lag nor its thread's wait for a core sheds
            self.gateway.shedder = Shedder(target_s=3600.0, busy_target=1.0)
        await self.gateway.refresh_catalog()
        self.server, _, port = await serve(self.gateway, auth, "127.0.0.1", 0)
        return port

    async def _stop(self) -> None:
        await self.server.stop(0)
        await self.gateway.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(keys: str | None = None, backend: LocalBackend | None = None
            ) -> Iterator[tuple[InProcessGateway, grpc.Channel]]:
    """A gateway with the API keys `keys` (YAML; None: auth off) and a channel to it, both
    closed afterwards."""
    gateway = InProcessGateway(Auth.load(keys), backend)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            yield gateway, channel
    finally:
        gateway.close()
