"""The console's calls to a Kairos gateway, over gRPC as any channel makes them.

Every call carries the signed-in agent's key, so the gateway's scopes decide what an agent may
do: the console holds no standing rights of its own and never reaches into Ray. gRPC failures
become `GatewayError`s that say what an agent's screen should show (the gateway down, a
customer unknown, a key refused), not status codes.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.cli.remote import channel_to
from kairos.cluster.gateway.auth import METADATA_KEY
from kairos.cluster.gateway.streams import WATCH_AGAIN

CALL_TIMEOUT_S = 5.0  # an agent waits on a page, not on a batch job
VALIDATE_TIMEOUT_S = 60.0  # compiling a catalog of thousands of actions takes a while
HEARTBEAT_S = 15.0  # a quiet live page still hears from the server (and a closed one is noticed)
BURST_S = 0.02  # pushes this close together are one change to show
MAX_ANSWER_BYTES = 64 << 20
OUTCOMES = {"accept": pb.ACCEPT, "reject": pb.REJECT, "not_now": pb.IGNORE}


class GatewayError(Exception):
    """A call that failed, by what the agent sees: `kind` is one of "down" (no gateway
    answers), "busy" (the gateway sheds load: try again shortly), "not_found", "denied" (the
    key lacks a scope), "invalid" (the gateway refused the request), "again" (the gateway
    ended a watch that a new one overcomes at once: its view left the catalog, or it fell
    behind) or "failed". `code`: the gRPC status's name ("" for a failure the console found
    itself)."""

    KINDS = {grpc.StatusCode.UNAVAILABLE: "down", grpc.StatusCode.DEADLINE_EXCEEDED: "down",
             grpc.StatusCode.RESOURCE_EXHAUSTED: "busy",
             grpc.StatusCode.NOT_FOUND: "not_found",
             grpc.StatusCode.PERMISSION_DENIED: "denied",
             grpc.StatusCode.UNAUTHENTICATED: "denied",
             grpc.StatusCode.INVALID_ARGUMENT: "invalid",
             grpc.StatusCode.FAILED_PRECONDITION: "invalid"}

    def __init__(self, kind: str, detail: str, code: str = ""):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.code = code

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> "GatewayError":
        return cls.status(exc.code(), exc.details())

    @classmethod
    def status(cls, code: grpc.StatusCode, details: str | None) -> "GatewayError":
        kind = cls.KINDS.get(code, "failed")
        if kind in ("not_found", "busy") and WATCH_AGAIN in (details or ""):
            kind = "again"
        return cls(kind, f"{code.name}: {details}", code.name)


@dataclass(frozen=True)
class Lookup:
    """Who an agent searched for: a customer id, or an alias of one (type: cookie, device,
    email)."""

    value: str
    alias_type: str | None = None

    def fields(self) -> dict:
        if self.alias_type is None:
            return {"customer_id": self.value}
        return {"alias": pb.Alias(type=self.alias_type, value=self.value)}


class GatewayClient:
    """One gRPC channel to a gateway, shared by every session: the key goes with each call."""

    def __init__(self, target: str):
        # a profile explained on every channel of a large catalog outgrows gRPC's 4 MiB
        self._channel = channel_to(target, aio=True, options=(
            ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),))
        self._decisions = decision_pb2_grpc.DecisionServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    @staticmethod
    def _metadata(key: str) -> tuple[tuple[str, str], ...]:
        return ((METADATA_KEY, key),)

    async def _unary(self, method, request, key: str, timeout_s: float = CALL_TIMEOUT_S):
        try:
            return await method(request, timeout=timeout_s, metadata=self._metadata(key))
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.of(exc) from None

    async def profile(self, key: str, who: Lookup, explain: bool = False,
                      shown_channel: str = "") -> pb.Profile:
        """The golden record, with the best actions on every channel the key may see (with
        `explain`: why each won, and what was dropped). Those are previews, unlogged, but
        for the decision of `shown_channel` (the one an agent answers), if any."""
        return await self._unary(self._decisions.GetProfile, pb.ProfileRequest(
            explain=explain, shown_channel=shown_channel, **who.fields()), key)

    async def decide(self, key: str, customer_id: str, channel: str) -> pb.Decision:
        """The channel's decision as a channel asks for it, nothing recorded: when the
        customer's shard does not answer in time, the gateway's fallback (`fallback` set)."""
        return await self._unary(self._decisions.Decide, pb.DecideRequest(
            customer_id=customer_id, channel=channel), key)

    async def respond(self, key: str, customer_id: str, channel: str, decision_id: str,
                      action_id: str, outcome: str, answering: str = "") -> int:
        """Records the agent's answer to one of a decision's actions once, and says what the
        gateway learned from it (`pb.LearnedFrom`). The idempotency key names the decision
        and the action, not the outcome (one answer per action a decision showed), so an
        answer sent again after a timeout is not recorded twice, and neither is another
        outcome for the same action: LEARNED_FROM_DUPLICATE, and the first one stands (the
        gateway's ids are longer than a key may be: a digest). `answering`: the decision the
        agent answered, where it is not `decision_id` (a preview's: app.py `_answer`), which
        names the key."""
        answered = answering or decision_id
        answer = hashlib.sha256(f"{answered}\x00{action_id}".encode()).hexdigest()
        ack = await self._unary(self._decisions.Respond, pb.Outcome(
            customer_id=customer_id, channel=channel, decision_id=decision_id,
            action_id=action_id, outcome=OUTCOMES[outcome],
            idempotency_key=f"console:{answer}"), key)
        return ack.learned_from

    async def status(self, key: str) -> admin_pb2.ClusterStatus:
        return await self._unary(self._admin.GetClusterStatus,
                                 admin_pb2.ClusterStatusRequest(), key)

    async def running_catalog(self, key: str) -> admin_pb2.CatalogText:
        return await self._unary(self._admin.GetCatalog, admin_pb2.GetCatalogRequest(), key)

    async def validate(self, key: str, text: str) -> admin_pb2.CatalogInfo:
        """The catalog's summary; GatewayError "invalid" carries its error (file, line:column,
        path, action)."""
        return await self._unary(self._admin.ValidateCatalog, admin_pb2.CatalogText(yaml=text),
                                 key, VALIDATE_TIMEOUT_S)

    async def changes(self, key: str, customer_id: str, channels: list[str]
                      ) -> AsyncIterator[set[str]]:
        """The channels whose decisions the shards pushed for the customer, a burst at a time
        (a watch per channel: an event on one channel can change the best action on
        another). The first item, `{"*"}`, comes once every watch is in place, so a change
        made while they were being set up is not missed; an empty set comes after
        HEARTBEAT_S without a push. Ends with GatewayError when a watch fails or ends.

        What was pushed is only which channels changed, a set, however long the reader
        takes: a browser that stops reading holds up nothing but its own stream."""
        changed: set[str] = set()
        failed: list[GatewayError] = []
        woken = asyncio.Event()
        calls = [self._decisions.WatchDecisions(
            pb.WatchRequest(customer_id=customer_id, channel=channel),
            metadata=self._metadata(key)) for channel in channels]

        async def follow(call) -> None:
            try:
                async for decision in call:
                    changed.add(decision.channel)
                    woken.set()
                failed.append(await _ended(call))
            except grpc.aio.AioRpcError as exc:
                failed.append(GatewayError.of(exc))
            woken.set()

        tasks = [asyncio.ensure_future(follow(call)) for call in calls]
        try:
            try:
                for call in calls:
                    await asyncio.wait_for(call.initial_metadata(), CALL_TIMEOUT_S)
                    # the gateway sends its metadata once the watch is registered; a refusal
                    # (busy, denied, an unknown channel) comes as trailers only, which end
                    # the wait for metadata too, with none
                    if call.done():
                        raise await _ended(call)
            except grpc.aio.AioRpcError as exc:
                raise GatewayError.of(exc) from None
            except asyncio.TimeoutError:
                raise GatewayError("down", "the watch did not start in time") from None
            yield {"*"}
            while True:
                try:
                    await asyncio.wait_for(woken.wait(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    yield set()
                    continue
                await asyncio.sleep(BURST_S)  # one event pushes on several channels at once
                woken.clear()
                if failed:
                    raise failed[0]
                burst = set(changed)
                changed.clear()
                yield burst
        finally:
            for call in calls:
                call.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _ended(call: grpc.aio.UnaryStreamCall) -> GatewayError:
    """Why a watch that has ended did: its status, or "down" for one the gateway closed as
    done (a watch never ends of its own accord)."""
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return GatewayError("down", "a watch ended")
    return GatewayError.status(code, await call.details())
