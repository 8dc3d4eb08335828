"""A DecisionService client that routes: each call by customer id goes to its owner shard's own
endpoint (shard/api.py), one hop fewer than through a gateway; everything else, and every call
while no route is known, goes to the gateway.

The routes come from the gateway's GetRoutes and are fetched again every `refresh_s`; sooner
when an endpoint says they are stale, and within RETRY_ROUTES_S after one answers UNAVAILABLE
(its shard stopped, restarted or left). The first fetch, and the one such an answer asks for,
is waited for by the call that starts it; the others run in the background while calls go on
with the last routes, which a failed fetch, or an answer that
does not hold together (an owner missing or naming no endpoint), leaves in place. A route to a
shard that is up but no longer owns the customer costs a hop: that shard sends the call on and
answers (an error too) with the map's version in a trailer (ROUTES_VERSION_KEY, from
shard/api.py), and a version newer than the routes' has them fetched again at once (at most
every HINTED_ROUTES_S, as the gateway's map may trail the shard's). One to a shard that is gone
answers UNAVAILABLE, and retrying is the caller's, as the .proto says for every call (Ingest
with its idempotency_key): the retry goes where the new routes say.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import grpc

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.cli.remote import plaintext_refusal
from kairos.cluster.control.partitions import partition_of

log = logging.getLogger(__name__)

ROUTED = ("Decide", "Ingest", "Respond")  # the calls that name one customer by id
RETRY_ROUTES_S = 1.0  # after an UNAVAILABLE endpoint, the routes are asked for this soon
HINTED_ROUTES_S = 0.25  # the most often an endpoint's stale-route trailer has them asked for
ROUTES_VERSION_KEY = "kairos-routes-version"  # the trailer of a call a stale route sent on


class RoutedClient:
    """`Decide`, `Ingest` and `Respond` routed by the request's customer_id (one named by
    alias goes to the gateway); any other DecisionService method through the gateway
    (`client.GetProfile(...)`). `metadata` (the API key) goes with every call."""

    def __init__(self, gateway: str, metadata: tuple[tuple[str, str], ...] = (),
                 credentials: grpc.ChannelCredentials | None = None, refresh_s: float = 5.0):
        self.metadata = metadata
        self.refresh_s = refresh_s
        self._credentials = credentials
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, decision_pb2_grpc.DecisionServiceStub] = {}
        self._fetching = threading.Lock()  # held while a routes fetch runs: one at a time
        self._channels_lock = threading.Lock()  # apart, so no call waits out a fetch for one
        self._warned = False  # a malformed answer is logged once
        self._gateway = self._stub(gateway)
        self._routes = pb.Routes()
        self._due = -float("inf")  # when the routes are to be asked for again
        self._urgent = False  # the next fetch is for an endpoint gone or a newer map
        self._fetched = -float("inf")  # when they were last asked for

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method in ROUTED:
            return lambda request, **kwargs: self._routed(method, request, kwargs)
        call = getattr(self._gateway, method)
        return lambda request, **kwargs: call(request, metadata=self.metadata, **kwargs)

    def stub_for(self, customer_id: str) -> decision_pb2_grpc.DecisionServiceStub:
        """The owner's endpoint's stub, or the gateway's where no route is known."""
        routes = self._current()
        if not customer_id or not routes.partitions:
            return self._gateway
        endpoint = routes.endpoints[routes.owners[partition_of(customer_id, routes.partitions)]]
        return self._stub(endpoint) if endpoint else self._gateway

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _routed(self, method: str, request: Any, kwargs: dict[str, Any]) -> Any:
        stub = self.stub_for(request.customer_id)
        try:
            answer, call = getattr(stub, method).with_call(request, metadata=self.metadata,
                                                           **kwargs)
        except grpc.RpcError as exc:
            if stub is not self._gateway:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._due = min(self._due, time.monotonic() + RETRY_ROUTES_S)
                    self._urgent = True
                # an error answer may say it too
                self._hinted(getattr(exc, "trailing_metadata", tuple)() or ())
            raise
        if stub is not self._gateway:
            self._hinted(call.trailing_metadata() or ())
        return answer

    def _hinted(self, trailer: Any) -> None:
        """An endpoint that did not own the customer said the map's version: routes older
        than it are asked for again, as soon as HINTED_ROUTES_S allows."""
        for key, value in trailer:
            if key == ROUTES_VERSION_KEY and value.isascii() and value.isdigit() and \
                    int(value) > self._routes.version:
                self._due = min(self._due, self._fetched + HINTED_ROUTES_S)
                self._urgent = True

    def _current(self) -> pb.Routes:
        """The routes; asked for again when due, by one fetch at a time. Only the first is
        waited for (by the caller that starts it); later ones run in the background while the
        last routes serve."""
        if time.monotonic() >= self._due and self._fetching.acquire(blocking=False):
            # the first, and one an UNAVAILABLE endpoint or a newer map asked for: a retry
            # that started it waits, so that it goes where the new routes say
            waited = self._fetched == -float("inf") or self._urgent
            self._fetched, self._urgent = time.monotonic(), False
            self._due = self._fetched + self.refresh_s
            if waited:
                self._fetch()
            else:
                threading.Thread(target=self._fetch, name="kairos-routes", daemon=True).start()
        return self._routes

    def _fetch(self) -> None:
        """GetRoutes, taken when it holds together; the last routes stand otherwise (none yet:
        the gateway serves all). Releases the fetch lock `_current` took."""
        try:
            routes = self._gateway.GetRoutes(pb.RoutesRequest(), metadata=self.metadata,
                                             timeout=5)
            if usable(routes):
                self._routes = routes
            elif not self._warned:
                self._warned = True
                log.warning("the gateway's routes do not hold together (%d partitions, "
                            "%d owners, %d endpoints, highest owner %d): the last routes stand",
                            routes.partitions, len(routes.owners), len(routes.endpoints),
                            max(routes.owners, default=-1))
        except (grpc.RpcError, ValueError):  # ValueError: closed meanwhile (close())
            pass
        finally:
            self._fetching.release()

    def _stub(self, target: str) -> decision_pb2_grpc.DecisionServiceStub:
        stub = self._stubs.get(target)
        if stub is None:
            with self._channels_lock:
                if target not in self._stubs:
                    refusal = None if self._credentials else plaintext_refusal(target)
                    if refusal:  # the API key would cross the network in clear
                        raise ValueError(refusal)
                    channel = grpc.secure_channel(target, self._credentials) \
                        if self._credentials else grpc.insecure_channel(target)
                    self._channels[target] = channel
                    self._stubs[target] = decision_pb2_grpc.DecisionServiceStub(channel)
                stub = self._stubs[target]
        return stub


def usable(routes: pb.Routes) -> bool:
    """Whether every partition has an owner naming one of the endpoints; no partitions at all
    (the gateway knows no map) is usable too, and sends every call to the gateway."""
    if not routes.partitions:
        return not routes.owners
    return len(routes.owners) == routes.partitions and \
        max(routes.owners) < len(routes.endpoints)
