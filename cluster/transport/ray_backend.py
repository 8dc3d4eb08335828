"""Every call between the runtime's roles, behind one small interface: Ray calls for control,
the data plane (dataplane.py) for request batches.

The controller and the client speak to shards and the learner through a `Backend`; this
module's `RayBackend` is the real one, and the tests put an in-process fake in its place, so
the logic above runs and is tested without Ray (Ray Serve's ActorReplicaWrapper does this).
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kairos.cluster.transport.dataplane import PlaneConnection, ShardFailed
from kairos.cluster.settings import CONTROLLER_NAME, LEARNER_NAME, NAMESPACE


class Unavailable(Exception):
    """A shard, the learner or the controller did not answer (dead, restarting, gone)."""


class Backend(Protocol):
    def nodes(self) -> list[str]:
        """Ids of the alive nodes, in a stable order."""

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str) -> None: ...

    async def kill_shard(self, name: str) -> None: ...

    async def shard_call(self, name: str, method: str, *args: Any) -> Any:
        """A control or admin method of a shard."""

    async def send(self, name: str, session: str, seq: int, requests: list,
                   routed: list[int]) -> list:
        """A batch of requests to a shard, with the map version each was routed under;
        raises Unavailable if the shard cannot answer."""

    async def learner_call(self, method: str, *args: Any) -> Any: ...

    async def close(self) -> None:
        """Close the connections this backend opened (on the running event loop)."""

    async def controller_call(self, method: str, *args: Any) -> Any: ...


class RayBackend:
    """Named actors in the Kairos namespace; handles are looked up once and cached. Request
    batches go over each shard's data plane connection (dataplane.py), opened on first use
    on the running event loop and kept."""

    def __init__(self) -> None:
        self._handles: dict[str, Any] = {}
        self._planes: dict[str, asyncio.Future] = {}

    def nodes(self) -> list[str]:
        return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str) -> None:
        from kairos.cluster.shard.actor import ShardActor
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE,
                                   "lifetime": "detached", "max_restarts": -1}
        if node is not None:
            # hard: a soft preference is not kept when the node is busy; a shard whose node
            # died is replaced by the controller on a live node
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        handle = ShardActor.options(**options).remote(name, n_partitions, seed, store_url,
                                                      journal_policy)
        self._handles[name] = handle
        await handle.ready.remote()

    async def kill_shard(self, name: str) -> None:
        await self._close_plane(name)
        try:
            ray.kill(self._handle(name), no_restart=True)
        except ValueError:  # already gone
            pass
        self._handles.pop(name, None)

    async def shard_call(self, name: str, method: str, *args: Any) -> Any:
        return await self._call(name, method, *args)

    async def send(self, name: str, session: str, seq: int, requests: list,
                   routed: list[int]) -> list:
        plane = self._planes.get(name)
        if plane is None:
            plane = self._planes[name] = asyncio.ensure_future(self._connect(name))
        try:
            connection = await asyncio.shield(plane)
            return await connection.call(session, seq, requests, routed)
        except ShardFailed as exc:  # that call only: the connection is fine
            raise Unavailable(f"{name}: {exc}") from exc
        except (TypeError, OverflowError) as exc:  # a value msgpack cannot carry: nothing sent
            raise Unavailable(f"{name}: the batch cannot be sent: {exc}") from exc
        except Exception as exc:  # closed, refused, timed out, or the shard is gone
            if self._planes.get(name) is plane:
                await self._close_plane(name)  # the next batch reconnects, to a restart too
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"{name}: {exc}") from exc

    async def close(self) -> None:
        for name in list(self._planes):
            await self._close_plane(name)

    async def _close_plane(self, name: str) -> None:
        plane = self._planes.pop(name, None)
        if plane is not None:
            with contextlib.suppress(Exception):
                await (await plane).close()

    async def _connect(self, name: str) -> PlaneConnection:
        host, port, incarnation = await self._call(name, "data_address")
        return await PlaneConnection.open(host, port, incarnation)

    async def learner_call(self, method: str, *args: Any) -> Any:
        return await self._call(LEARNER_NAME, method, *args)

    async def controller_call(self, method: str, *args: Any) -> Any:
        return await self._call(CONTROLLER_NAME, method, *args)

    async def _call(self, name: str, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._handle(name), method).remote(*args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.ActorUnschedulableError, ValueError) as exc:
            self._handles.pop(name, None)
            raise Unavailable(f"{name}: {exc.__class__.__name__}") from exc

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle


def sink_handle(name: str) -> Any:
    """The actor that receives a watch's pushes (a gateway, or any actor with `deliver`)."""
    return ray.get_actor(name, namespace=NAMESPACE)
