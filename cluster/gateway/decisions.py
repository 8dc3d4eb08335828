"""kairos.v1.DecisionService: decide, ingest, respond, watch, profiles, identity, erasure.

Each handler checks its request (requests.py), names the customer, and makes its runtime
calls through the gateway (calls.py) within the caller's deadline. The key and its scope were
checked before the handler ran (auth.py); a handler whose request names a channel holds it
against a channel-bound key with `check_channel` (an empty channel is refused to such a key);
GetProfile shows such a key only its channel's current decision (`visible_channel`); its
decisions are previews, which the shards neither log nor count (protocol.Decide's `log`),
but for the one of the channel its caller shows: the request's `shown_channel`, or a bound
key's own channel, whose outcomes (an agent's answers) then join a logged decision; for a key
that may add to the log (LOGGING; a `shown_channel` from another is refused).
A Decide the shard cannot answer in time gets the catalog's fallback, marked as such, decided
for no one: it names the customer as the request did (an alias by its anonymous id). The
ingest calls (Ingest, IngestStream, IngestBatch) are ingesting.py's.
What the customer's profile holds is for keys with profile:read: a Decide's `explain` needs
it (EXPLAINING), and a Decide or watch by alias, or by the alias's anonymous id, tells a key
without it the id as named, not that of the customer the alias is linked to
(`requests.alias_answered`; the ingest calls' decisions likewise).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator

import grpc

from kairos.core.decision import Learned
from kairos.core.errors import InputError
from kairos.core.request import fallback_decision
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster import protocol
from kairos.cluster.gateway import requests, wire
from kairos.cluster.gateway.auth import (Denied, caller, check_channel, has_scope, require_scope,
                                         visible_channel)
from kairos.cluster.gateway.bounds import host_of
from kairos.cluster.gateway.calls import FORGET, LINK, READ, Gateway, abort
from kairos.cluster.gateway.ingesting import Ingesting
from kairos.cluster.gateway.streams import FORGOTTEN, Watch
from kairos.cluster.identity import anonymous_id

# (a shard of an older version answers without saying: UNSPECIFIED)
LEARNED_FROM = {kind.value: pb.LearnedFrom.Value(f"LEARNED_FROM_{kind.name}") for kind in Learned}
# GetProfile's shown_channel has the shard log that channel's decision, which profile:read
# alone must not (a read adding to the evidence and its counts). Not the decide scope alone: the
# console's agents show it with profile:read and respond (cluster/console/session.py), and
# respond already adds outcomes to the log
LOGGING = ("decide", "respond")
SHOWING = ("shown_channel logs the decision the caller shows, which needs a key with the "
           "'decide' or 'respond' scope")
# Each dropped action's reason is the customer's: the consent they gave or withheld on the
# channel, the rules their profile failed, their contact history; left out of a key's answer,
# a consent would still read from which actions are missing (every action is in one list)
EXPLAINING = ("explain says why each action was dropped for this customer (their consent, the "
              "rules their profile failed, their contact history), which needs a key with the "
              "'profile:read' scope")


class DecisionService(Ingesting, decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.client = gateway.client

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        try:
            check_channel(request.channel)
            if request.explain:
                require_scope(requests.PROFILE_SCOPE, EXPLAINING)
            catalog, who, (channel, placement), context_values = await self.gateway.checked(
                lambda catalog: (catalog, requests.who(request),
                                 requests.view(catalog, request.channel, request.placement),
                                 requests.context_request(catalog, request)),
                self.gateway.timeout(context))
        except (Denied, InputError, TimeoutError) as exc:
            await abort(context, exc)
        decision = await self.gateway.call(
            context, self.gateway.as_customer(who, lambda customer_id: self.client.decide(
                customer_id, channel, placement, context_values,
                max_actions=request.max_actions, explain=request.explain,
                record_impression=request.record_impression,
                expires=self.gateway.expires(context))),
            fallback=lambda: fallback_decision(catalog, requests.named_id(who), channel,
                                               placement, request.max_actions))
        answer = wire.decision_out(decision, catalog.agent_texts)
        answered = requests.alias_answered(who)
        if answered is not None:
            answer.customer_id = answered
        return answer

    async def Respond(self, request: pb.Outcome, context) -> pb.OutcomeAck:
        try:
            check_channel(request.channel)
            if request.offline:
                require_scope("feedback", "offline outcomes need a key with the 'feedback' "
                                          "scope")
            checked = await self.gateway.checked(
                lambda catalog: requests.outcome_request(request, catalog),
                self.gateway.timeout(context))
        except (Denied, InputError, TimeoutError) as exc:
            await abort(context, exc)
        learned = await self.gateway.call(context, self._learned(checked))
        return pb.OutcomeAck(learned_from=LEARNED_FROM.get(learned, pb.LEARNED_FROM_UNSPECIFIED))

    async def _learned(self, checked: requests.OutcomeRequest) -> str:
        """What the models learned from a Respond's outcome. One by an alias's anonymous id is
        sent by that id; refused as a decision issued to none of the ids its shard tried, it is
        sent again as the alias (`requests.retried_as_alias`) only where the alias resolves to
        a customer the first send did not reach: not the id itself (a visitor never linked),
        nor the customer the id's redirect sent it to (a link whose redirect lasts). There the
        same refusal stands, which a second send would charge to that customer's outcome rate
        once more (shard/customers.py: guesses count)."""
        who = checked.who
        if who.alias_key is not None:
            return await self._answer(_outcome(
                checked, who, await self.client.resolve_key(who.alias_key)))
        first = _outcome(checked, who, who.customer_id)
        reply = await self.client.enqueue(first)
        try:
            return (await self.client.settle(first, reply)).value
        except InputError as refused:
            alias = requests.retried_as_alias(who, refused)
            if alias is None:
                raise
            customer_id = await self.client.resolve_key(alias.alias_key)
            if customer_id == (reply.customer_id if isinstance(reply, protocol.Merged)
                               else who.customer_id):
                raise
        return await self._answer(_outcome(checked, alias, customer_id))

    async def GetRoutes(self, request: pb.RoutesRequest, context) -> pb.Routes:
        version, partitions, endpoints, owners = await self.gateway.routes()
        return pb.Routes(version=version, partitions=partitions, endpoints=endpoints,
                         owners=owners)

    async def GetProfile(self, request: pb.ProfileRequest, context) -> pb.Profile:
        catalog = await self.gateway.catalog()
        try:
            who = requests.who(request)
            if request.shown_channel:
                check_channel(request.shown_channel)
                if not may_log():
                    raise Denied(True, SHOWING)
            logged = requests.shown_channel(catalog, request)
        except (Denied, InputError) as exc:
            await abort(context, exc)
        now = time.time()
        profile = await self.gateway.call(context, self.gateway.as_customer(
            who, lambda customer_id: self.client.profile(customer_id, now)), retry=READ)
        if profile is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no customer {requests.named(request)}")
        shown = visible_channel()  # a channel-bound key sees its channel's decision only
        if may_log():  # the one decision a channel shows: evidence, not a preview
            logged = logged or shown
        channels = [ch for ch in catalog.channel_names if shown is None or ch == shown]
        if shown is not None:  # and its channel's interactions
            profile = {**profile, "history": [h for h in profile["history"]
                                              if h["channel"] == shown]}
        expires = self.gateway.expires(context)  # the logged one, unseen, would be evidence
        decisions = await self.gateway.call(context, asyncio.gather(*(
            self._answer(protocol.Decide(customer_id=profile["customer_id"], channel=ch,
                                          context={}, explain=request.explain, now=now,
                                          log=ch == logged, expires=expires))
            for ch in channels)), retry=READ)
        types = {**{a.name: a.type for a in catalog.catalog.attributes},
                 **{f.name: f.type for f in catalog.catalog.features}}
        consent = {purpose: attribute is None or bool(profile["attributes"].get(attribute))
                   for purpose, attribute in catalog.catalog.consent.items()}
        return wire.profile_out(profile, types, {d.channel: d for d in decisions},
                                catalog.agent_texts, consent)

    async def _answer(self, request: protocol.Request) -> Any:
        """What a request's shard answers (a decision GetProfile shows an agent, the customer
        a forget by alias forgets, what a Respond's outcome was learned from)."""
        reply = await self.client.settle(request, await self.client.enqueue(request))
        return reply.value

    async def ForgetCustomer(self, request: pb.ForgetRequest, context) -> pb.ForgetAck:
        try:
            who = requests.who(request)
        except InputError as exc:
            await abort(context, exc)
        if who.alias_key is None:
            ids = {who.customer_id}
            existed = await self.gateway.call(context, self.client.forget(who.customer_id),
                                              retry=FORGET)
        else:  # the forget's own resolution (client.forget_key's): a retry cut after its
            # Retire still names the customer, the id the alias's streams were opened on
            customer = await self.gateway.call(context, self._answer(
                protocol.Resolve(key=who.alias_key, for_forget=True)), retry=FORGET)
            ids = {anonymous_id(who.alias_key), customer}
            existed = await self.gateway.call(
                context, self.client.forget(customer, who.alias_key), retry=FORGET)
        self.gateway.watches.end(ids, FORGOTTEN)
        return pb.ForgetAck(existed=existed)

    async def LinkIdentity(self, request: pb.LinkRequest, context) -> pb.LinkAck:
        try:
            requests.link_target(request)
        except InputError as exc:
            await abort(context, exc)
        return pb.LinkAck(merged=await self.gateway.call(context, self.client.link(
            request.alias.type, request.alias.value, request.customer_id), retry=LINK))

    async def WatchDecisions(self, request: pb.WatchRequest, context
                             ) -> AsyncIterator[pb.Decision]:
        try:
            check_channel(request.channel)
            catalog = await self.gateway.catalog()
            channel, placement = requests.view(catalog, request.channel, request.placement)
            who = requests.who(request) if request.WhichOneof("customer") else \
                requests.Who(None, None)
        except (Denied, InputError) as exc:
            await abort(context, exc)
        customer, answered = who.customer_id, requests.alias_answered(who)
        if who.alias_key is not None:
            customer = await self.gateway.call(context, self.client.resolve_key(who.alias_key),
                                               retry=READ)
        try:
            async with contextlib.aclosing(self.gateway.watches.follow(
                    Watch(customer, channel, placement),
                    lambda: context.send_initial_metadata(()),
                    key=caller(), host=host_of(context.peer()))) as decisions:
                async for decision in decisions:
                    # the running catalog's texts: the stream outlives switches
                    out = wire.decision_out(decision, (await self.gateway.catalog()).agent_texts)
                    if answered is not None:
                        out.customer_id = answered
                    yield out
        except Exception as exc:
            await abort(context, exc, READ)


def _outcome(checked: requests.OutcomeRequest, who: requests.Who, customer_id: str
             ) -> protocol.Outcome:
    """A Respond's outcome for `customer_id`, whom `who` named (resolved, for an alias)."""
    return protocol.Outcome(
        customer_id=customer_id, action_id=checked.action_id, channel=checked.channel,
        outcome=checked.outcome, when=checked.time, decision_id=checked.decision_id,
        value=checked.value, idempotency_key=checked.idempotency_key,
        via=who.via(customer_id))


def may_log() -> bool:
    """Whether the current call's key may have GetProfile log a decision (LOGGING)."""
    return any(has_scope(scope) for scope in LOGGING)
