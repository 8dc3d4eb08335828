"""Gateway: the gRPC face of Kairos (kairos.v1), one per node, run as a Ray actor.

All gateways are equal: each routes any customer through a KairosClient (which batches per
shard and keeps each customer's order). The gateway checks API keys and scopes, turns the
contract's messages into runtime requests, maps errors to status codes, enforces the caller's
deadline (a Decide the shard cannot answer in time gets the catalog's fallback, marked as
such), bounds its in-flight work, and serves watch streams: shards push changed decisions to
the gateway actor (`deliver`), which fans them out to the streams that asked.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc
import ray
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kairos.core.catalog import load_catalog
from kairos.core.compiler import CompiledCatalog, Outcome, compile_catalog
from kairos.core.engine import Decision, RankedAction
from kairos.core.errors import CatalogError, InputError
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster import pauses

from kairos.cluster.gateway import wire
from kairos.cluster.gateway.auth import Auth, Denied, is_loopback
from kairos.cluster.transport.client import Busy, Conflict, KairosClient
from kairos.cluster.identity import alias_key, check_linkable
from kairos.cluster.transport.ray_backend import Backend, RayBackend, Unavailable
from kairos.cluster.settings import (DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE, DEFAULT_DEADLINE_S,
                                     GATEWAY_INFLIGHT_LIMIT, MAX_MESSAGE_BYTES, STREAM_WINDOW,
                                     WATCH_BACKLOG)

log = logging.getLogger("kairos.gateway")

BATCH_LIMIT = 10_000  # events in one IngestBatch (the proto says so)
PAUSES_CHECK_S = 1.0  # how often a gateway looks whether to freeze its old objects (pauses.py)
SERVICES = ("kairos.v1.DecisionService", "kairos.v1.AdminService")


@dataclass(frozen=True)
class Tls:
    """Server certificate and key (PEM); with a client CA, clients must present a certificate
    it signed (mTLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> "Tls":
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        return cls(read(cert), read(key), read(client_ca) if client_ca else None)


class Gateway(decision_pb2_grpc.DecisionServiceServicer, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, name: str, client: KairosClient, backend: Backend, auth: Auth):
        self.name = name
        self.client = client
        self.backend = backend
        self.auth = auth
        self.inflight = 0
        self._compiled: CompiledCatalog | None = None
        self._refresh: asyncio.Future | None = None
        self._streams: dict[tuple[str | None, str, str], set[_Stream]] = {}

    # -- plumbing ------------------------------------------------------------------------------

    async def _catalog(self) -> CompiledCatalog:
        """The catalog the cluster runs, for validation and fallbacks. After a switch (seen in
        the routing table) the new version compiles in the background; until it is ready the
        previous one serves, so no call waits for a compile."""
        if self._compiled is None:
            await self.refresh_catalog()
        elif self._compiled.version != self.client.catalog_version and self._refresh is None:
            self._refresh = asyncio.ensure_future(self.refresh_catalog())
        return self._compiled

    async def refresh_catalog(self) -> None:
        try:
            text = (await self.backend.controller_call("get_catalog"))["text"]
            self._compiled = await asyncio.get_running_loop().run_in_executor(
                None, lambda: compile_catalog(load_catalog(text)))
        finally:
            self._refresh = None

    async def _admit(self, context, scope: str, channel: str | None = None) -> None:
        try:
            self.auth.check(context.invocation_metadata(), scope, channel)
        except Denied as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED if exc.authenticated
                                else grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if self.inflight >= GATEWAY_INFLIGHT_LIMIT:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"gateway {self.name} has {self.inflight} calls in flight")

    def _timeout(self, context) -> float:
        remaining = context.time_remaining()
        remaining = DEFAULT_DEADLINE_S if remaining is None else remaining
        return max(0.0, remaining - max(DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE * remaining))

    async def _call(self, context, work, fallback=None) -> Any:
        """Run the runtime call within the deadline; map its errors to status codes."""
        try:
            return await self._within(work, self._timeout(context))
        except (asyncio.TimeoutError, Unavailable) as exc:
            if fallback is not None:
                return fallback()
            await self._abort(context, exc)
        except (InputError, Busy, Conflict) as exc:
            await self._abort(context, exc)

    async def _within(self, work, timeout_s: float) -> Any:
        self.inflight += 1
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        finally:
            self.inflight -= 1

    @staticmethod
    async def _abort(context, exc: Exception) -> None:
        """The status code for a runtime error."""
        if isinstance(exc, InputError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, Busy):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if isinstance(exc, Conflict):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if isinstance(exc, asyncio.TimeoutError):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "the customer's shard did not answer in time")
        if isinstance(exc, Unavailable):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise exc

    @staticmethod
    async def _invalid(context, exc: InputError) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _as(self, who: tuple[str | None, str | None], call) -> Any:
        """`call(customer_id)` for the customer a request names (see `_who`)."""
        customer_id, key = who
        if key is not None:
            customer_id = await self.client.call(("resolve", key))
        return await call(customer_id)

    # -- DecisionService -----------------------------------------------------------------------

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        await self._admit(context, "decide", request.channel)
        catalog = await self._catalog()
        try:
            who = _who(request)
            channel, placement = _view(catalog, request.channel, request.placement)
            context_values = wire.values_in("context", request.context)
        except InputError as exc:
            await self._invalid(context, exc)
        decision = await self._call(
            context, self._as(who, lambda customer_id: self.client.decide(
                customer_id, channel, placement, context_values,
                max_actions=request.max_actions, explain=request.explain,
                record_impression=request.record_impression)),
            fallback=lambda: _fallback(catalog, who[0] or "", channel, placement))
        return wire.decision_out(decision)

    async def Ingest(self, request: pb.Event, context) -> pb.IngestAck:
        await self._admit(context, "ingest", request.channel)
        try:
            return await self._ingest(request, await self._catalog(), "",
                                      self._timeout(context))
        except Exception as exc:
            await self._abort(context, exc)

    async def _ingest(self, event: pb.Event, catalog: CompiledCatalog, where: str,
                      timeout_s: float) -> pb.IngestAck:
        """One event; input errors name the field, prefixed with `where` inside a stream."""
        who, request = _event_request(event, catalog, where)
        try:
            result = await self._within(self._as(
                who, lambda customer_id: self.client.ingest_ack(customer_id, *request[2:])),
                timeout_s)
        except InputError as exc:
            raise InputError(where + exc.field, exc.reason) from None
        return _ack(event, result)

    async def IngestStream(self, request_iterator, context) -> AsyncIterator[pb.IngestAck]:
        """Events go out as they arrive (each customer's in order); each ack goes back as soon
        as it and every earlier one are done, in order. At most STREAM_WINDOW events wait for
        their acks: past that, reading pauses (gRPC flow control pushes back on the sender).
        The first failing event ends the stream with its status; earlier ones were acked.
        Events named by customer id are routed as they are read, without a task of their own
        (the stream's deadline bounds them all); events by alias first resolve the alias."""
        await self._admit(context, "ingest")
        catalog = await self._catalog()
        pending: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        reader = asyncio.ensure_future(self._read_stream(request_iterator, context, catalog,
                                                         pending))
        try:
            async with asyncio.timeout(self._timeout(context)):
                while (item := await pending.get()) is not None:
                    yield await self._stream_ack(*item)
                await reader  # a failure of the reader itself (a denied channel)
        except Exception as exc:
            reader.cancel()
            while not pending.empty():
                if (item := pending.get_nowait()) is not None and item[0] == "task":
                    item[1].cancel()
            await self._abort(context, exc)

    async def _read_stream(self, request_iterator, context, catalog: CompiledCatalog,
                           pending: asyncio.Queue) -> None:
        """Route each event of a stream as it arrives; None after the last (or after the
        first event that fails validation, which ends the stream in its turn)."""
        n = 0
        try:
            async for event in request_iterator:
                if event.channel:
                    await self._admit(context, "ingest", event.channel)
                where = f"events[{n}]."
                n += 1
                try:
                    item = self._route(event, _event_request(event, catalog, where), catalog,
                                       where, context)
                except Exception as exc:  # answered in order, after the events before it
                    await pending.put(("failed", exc))
                    return
                await pending.put(item)
        finally:
            await pending.put(None)

    def _route(self, event: pb.Event, checked: tuple, catalog: CompiledCatalog, where: str,
               context) -> tuple:
        """Send a checked event on its way now; what `_stream_ack` turns into its ack."""
        who, request = checked
        if who[1] is not None:  # by alias: resolve it first
            return ("task", asyncio.ensure_future(self._ingest(event, catalog, where,
                                                               self._timeout(context))))
        answer = self.client.enqueue(request)
        self.inflight += 1
        return ("routed", answer, request, event, where)

    async def _stream_ack(self, how: str, *item) -> pb.IngestAck:
        if how == "task":
            return await item[0]
        if how == "failed":
            raise item[0]
        answer, request, event, where = item
        try:
            return _ack(event, await self.client.settle(request, await answer))
        except InputError as exc:
            raise InputError(where + exc.field, exc.reason) from None
        finally:
            self.inflight -= 1

    async def IngestBatch(self, request: pb.EventBatch, context) -> pb.EventBatchAck:
        """Check every event, then route them all at once (each customer's in order, without
        a task per event) and gather the acks in order."""
        await self._admit(context, "ingest")
        catalog = await self._catalog()
        if len(request.events) > BATCH_LIMIT:
            await self._invalid(context, InputError(
                "events", f"at most {BATCH_LIMIT} events per batch, got {len(request.events)}"))
        for channel in {event.channel for event in request.events if event.channel}:
            await self._admit(context, "ingest", channel)
        checked = []
        for n, event in enumerate(request.events):
            try:
                checked.append(_event_request(event, catalog, f"events[{n}]."))
            except InputError as exc:
                await self._invalid(context, exc)
        items: list[tuple] = []
        try:
            async with asyncio.timeout(self._timeout(context)):
                for n, (event, request_checked) in enumerate(zip(request.events, checked)):
                    items.append(self._route(event, request_checked, catalog,
                                             f"events[{n}].", context))
                acks = []
                for k, item in enumerate(items):
                    items[k] = ("done",)
                    acks.append(await self._stream_ack(*item))
                return pb.EventBatchAck(acks=acks)
        except Exception as exc:
            for item in items:
                if item[0] == "task":
                    item[1].cancel()
                elif item[0] == "routed":
                    self.inflight -= 1
            await self._abort(context, exc)

    async def Respond(self, request: pb.Outcome, context) -> pb.OutcomeAck:
        await self._admit(context, "respond", request.channel)
        try:
            who = _who(request)
            if request.outcome == pb.OUTCOME_KIND_UNSPECIFIED:
                raise InputError("outcome", "must be set (impression, accept, reject, ignore "
                                            "or convert)")
            outcome = Outcome(request.outcome).name.lower()
            when = wire.optional_time_in("time", request, "time") or time.time()
        except InputError as exc:
            await self._invalid(context, exc)
        except ValueError:
            await self._invalid(context, InputError("outcome",
                                                    f"unknown outcome {request.outcome}"))
        await self._call(context, self._as(who, lambda customer_id: self.client.respond(
            customer_id, request.action_id, request.channel, outcome, when,
            request.decision_id or None)))
        return pb.OutcomeAck()

    async def GetProfile(self, request: pb.ProfileRequest, context) -> pb.Profile:
        await self._admit(context, "profile:read")
        catalog = await self._catalog()
        try:
            who = _who(request)
        except InputError as exc:
            await self._invalid(context, exc)
        now = time.time()
        profile = await self._call(context, self._as(
            who, lambda customer_id: self.client.profile(customer_id, now)))
        if profile is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no customer {_named(request)}")
        decisions = await self._call(context, asyncio.gather(*(
            self.client.decide(profile["customer_id"], ch, None, None, now=now)
            for ch in catalog.channel_names)))
        types = {**{a.name: a.type for a in catalog.catalog.attributes},
                 **{f.name: f.type for f in catalog.catalog.features}}
        return wire.profile_out(profile, types, {d.channel: d for d in decisions})

    async def ForgetCustomer(self, request: pb.ForgetRequest, context) -> pb.ForgetAck:
        await self._admit(context, "admin")
        try:
            who = _who(request)
        except InputError as exc:
            await self._invalid(context, exc)
        return pb.ForgetAck(existed=await self._call(context, self._as(who, self.client.forget)))

    async def LinkIdentity(self, request: pb.LinkRequest, context) -> pb.LinkAck:
        await self._admit(context, "ingest")
        try:
            alias_key(request.alias.type, request.alias.value)
            _require(request.customer_id, "customer_id")
            check_linkable(request.customer_id)
        except InputError as exc:
            await self._invalid(context, exc)
        return pb.LinkAck(merged=await self._call(context, self.client.link(
            request.alias.type, request.alias.value, request.customer_id)))

    async def WatchDecisions(self, request: pb.WatchRequest, context
                             ) -> AsyncIterator[pb.Decision]:
        await self._admit(context, "watch", request.channel)
        catalog = await self._catalog()
        try:
            channel, placement = _view(catalog, request.channel, request.placement)
            who = _who(request) if request.WhichOneof("customer") else (None, None)
        except InputError as exc:
            await self._invalid(context, exc)
        customer = who[0]
        if who[1] is not None:
            customer = await self._call(context, self.client.call(("resolve", who[1])))
        key = (customer, channel, placement)
        stream = _Stream()
        first = key not in self._streams
        self._streams.setdefault(key, set()).add(stream)
        try:
            if first:
                await self._watch(key, True)
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                while stream.backlog:
                    yield wire.decision_out(stream.backlog.popleft())
        finally:
            self._streams[key].discard(stream)
            if not self._streams[key]:
                del self._streams[key]
                await self._watch(key, False)

    async def _watch(self, key: tuple[str | None, str, str], active: bool) -> None:
        customer, channel, placement = key
        if customer is None:
            await self.backend.controller_call("watch_channel", self.name, channel, placement,
                                               active)
        else:
            await self.client.watch(customer, self.name, channel, placement, active)

    def deliver(self, decisions: list[Decision]) -> None:
        """Shards push here; each decision goes to the streams that watch it."""
        for d in decisions:
            for key in ((d.customer_id, d.channel, d.placement), (None, d.channel, d.placement)):
                for stream in self._streams.get(key, ()):
                    stream.backlog.append(d)
                    stream.wake.set()

    # -- AdminService --------------------------------------------------------------------------

    async def ValidateCatalog(self, request: admin_pb2.CatalogText, context
                              ) -> admin_pb2.CatalogInfo:
        await self._admit(context, "admin")
        return _catalog_info(await self._compile(request.yaml, context))

    async def PutCatalog(self, request: admin_pb2.CatalogText, context) -> admin_pb2.CatalogInfo:
        await self._admit(context, "admin")
        compiled = await self._compile(request.yaml, context)
        await self.backend.controller_call("put_catalog", request.yaml)
        return _catalog_info(compiled)

    async def RollbackCatalog(self, request, context) -> admin_pb2.CatalogInfo:
        await self._admit(context, "admin")
        try:
            await self.backend.controller_call("rollback_catalog")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        text = (await self.backend.controller_call("get_catalog"))["text"]
        return _catalog_info(compile_catalog(load_catalog(text)))

    async def GetCatalog(self, request, context) -> admin_pb2.CatalogText:
        await self._admit(context, "admin")
        catalog = await self.backend.controller_call("get_catalog")
        return admin_pb2.CatalogText(yaml=catalog["text"], version=catalog["version"])

    async def GetClusterStatus(self, request, context) -> admin_pb2.ClusterStatus:
        await self._admit(context, "admin")
        st = await self.backend.controller_call("status")
        return admin_pb2.ClusterStatus(
            nodes=st["nodes"], partitions=st["partitions"], map_version=st["map_version"],
            catalog_version=st["catalog_version"], resident=st["resident"],
            model_version=st["learner"].get("model_version", 0),
            shards=[admin_pb2.ShardStatus(
                name=s["shard"], node=s.get("node") or "", partitions=s["partitions"],
                resident=s.get("resident", 0), passivated=s.get("passivated", 0),
                queued=s.get("queued", 0), available=s.get("available", True),
                catalog_version=s.get("catalog_version", ""),
                model_version=s.get("model_version", 0)) for s in st["shards"]])

    async def ScaleShards(self, request: admin_pb2.ScaleRequest, context
                          ) -> admin_pb2.ScaleResponse:
        await self._admit(context, "admin")
        if not 1 <= request.shards <= 1024:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"shards: must be 1..1024, got {request.shards}")
        done = await self.backend.controller_call("scale", request.shards)
        return admin_pb2.ScaleResponse(shards=done["shards"], moved=done["moved"],
                                       map_version=done["version"])

    async def _compile(self, text: str, context) -> CompiledCatalog:
        try:
            return compile_catalog(load_catalog(text, "<PutCatalog>"))
        except CatalogError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class _Stream:
    """One WatchDecisions call: what waits for it (bounded: the oldest drop first)."""

    def __init__(self) -> None:
        self.backlog: deque[Decision] = deque(maxlen=WATCH_BACKLOG)
        self.wake = asyncio.Event()


def _event_request(event: pb.Event, catalog: CompiledCatalog, where: str
                   ) -> tuple[tuple[str | None, str | None], tuple]:
    """Whom an event names, and its runtime request (checked; the customer id is None for an
    event by alias, until the alias is resolved)."""
    who = _who(event, where)
    if event.channel and event.channel not in catalog.channel_index:
        raise InputError(f"{where}channel", f"unknown channel {event.channel!r} "
                                            f"(channels: {', '.join(catalog.channel_names)})")
    if event.decide_placement and not event.channel:
        raise InputError(f"{where}channel", "decide_placement needs the channel")
    when = wire.optional_time_in(f"{where}time", event, "time") or time.time()
    attributes = wire.values_in(f"{where}attributes", event.attributes)
    decide = (event.channel, event.decide_placement) if event.decide_placement else None
    return who, ("event", who[0], event.type, when, attributes, event.idempotency_key or None,
                 decide)


def _ack(event: pb.Event, result: tuple) -> pb.IngestAck:
    ack = pb.IngestAck(event_id=event.event_id, sequence=result[0], duplicate=result[1])
    if len(result) > 2:
        ack.decision.CopyFrom(wire.decision_out(result[2]))
    return ack


def _require(value: str, field: str) -> None:
    if not value:
        raise InputError(field, "is required")


def _who(message, where: str = "") -> tuple[str | None, str | None]:
    """(customer_id, None) or (None, alias key): whom a request names, checked."""
    if message.WhichOneof("customer") == "alias":
        return None, alias_key(message.alias.type, message.alias.value, f"{where}alias")
    if not message.customer_id:
        raise InputError(f"{where}customer_id", "is required (or an alias)")
    return message.customer_id, None


def _named(message) -> str:
    if message.WhichOneof("customer") == "alias":
        return f"with alias {message.alias.type}:{message.alias.value!r}"
    return repr(message.customer_id)


def _view(catalog: CompiledCatalog, channel: str, placement: str) -> tuple[str, str]:
    """The channel and placement (the channel's first placement when empty), checked."""
    ch = catalog.channel_index.get(channel)
    if ch is None:
        raise InputError("channel", f"unknown channel {channel!r} (channels: "
                                    f"{', '.join(catalog.channel_names)})")
    names = catalog.placement_names[ch]
    if placement and placement not in names:
        raise InputError("placement", f"unknown placement {placement!r} of {channel} "
                                      f"(placements: {', '.join(names)})")
    return channel, placement or names[0]


def _fallback(catalog: CompiledCatalog, customer_id: str, channel: str,
              placement: str) -> Decision:
    ch = catalog.channel_index[channel]
    actions = tuple(RankedAction(catalog.action_ids[a], catalog.group_names[
        catalog.action_group[a]], catalog.treatments[a][ch], 0.0, 0.0, 0.0, 1.0,
        float(catalog.lever[a])) for a in catalog.fallbacks.get(ch, ()))
    return Decision(f"fallback-{uuid.uuid4().hex[:16]}", customer_id, channel, placement,
                    actions, catalog.version, 0, fallback=True)


def _catalog_info(c: CompiledCatalog) -> admin_pb2.CatalogInfo:
    cat = c.catalog
    return admin_pb2.CatalogInfo(version=c.version, name=cat.name, actions=len(cat.actions),
                                 channels=len(cat.channels), event_types=len(cat.events),
                                 features=len(cat.features))


async def serve(gateway: Gateway, host: str, port: int, tls: Tls | None = None
                ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Start the gRPC server: both services, health and reflection; (server, health, port)."""
    if not gateway.auth.enabled and not is_loopback(host):
        raise ValueError(f"refusing to serve without API keys on {host}: auth may be off only "
                         f"on a loopback address")
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(gateway, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(gateway, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None)
        bound = server.add_secure_port(address, credentials)
    await server.start()
    for service in SERVICES + ("",):
        await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, checker, bound


@ray.remote(num_cpus=0, max_restarts=-1)
class GatewayActor:
    """A gateway on one node, named kairos-gateway-<n>; shards push watch changes to it."""

    def __init__(self, name: str):
        self.name = name
        self.gateway: Gateway | None = None
        self.server: grpc.aio.Server | None = None
        self.checker = None
        self._pauses: asyncio.Future | None = None

    async def start(self, host: str, port: int, keys_text: str | None = None,
                    tls: Tls | None = None) -> int:
        backend = RayBackend()
        client = await KairosClient(backend).connect()
        self.gateway = Gateway(self.name, client, backend, Auth.load(keys_text))
        await self.gateway.refresh_catalog()
        self.server, self.checker, bound = await serve(self.gateway, host, port, tls)
        pauses.settle()
        self._pauses = asyncio.ensure_future(self._keep_pauses_short())
        log.info("%s serving kairos.v1 on %s:%d", self.name, host, bound)
        return bound

    @staticmethod
    async def _keep_pauses_short() -> None:
        while True:
            await asyncio.sleep(PAUSES_CHECK_S)
            pauses.keep_short()

    async def deliver(self, decisions: list[Decision]) -> None:
        if self.gateway is not None:
            self.gateway.deliver(decisions)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Graceful: health says NOT_SERVING, calls in flight finish, then the server stops."""
        if self.server is not None:
            await self.checker.enter_graceful_shutdown()
            await self.server.stop(grace_s)
            await self.gateway.client.close()
            self._pauses.cancel()
