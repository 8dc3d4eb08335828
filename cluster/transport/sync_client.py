"""A blocking facade over KairosClient, for the CLI, scripts and tests."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from kairos.cluster.transport.backend import Backend
from kairos.cluster.transport.client import KairosClient


class SyncClient:
    """A blocking facade over KairosClient (CLI, scripts, tests): it runs the client on its
    own event-loop thread, so `client.decide(...)` simply returns the decision."""

    def __init__(self, backend: Backend, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kairos-client",
                                        daemon=True)
        self._thread.start()
        self.client: KairosClient = self.run(self._connect(backend))

    @staticmethod
    async def _connect(backend: Backend) -> KairosClient:
        return await KairosClient(backend).connect()

    def run(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout_s)

    def submit(self, coroutine) -> concurrent.futures.Future:
        """Start a coroutine on the client's loop without waiting (pipelining)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(method):
            return method
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))

    def close(self) -> None:
        self.run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
