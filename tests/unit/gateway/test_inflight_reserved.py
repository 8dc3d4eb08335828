"""A call counts in flight from its admission (task A, item 1): the check of a key's share
and the count it is checked against were apart, the count taken only once the handler had
awaited its request's checks (a catalog compile, for a request made for the catalog the
cluster switched to), so a burst of one key's calls all admitted before any was counted all
got in, past the key's share (and past the limit, a burst larger than it). Over real gRPC on
127.0.0.1 and the in-process backend, its shard held stuck, at the limit of 40 of
test_inflight_fair_share (the kept line 35). And every way such a call ends gives its count
back, once: a count left behind refuses the key's later calls for good (issue 18, finding
12)."""
from __future__ import annotations

import asyncio
import threading
from typing import Callable, Iterator

import grpc
import pytest

from kairos.cluster.gateway import calls, requests
from kairos.cluster.gateway.admission import Shedder
from kairos.cluster.gateway.inflight import held
from kairos.core.catalog import default_catalog_text
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb

from tests.support.held_compile import HeldCompile
from tests.support.waiting import wait_until
from tests.unit.gateway.test_catalog_switch import LAUNCH
from tests.unit.gateway.test_inflight_fair_share import LIMIT, WEB, Rig, refused

KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web,
     scopes: [ingest, decide, respond, feedback]}
  - {key: 'app-ingest-decide-0123456789', name: app, channel: app, scopes: [ingest, decide]}
"""
# the action `launch` and the event type `launched`, which the catalog before it lacks
NEW_CATALOG = default_catalog_text().replace("version: ", "version: launch-", 1).replace(
    "actions:\n", LAUNCH, 1).replace("\nevents:\n", "\nevents:\n  launched:\n    fields: {}\n", 1)


class Switching(Rig):
    """A Rig whose cluster switched to NEW_CATALOG, which the gateway compiles only once
    `compile` is released: a request made for it (a Respond naming `launch`, an event `launched`),
    refused by the catalog the gateway has, waits for it (`Gateway.checked`); `waiting`
    counts such refusals."""

    def __init__(self, monkeypatch) -> None:
        super().__init__(KEYS)
        self.compile = HeldCompile()
        self.waiting = 0
        self.kept_open: list[threading.Event] = []  # streams' senders, until the rig closes

        def counting(check: Callable) -> Callable:
            def checked(*args, **kwargs):
                try:
                    return check(*args, **kwargs)
                except InputError:
                    self.waiting += 1
                    raise
            return checked

        monkeypatch.setattr(calls, "compiled_from_text", self.compile)
        for name in ("outcome_request", "event_request"):
            monkeypatch.setattr(requests, name, counting(getattr(requests, name)))
        self.gateway.run(self.backend.controller().put_catalog(NEW_CATALOG))

    def respond(self, action: str = "launch", timeout_s: float = 60) -> grpc.Future:
        self.sent += 1
        return self.stub.Respond.future(pb.Outcome(
            customer_id=f"c{self.sent}", channel="web", action_id=action, outcome=pb.ACCEPT,
            offline=True), metadata=WEB, timeout=timeout_s)

    def decide_on(self, channel: str, timeout_s: float = 60) -> grpc.Future:
        self.sent += 1
        return self.stub.Decide.future(pb.DecideRequest(customer_id=f"c{self.sent}",
                                                        channel=channel),
                                       metadata=WEB, timeout=timeout_s)

    def close(self) -> None:
        self.compile.release.set()
        for sender in self.kept_open:
            sender.set()
        super().close()


@pytest.fixture
def switching(monkeypatch) -> Iterator[Switching]:
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    made = Switching(monkeypatch)
    made.gate(False)
    yield made
    made.close()


def test_a_burst_of_a_keys_calls_admitted_before_any_ran_stops_at_its_share(switching):
    """40 Responds of the web key at once, each waiting for the new catalog's compile: before
    the fix all 40 were admitted (nothing counted yet) and, once the catalog was there, all
    40 were in flight, the web key alone past the kept line (35) and at the limit. Counted
    from admission, the 36th on is refused, and 35 are in flight once the compile is done."""
    burst = [switching.respond() for _ in range(LIMIT)]

    def ended() -> int:
        return sum(call.done() for call in burst)
    wait_until(lambda: ended() + switching.waiting == LIMIT, 20,
               "every Respond refused or waiting for the new catalog")
    switching.compile.release.set()
    wait_until(lambda: switching.held()[0] + ended() == LIMIT, 20,
               "every Respond refused or in flight")
    assert switching.held() == (35, {"web": 35})
    late = [call for call in burst if call.done()]
    assert len(late) == 5
    assert all("35 of them of key 'web'" in refused(call.result) for call in late)
    switching.gate(True)
    for call in burst:
        if call not in late:
            call.result(20)
    wait_until(lambda: switching.held() == (0, {}), 10, "no call in flight, no key counted")


def _by_id(key: str, type_: str = "app_open") -> pb.Event:
    return pb.Event(customer_id=f"id-{key}", type=type_, idempotency_key=key, channel="web")


def _by_alias(key: str) -> pb.Event:
    return pb.Event(alias=pb.Alias(type="cookie", value=f"ck-{key}"), type="app_open",
                    idempotency_key=key, channel="web")


def _stream(rig: Rig, events: list[pb.Event]) -> grpc.Future:
    """An IngestStream of the web key sending `events`, kept open until cancelled."""
    done = threading.Event()
    rig.kept_open.append(done)

    def sent() -> Iterator[pb.Event]:
        yield from events
        done.wait(60)
    return rig.stub.IngestStream(sent(), metadata=WEB, timeout=60)


def _shed(rig: Switching) -> None:
    """The gateway sheds every call (a Shedder at a share of 1; its loop runs the one before)."""
    async def shed() -> None:
        rig.gateway.gateway.shedder = shedder = Shedder(draw=lambda: 0.0)
        shedder.shed_share = 1.0
    rig.gateway.run(shed())


def _raw(rig: Switching, data: bytes) -> grpc.Future:
    return rig.channel.unary_unary("/kairos.v1.DecisionService/Decide").future(
        data, metadata=WEB, timeout=10)


# How a call of the web key ends: (start it, what it holds at the stuck shard or in a wait for
# the new catalog's compile, how it ends: "cancel", or the status it ends with)
ENDINGS = {
    "refused by its handler": (lambda rig: rig.decide_on("app"), 0, "PERMISSION_DENIED"),
    "unparseable": (lambda rig: _raw(rig, b"\xff\xff"), 0, "INVALID_ARGUMENT"),
    "shed": (lambda rig: (_shed(rig), rig.decide_on("web"))[1], 0, "RESOURCE_EXHAUSTED"),
    "cancelled": (lambda rig: rig.decide_on("web"), 1, "cancel"),
    "past its deadline": (lambda rig: rig.respond("complete_the_look", 1.5), 1,
                          "DEADLINE_EXCEEDED"),
    "fallback": (lambda rig: rig.decide_on("web", 1.5), 1, "OK"),
    "past its deadline waiting for the catalog": (lambda rig: rig.respond("launch", 1.5), 1,
                                                  "DEADLINE_EXCEEDED"),
    "cancelled waiting for the catalog": (lambda rig: rig.respond("launch"), 1, "cancel"),
    "an Ingest by alias, cancelled": (lambda rig: rig.stub.Ingest.future(
        _by_alias("a1"), metadata=WEB, timeout=60), 1, "cancel"),
    "a stream's event refused by its check": (lambda rig: (rig.compile.release.set(), _stream(
        rig, [_by_id("e1", "no_such_type")]))[1], 0, "INVALID_ARGUMENT"),
    "a stream's events, by id, by alias and waiting for the catalog, cancelled": (
        lambda rig: _stream(rig, [_by_id("e1"), _by_alias("e2"), _by_id("e3", "launched")]),
        3, "cancel"),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_calls_count_is_given_back_however_it_ends(switching, ending):
    """Each way a call of the web key ends leaves no count behind, the shard still stuck (no
    answer gives it back); while it waits, each of its calls counts once (an Ingest's
    `within`, or a stream's event by alias in its task, does not count it again)."""
    start, holds, end = ENDINGS[ending]
    call = start(switching)
    if holds:
        wait_until(lambda: switching.held() == (holds, {"web": holds}) or call.done(), 20,
                   f"{holds} calls of the web key in flight")
        assert switching.held() == (holds, {"web": holds})  # each counted once
    if end == "cancel":
        call.cancel()
    else:
        wait_until(call.done, 20, "the call ended")
        try:
            call.result()
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code.name == end
    wait_until(lambda: switching.held() == (0, {}), 10, "no count left, the shard still stuck")


def test_a_held_calls_mark_ends_with_it_and_a_catalog_refresh_it_starts_carries_none():
    """Review of c46f182, L1: `hold` marked the call's task counted for good, so work its task
    went on with after the call, and the catalog refresh a counted call starts (a task every
    caller shares, run in a copy of the starter's context), would count nothing."""
    gateway = calls.Gateway("g", None, None)
    seen: list[bool] = []

    async def refresh_catalog() -> None:
        seen.append(held())
    gateway.refresh_catalog = refresh_catalog

    async def call() -> bool:
        token = gateway.hold("web")
        assert held()
        gateway._start_refresh()
        await gateway._refresh
        gateway.release("web", token)
        return held()
    assert asyncio.run(call()) is False
    assert seen == [False] and gateway.inflight == 0 and gateway.inflight_of == {}
