"""Serving a kairos.v1 DecisionService for a peer: in its own process, or inside a Ray actor.

The peers answer the same contract as the Kairos gateway, so the load generators treat every
system alike. A servicer comes from a factory (a picklable callable and its arguments); a
servicer with an async `open()` gets it awaited before the server starts, and `close()` after
it stops.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import grpc
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kairos.v1 import decision_pb2_grpc

from ..lifetime import exit_with_parent

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 1.0


async def serve(factory: Callable[..., Any], args: tuple) -> tuple[grpc.aio.Server, Any, int]:
    """Build the servicer, start a gRPC server for it on a free loopback port."""
    servicer = factory(*args)
    if hasattr(servicer, "open"):
        await servicer.open()
    server = grpc.aio.server()
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    return server, servicer, port


async def shut(server: grpc.aio.Server, servicer: Any) -> None:
    await server.stop(STOP_GRACE_S)
    if hasattr(servicer, "close"):
        await servicer.close()


class ServerProcess:
    """A peer's gRPC server in a process of its own (spawned), like a deployed service."""

    def __init__(self, factory: Callable[..., Any], *args: Any):
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_process_main,
                                        args=(os.getpid(), child, factory, args), daemon=True)
        self._process.start()
        if not parent.poll(START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"{factory.__name__} did not start in {START_TIMEOUT_S:.0f} s")
        self.port: int = parent.recv()
        self.target = f"{HOST}:{self.port}"

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()  # SIGTERM: the server stops gracefully
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _process_main(parent_pid: int, conn, factory: Callable[..., Any], args: tuple) -> None:
    exit_with_parent(parent_pid)

    async def main() -> None:
        server, servicer, port = await serve(factory, args)
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        conn.send(port)
        await stopping.wait()
        await shut(server, servicer)
    asyncio.run(main())


@ray.remote(num_cpus=0)
class FrontActor:
    """A peer's gRPC server inside a Ray actor on a chosen node, as Kairos's gateway runs."""

    def __init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._servicer: Any = None

    async def start(self, factory: Callable[..., Any], args: tuple) -> int:
        self._server, self._servicer, port = await serve(factory, args)
        return port

    async def stop(self) -> None:
        if self._server is not None:
            await shut(self._server, self._servicer)


@contextmanager
def in_process(factory: Callable[..., Any], *args: Any) -> Iterator[str]:
    """Serve in a process of its own; the target (host:port) while the context lasts."""
    server = ServerProcess(factory, *args)
    try:
        yield server.target
    finally:
        server.stop()


@contextmanager
def in_ray_actor(node: str, factory: Callable[..., Any], *args: Any) -> Iterator[str]:
    """Serve from a FrontActor pinned to a Ray node; the target while the context lasts."""
    front = FrontActor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    try:
        port = ray.get(front.start.remote(factory, args), timeout=START_TIMEOUT_S)
        yield f"{HOST}:{port}"
    finally:
        try:
            ray.get(front.stop.remote(), timeout=10)
        finally:
            ray.kill(front)
