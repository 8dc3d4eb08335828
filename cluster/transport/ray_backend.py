"""The Backend on Ray: control calls are Ray actor calls, request batches go over the data
plane (dataplane.py).

The runtime's actors are named, in the Kairos namespace; a handle is looked up once and
cached. Each typed handle (backend.py) is a thin wrapper over an actor, as Ray Serve's
ActorReplicaWrapper is over a replica, and every call goes through `RayBackend.call`, the one
place where Ray's errors for an actor that is dead, restarting or not there become
`Unavailable`, and where every call gets its deadline (settings: CONTROL_CALL_S,
SHARD_START_S, ADMIN_CALL_S): an actor that is alive but does not answer (stopped, wedged) is
Unavailable too, so no caller waits on it for ever. An actor whose process died, or that no
longer exists, is `Gone` (an Unavailable): what that process held in memory is lost even if
Ray restarts the actor. An error the actor's method raised itself comes through as raised
(Ray's RayTaskError is also an instance of the original exception's class).

A watch sink is named by its actor's name and the incarnation of the process that holds the
watch streams (`sink_name`), since the streams die with the process: a sink restarted by Ray,
or another actor given the same name, answers pushes for an earlier incarnation Gone, and the
shards and the controller drop that incarnation's watches, never those the new process
registers.

This module does not import the shard and gateway actors: whoever creates them (the
controller's actor) hands their classes to `RayBackend`, so the shard and gateway sides may
use this backend for their own calls.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import ray
from ray.actor import ActorClass, ActorHandle
from ray.autoscaler.sdk import request_resources
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kairos.cluster.protocol import Reply, Request, reply_from
from kairos.cluster.settings import (ADMIN_CALL_S, CONTROL_CALL_S, CONTROLLER_NAME,
                                     GATEWAY_START_S, GATEWAY_STOP_GRACE_S, LEARNER_NAME,
                                     LONG_POLL_S, NAMESPACE, SHARD_START_S)
from kairos.cluster.transport.backend import (ChannelWatch, ControllerControl, GatewayControl,
                                              LearnerControl, NoSuchCall, NotCarried, NotSent,
                                              ShardControl, Unavailable, WatchSink)
from kairos.cluster.transport.client import ShardUnavailable
from kairos.cluster.transport.dataplane import PlaneConnection, ShardFailed

log = logging.getLogger("kairos.ray")

if TYPE_CHECKING:
    from kairos.core.decision import Decision
    from kairos.core.models import ModelDelta

    from kairos.cluster.transport.backend import Published

# Ray's errors for an actor that cannot answer: dead, restarting, or not placeable
_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
         ray.exceptions.ActorUnschedulableError)
SINK_MARK = "#"  # between a sink's actor name and its incarnation (no actor name has one)


class Gone(Unavailable):
    """The called actor's process died, or no actor has the name (any more); for a sink, the
    incarnation named is not the one running. What that process held in memory (a gateway's
    watch streams) is gone for good, though Ray may restart the actor as a new process."""


def sink_name(actor: str, incarnation: str) -> str:
    """The sink of the watch streams that the process `incarnation` of `actor` holds."""
    return f"{actor}{SINK_MARK}{incarnation}"


def restarted() -> bool:
    """Whether this process is an actor's that Ray restarted (False outside Ray). Ray reads
    it from its GCS, which may fail: then True, as a needless nudge costs the controller a
    round, and an actor's constructor must not raise (Ray restarts none whose constructor
    raised)."""
    if not ray.is_initialized():
        return False
    try:
        with warnings.catch_warnings():
            # Ray's property reads Ray's own deprecated actor_id (Ray 2.60): nothing of ours
            # to change, and every actor's start would print it to `kairos up`'s console
            warnings.filterwarnings("ignore", r"(?s).*Use get_actor_id\(\)", DeprecationWarning)
            return ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # noqa: BLE001  (whatever Ray raises reading its GCS)
        log.warning("could not ask Ray whether this actor was restarted: telling the "
                    "controller all the same", exc_info=True)
        return True


Invoke = Callable[[ActorHandle], Awaitable[Any]]


class RayBackend:
    """`shard_actor`, `gateway_actor`: the actor classes, for a backend that creates shards
    and gateways (the controller's)."""

    def __init__(self, shard_actor: ActorClass | None = None,
                 gateway_actor: ActorClass | None = None) -> None:
        self._shard_actor = shard_actor
        self._gateway_actor = gateway_actor
        self._handles: dict[str, ActorHandle] = {}
        self._planes: dict[str, asyncio.Future] = {}

    def nodes(self) -> list[str]:
        return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

    def node_info(self) -> dict[str, dict[str, Any]]:
        return {n["NodeID"]: {"address": n["NodeManagerAddress"],
                              "cpus": n["Resources"].get("CPU", 0.0)}
                for n in ray.nodes() if n["Alive"]}

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        request_resources(bundles=bundles)

    def nudge_controller(self) -> None:
        """Have the controller run its control round now (control/pace.py), without waiting
        for it. A controller that is not there (restarting, not created yet) takes up every
        shard and tells the learner as it starts anyway."""
        with contextlib.suppress(Exception):
            self._handle(CONTROLLER_NAME).nudge.remote()

    # -- typed handles -------------------------------------------------------------------------

    def shard(self, name: str) -> ShardControl:
        return RayShard(self, name)

    def learner(self) -> LearnerControl:
        return RayLearner(self, LEARNER_NAME)

    def controller(self) -> ControllerControl:
        return RayController(self, CONTROLLER_NAME)

    def sink(self, name: str) -> WatchSink:
        return RaySink(self, name)

    def gateway(self, name: str) -> GatewayControl:
        return RayGateway(self, name)

    async def call(self, name: str, invoke: Invoke, timeout_s: float = CONTROL_CALL_S,
                   poll: bool = False) -> Any:
        """`invoke(handle)` on the named actor; Unavailable if the actor cannot answer within
        `timeout_s` (the call may still run there later). A `poll` (a long poll: an async
        actor's method that only waits) is cancelled at the actor too when its caller gives up
        on it, rather than hold one of the actor's concurrent calls to its end."""
        try:
            handle = self._handle(name)
        except ValueError as exc:  # no actor by that name: not created yet, or killed
            raise Gone(f"{name}: no such actor") from exc
        try:
            async with asyncio.timeout(timeout_s):
                ref = invoke(handle)
                try:
                    return await ref
                except asyncio.CancelledError:
                    if poll:
                        with contextlib.suppress(Exception):  # the actor may be gone
                            ray.cancel(ref)
                    raise
        except TimeoutError as exc:
            raise Unavailable(f"{name}: no answer within {timeout_s:g} s") from exc
        except _GONE as exc:
            self._handles.pop(name, None)  # a restarted actor may have a new handle
            # died: the process that ran the call (or was to) is gone; a restarting actor
            # answers ActorUnavailableError, one that cannot be placed yet Unschedulable
            lost = Gone if isinstance(exc, ray.exceptions.ActorDiedError) else Unavailable
            raise lost(f"{name}: {exc.__class__.__name__}") from exc

    def _handle(self, name: str) -> ActorHandle:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle

    # -- shards --------------------------------------------------------------------------------

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str, owner: str) -> None:
        if self._shard_actor is None:
            raise RuntimeError("this RayBackend was not given the shard actor class")
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE,
                                   "lifetime": "detached", "max_restarts": -1}
        if node is not None:
            # hard: a soft preference is not kept when the node is busy; a shard whose node
            # died is replaced by the controller on a live node
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        handle = self._shard_actor.options(**options).remote(name, n_partitions, seed,
                                                             store_url, journal_policy,
                                                             owner=owner)
        self._handles[name] = handle
        await self.call(name, lambda actor: actor.ready.remote(), SHARD_START_S)

    async def kill_shard(self, name: str) -> None:
        await self._close_plane(name)
        with contextlib.suppress(ValueError):  # already gone
            ray.kill(self._handle(name), no_restart=True)
        self._handles.pop(name, None)

    # -- gateways ------------------------------------------------------------------------------

    async def create_gateway(self, name: str, node: str, serving: dict[str, Any]) -> int:
        if self._gateway_actor is None:
            raise RuntimeError("this RayBackend was not given the gateway actor class")
        # get_if_exists: a restarted controller takes up the gateway it had started
        handle = self._gateway_actor.options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                name, **serving)
        self._handles[name] = handle
        return await self.call(name, lambda actor: actor.start.remote(), GATEWAY_START_S)

    async def kill_gateway(self, name: str) -> None:
        with contextlib.suppress(ValueError):  # already gone
            ray.kill(self._handle(name), no_restart=True)
        self._handles.pop(name, None)

    async def send(self, name: str, session: str, seq: int, requests: list[Request],
                   routed: list[int]) -> list[Reply]:
        plane = self._planes.get(name)
        if plane is None:
            plane = self._planes[name] = asyncio.ensure_future(self._connect(name))
        try:
            connection = await asyncio.shield(plane)
        except Exception as exc:  # no connection opened: nothing was sent
            if self._planes.get(name) is plane:
                del self._planes[name]
            raise NotSent(f"{name}: no connection: {exc!r}") from exc
        try:
            raw = await connection.call(session, seq, requests, routed)
        except ShardFailed as exc:  # that call only: the connection is fine
            raise ShardUnavailable(f"{name}: {exc}") from exc
        except (TypeError, OverflowError) as exc:  # a value msgpack cannot carry: nothing sent
            raise NotCarried(f"{name}: the batch cannot be sent: {exc}") from exc
        except Exception as exc:  # closed, refused, timed out, or the shard is gone
            if self._planes.get(name) is plane:
                await self._close_plane(name)  # the next batch reconnects, to a restart too
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"{name}: {exc}") from exc
        # outside the try: a reply that does not read is not a batch that was never sent
        if len(raw) != len(requests):  # each request's caller waits for an answer of its own
            raise Unavailable(f"{name}: {len(raw)} replies to a batch of {len(requests)}")
        return [reply_from(reply, request.kind) for reply, request in zip(raw, requests)]

    async def close(self) -> None:
        for name in list(self._planes):
            await self._close_plane(name)

    async def disconnect(self, name: str) -> None:
        """Forget shard `name`, which left the map (the client's link to it went): its
        connection closed, if one is open, and its actor handle dropped; a later send
        opens one again."""
        self._handles.pop(name, None)
        await self._close_plane(name)

    async def _close_plane(self, name: str) -> None:
        plane = self._planes.pop(name, None)
        if plane is not None:
            with contextlib.suppress(Exception):
                await (await plane).close()

    async def _connect(self, name: str) -> PlaneConnection:
        return await PlaneConnection.open(*await self.shard(name).data_address())


class _Actor:
    """A typed handle's base: calls to one named actor through its backend."""

    def __init__(self, backend: RayBackend, name: str):
        self._backend = backend
        self.name = name

    def _call(self, invoke: Invoke, timeout_s: float = CONTROL_CALL_S, poll: bool = False
              ) -> Awaitable[Any]:
        return self._backend.call(self.name, invoke, timeout_s, poll)


class RayShard(_Actor):
    """ShardControl over a ShardActor."""

    async def data_address(self) -> tuple[str, int, bytes, bytes | None]:
        return await self._call(lambda a: a.data_address.remote())

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[ChannelWatch], map_version: int,
                    sources: dict[int, str] | None = None, *, owner: str) -> str:
        return await self._call(lambda a: a.start.remote(catalog_text, partitions,
                                                         channel_watches, map_version,
                                                         sources, owner=owner), SHARD_START_S)

    async def set_owner(self, owner: str) -> None:
        await self._call(lambda a: a.set_owner.remote(owner))

    async def health(self) -> dict[str, Any]:
        return await self._call(lambda a: a.health.remote())

    async def serve_api(self, host: str, port: int = 0, keys_file: str | None = None,
                        keys_env: str | None = None,
                        tls_files: tuple[str, str, str | None] | None = None,
                        ports: tuple[int, int] | None = None) -> int:
        return await self._call(lambda a: a.serve_api.remote(host, port, keys_file, keys_env,
                                                             tls_files, ports))

    async def stats(self) -> dict[str, Any]:
        return await self._call(lambda a: a.stats.remote())

    async def freeze(self, partitions: list[int], version: int) -> bytes:
        return await self._call(lambda a: a.freeze.remote(partitions, version))

    async def adopt(self, payload: bytes, version: int) -> int:
        return await self._call(lambda a: a.adopt.remote(payload, version))

    async def release(self, partitions: list[int], version: int) -> None:
        await self._call(lambda a: a.release.remote(partitions, version))

    async def thaw(self, partitions: list[int], version: int) -> None:
        await self._call(lambda a: a.thaw.remote(partitions, version))

    async def confirm(self, partitions: list[int], version: int) -> None:
        def invoke(actor: ActorHandle) -> Awaitable[Any]:
            try:
                method = actor.confirm
            except AttributeError as exc:  # the handle's: an AttributeError the call raised
                raise NoSuchCall(f"{self.name}: {exc}") from exc  # is the shard's own error
            return method.remote(partitions, version)

        await self._call(invoke)

    async def prepare(self, catalog_text: str) -> str:
        return await self._call(lambda a: a.prepare.remote(catalog_text))

    async def commit(self, version: str) -> None:
        await self._call(lambda a: a.commit.remote(version))

    async def retire(self) -> None:
        await self._call(lambda a: a.retire.remote())

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        await self._call(lambda a: a.watch_channel.remote(sink, channel, placement, active))

    async def read_log(self, query: Any, live: list[str], timeout_s: float = CONTROL_CALL_S
                       ) -> tuple[list, bool | int]:
        return await self._call(lambda a: a.read_log.remote(query, live, timeout_s),
                                timeout_s)


class RayLearner(_Actor):
    """LearnerControl over the LearnerActor."""

    async def sync(self, catalog_version: str, delta: ModelDelta | None,
                   known_version: int) -> Published | None:
        return await self._call(lambda a: a.sync.remote(catalog_version, delta, known_version))

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        # the rows arguments only when asked: a learner of an older release takes none
        rows = (takes_rows, based_on) if takes_rows else ()
        return await self._call(lambda a: a.watch.remote(catalog_version, known_version,
                                                         timeout_s, *rows),
                                timeout_s + CONTROL_CALL_S, poll=True)

    async def switch(self, catalog_text: str) -> int:
        return await self._call(lambda a: a.switch.remote(catalog_text))

    async def stand_down(self) -> None:
        await self._call(lambda a: a.stand_down.remote())

    async def status(self) -> dict[str, Any]:
        return await self._call(lambda a: a.status.remote())


class RayController(_Actor):
    """ControllerControl over the ControllerActor."""

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S
                      ) -> dict[str, Any] | None:
        return await self._call(lambda a: a.get_map.remote(known_version, timeout_s),
                                timeout_s + CONTROL_CALL_S, poll=True)

    async def shard_endpoints(self) -> dict[str, str]:
        return await self._call(lambda a: a.shard_endpoints.remote())

    async def scale(self, n_shards: int) -> dict[str, Any]:
        return await self._call(lambda a: a.scale.remote(n_shards),
                                ADMIN_CALL_S)

    async def put_catalog(self, catalog_text: str, evidence: dict[str, str] | None = None,
                          expected_version: str | None = None) -> str:
        return await self._call(
            lambda a: a.put_catalog.remote(catalog_text, evidence, expected_version),
            ADMIN_CALL_S)

    async def rollback_catalog(self, to_version: str | None = None) -> str:
        return await self._call(lambda a: a.rollback_catalog.remote(to_version),
                                ADMIN_CALL_S)

    async def get_catalog(self) -> dict[str, Any]:
        return await self._call(lambda a: a.get_catalog.remote())

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        await self._call(lambda a: a.watch_channel.remote(sink, channel, placement, active),
                         ADMIN_CALL_S)

    async def drain_node(self, node: str) -> dict[str, Any]:
        return await self._call(lambda a: a.drain_node.remote(node), ADMIN_CALL_S)

    async def status(self) -> dict[str, Any]:
        return await self._call(lambda a: a.status.remote(), ADMIN_CALL_S)


class RayGateway(_Actor):
    """GatewayControl over a GatewayActor."""

    async def unready(self) -> None:
        await self._call(lambda a: a.unready.remote())

    async def stop(self) -> None:
        await self._call(lambda a: a.stop.remote(GATEWAY_STOP_GRACE_S),
                         GATEWAY_STOP_GRACE_S + CONTROL_CALL_S)


class RaySink(_Actor):
    """WatchSink over a gateway actor (or any actor with `deliver`), by a sink's name: the
    actor's, and the incarnation its pushes are for (none: whichever runs)."""

    def __init__(self, backend: RayBackend, name: str):
        actor, _, incarnation = name.partition(SINK_MARK)
        super().__init__(backend, actor)
        self.incarnation = incarnation

    async def deliver(self, decisions: list[Decision]) -> None:
        if self.incarnation:
            await self._call(lambda a: a.deliver.remote(decisions, self.incarnation))
        else:  # any actor with `deliver(decisions)`
            await self._call(lambda a: a.deliver.remote(decisions))
