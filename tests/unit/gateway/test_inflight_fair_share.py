"""Each API key's share of GATEWAY_INFLIGHT_LIMIT (gateway review M3, rounds 2 and 3), over
real gRPC on 127.0.0.1 and the in-process backend, its shard held stuck (a gate) so that calls
stay in flight, and on `Gateway.check_capacity` itself for its bounds.

The rule, at this file's limit of 40 (GATEWAY_KEY_SHARE_FROM 0.75: `fair` 30; the kept line
35, half way to the limit; the floor, 64 by default, at most 1/16 of the 5 past the line, and
at least 1): up to 30 in flight, every call is admitted; past it, a key's call within the floor
always is, up to 39, and the last call to the limit only for a key holding none; past 35, no
other; below that, a key holding nothing gets one call or batch in, and a key holding calls up
to its share, 35 split among the keys with calls in flight. A gateway without keys, or with
one, has no shares. The counts go back to nothing once calls, batches and streams end,
cancelled included (a count left behind would refuse the key for good: issue 18, finding 12);
a stream's event without room ends its stream RESOURCE_EXHAUSTED, the events before it acked,
it and none after it applied, which its message says (NO_ROOM)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from typing import Iterator

import grpc
import pytest

from kairos.cluster.gateway import auth, calls
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.ingesting import NO_ROOM
from kairos.cluster.gateway.streambounds import Open
from kairos.cluster.transport.client import Busy
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.waiting import wait_until
from tests.unit.gateway.test_gateway_pressure import GatedBackend

KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'app-ingest-decide-0123456789', name: app, channel: app, scopes: [ingest, decide]}
  - {key: 'crm-ingest-decide-0123456789', name: crm, scopes: [ingest, decide]}
  - {key: 'dev-ingest-decide-0123456789', name: dev, scopes: [ingest, decide]}
"""
ONE_KEY = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
"""
WEB = (("x-api-key", "web-ingest-decide-0123456789"),)
APP = (("x-api-key", "app-ingest-decide-0123456789"),)
CRM = (("x-api-key", "crm-ingest-decide-0123456789"),)
DEV = (("x-api-key", "dev-ingest-decide-0123456789"),)
CHANNEL = {WEB: "web", APP: "app", CRM: "web", DEV: "web"}  # crm and dev are unbound
LIMIT = 40


class Rig:
    """A gateway with `keys`, its shard's gate, and a stub."""

    def __init__(self, keys: str | None = KEYS) -> None:
        self.backend = GatedBackend()
        self.gateway = InProcessGateway(Auth.load(keys), self.backend)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.port}")
        self.stub = DecisionServiceStub(self.channel)
        self.sent = 0  # customers named so far: each call's is new
        self.kept: list[grpc.Future] = []  # the calls held: a future dropped cancels its call

    def gate(self, open_: bool) -> None:
        async def gate() -> None:
            (self.backend.gate.set if open_ else self.backend.gate.clear)()
        self.gateway.run(gate())

    def held(self) -> tuple[int, dict[str, int]]:
        """The calls in flight, in all and by key label (read on the gateway's loop)."""
        async def held() -> tuple[int, dict[str, int]]:
            gateway = self.gateway.gateway
            return gateway.inflight, dict(gateway.inflight_of)
        return self.gateway.run(held())

    def decide(self, metadata: tuple = ()) -> grpc.Future:
        self.sent += 1
        return self.stub.Decide.future(pb.DecideRequest(
            customer_id=f"c{self.sent}", channel=CHANNEL.get(metadata, "web")),
            metadata=metadata, timeout=60)

    def event(self, metadata: tuple = ()) -> pb.Event:
        self.sent += 1
        return pb.Event(customer_id=f"c{self.sent}", type="app_open", idempotency_key=
                        f"e{self.sent}", channel=CHANNEL.get(metadata, "web"))

    def flood(self, metadata: tuple) -> tuple[list[grpc.Future], str]:
        """A key's Decides, each held at the stuck shard, one after another until one is
        refused RESOURCE_EXHAUSTED: those held, and the refusal's message."""
        held = []
        while len(held) <= LIMIT:
            in_flight = self.held()[0] + 1
            call = self.decide(metadata)
            wait_until(lambda: call.done() or self.held()[0] == in_flight, 10,
                       "the Decide counted in flight, or refused")
            if call.done():
                with pytest.raises(grpc.RpcError) as refused:
                    call.result()
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return held, refused.value.details()
            held.append(call)
            self.kept.append(call)
        raise AssertionError("no Decide refused past the limit")

    def hold(self, metadata: tuple, n: int) -> list[grpc.Future]:
        """`n` Decides of a key held at the stuck shard, sent at once."""
        before = self.held()[0]
        held = [self.decide(metadata) for _ in range(n)]
        self.kept += held
        wait_until(lambda: self.held()[0] == before + n or any(f.done() for f in held), 10,
                   f"{n} Decides in flight")
        assert self.held()[0] == before + n
        return held

    def close(self) -> None:
        self.gate(True)
        self.channel.close()
        self.gateway.close()


@pytest.fixture
def limited(monkeypatch) -> None:
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)


@pytest.fixture
def rig(limited) -> Iterator[Rig]:
    made = Rig()
    made.gate(False)
    yield made
    made.close()


def refused(call, *args, **kwargs) -> str:
    """The message of `call`'s refusal, RESOURCE_EXHAUSTED."""
    with pytest.raises(grpc.RpcError) as refusal:
        call(*args, **kwargs)
    assert refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.value.details()
    return refusal.value.details()


KEPT = ("past 30 in flight (KAIROS_GATEWAY_KEY_SHARE_FROM of the limit), the calls from 35 to "
        "the limit are kept for keys that may hold up to 1 in flight (KAIROS_GATEWAY_KEY_FLOOR, "
        "at most 1/16 of that room), so that every key gets some in")


def test_a_key_flooding_stops_at_the_kept_line_and_another_keys_calls_are_served(rig):
    """The web key's Decides, one after another until refused: alone in flight it holds 35,
    the kept line (before 3b120fe: all 40, the limit; 7999adf: 30, review round 3's M1); the
    app key, holding nothing, is served: its Decide is admitted and answered once the shard
    is, as are the web key's. The web key's batch and stream are refused, naming it."""
    flood, message = rig.flood(WEB)
    assert message == f"gateway g has 35 calls in flight, 35 of them of key 'web': {KEPT}"
    assert rig.held() == (35, {"web": 35})
    served = rig.decide(APP)
    wait_until(lambda: served.done() or rig.held()[0] == 36, 10, "the app key's Decide in flight")
    assert rig.held() == (36, {"web": 35, "app": 1})
    past = f"35 of them of key 'web': {KEPT}"
    assert past in refused(rig.stub.IngestBatch, pb.EventBatch(events=[rig.event(WEB)]),
                           metadata=WEB, timeout=10)
    assert past in refused(lambda: list(rig.stub.IngestStream(
        iter([rig.event(WEB)]), metadata=WEB, timeout=10)))
    assert rig.held() == (36, {"web": 35, "app": 1})
    rig.gate(True)
    assert served.result().channel == "app"
    assert [f.result().channel for f in flood] == ["web"] * 35
    wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight, no key counted")


def _key(name: str) -> tuple:
    return (("x-api-key", f"{name}-ingest-decide-0123456789"),)


def test_flooding_keys_leave_the_last_call_to_a_key_holding_none(limited):
    """Review round 3, H2 (its repro): web flooded to 30, app to 35, crm and dev to 2 each, k0
    got 1 and k1, holding nothing, none (7999adf: the room past the kept line went to keys
    within the floor, 2). Now each key past the line gets its floor, 1, and the last call to
    the limit is kept for a key holding none: k1 gets it."""
    rig = Rig(KEYS + "".join(f"  - {{key: 'k{i}-ingest-decide-0123456789', name: k{i}, "
                             f"scopes: [ingest, decide]}}\n" for i in range(2)))
    try:
        rig.gate(False)
        got = {name: rig.flood(metadata) for name, metadata in (
            ("web", WEB), ("app", APP), ("crm", CRM), ("dev", DEV), ("k0", _key("k0")))}
        assert {name: len(held) for name, (held, _) in got.items()} == {
            "web": 35, "app": 1, "crm": 1, "dev": 1, "k0": 1}
        assert got["app"][1] == f"gateway g has 36 calls in flight, 1 of them of key 'app': {KEPT}"
        held, message = rig.flood(_key("k1"))
        assert len(held) == 1 and message == "gateway g has 40 calls in flight"
        rig.gate(True)
        wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight, no key counted")
    finally:
        rig.close()


def test_a_batch_of_a_key_holding_nothing_is_admitted_past_its_share(rig):
    """Review round 2, finding 2: the web and crm keys hold 14 of 40, and the app key's batch
    of 17, more than its share, was refused though the gateway had room (3b120fe, its floor at
    4: "0 of them of key 'app', and 17 more would pass its fair share"). A key holding
    nothing gets one batch in below the kept line (a share asked of it would count it out of
    the keys in flight: 17 here, and refuse it); holding it, the key is held to its share, now
    11."""
    rig.hold(WEB, 12)
    rig.hold(CRM, 2)
    batch = rig.stub.IngestBatch.future(pb.EventBatch(events=[
        rig.event(APP) for _ in range(17)]), metadata=APP, timeout=60)
    wait_until(lambda: batch.done() or rig.held()[0] == 31, 10, "the batch in flight")
    assert rig.held() == (31, {"web": 12, "crm": 2, "app": 17})
    assert "17 of them of key 'app': past 30 in flight (KAIROS_GATEWAY_KEY_SHARE_FROM of the " \
           "limit), a key holding calls may hold up to its share, 11, in flight: 35 (the kept " \
           "line) split among the 3 keys with calls in flight" in refused(
               rig.stub.IngestBatch, pb.EventBatch(events=[rig.event(APP)]), metadata=APP,
               timeout=10)
    rig.gate(True)
    assert len(batch.result().acks) == 17
    wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight, no key counted")


def _keys(text: str = KEYS) -> dict[str, auth.ApiKey]:
    """The keys `text` configures, by label, as the auth interceptor admits them."""
    loaded = Auth.load(text)
    return {key.label: key for _, key in loaded._keys}


def _check(gateway: Gateway, key: auth.ApiKey | None, adding: int = 1) -> str:
    """`check_capacity` for a call of `key` (None: auth off): "" if admitted, else why not."""
    auth._caller.set(key)
    try:
        gateway.check_capacity(adding)
    except Busy as exc:
        return str(exc)
    return ""


def test_a_keys_share_counts_it_once_among_the_keys_in_flight(limited):
    """The app key, holding 14 beside the web key's 16, may hold 17: 35 split among the 2
    keys in flight, itself one of them. Counted twice (3 keys: 11) its next call would be
    refused; not at all (1 key: 35) a batch of 4 admitted. (3b120fe's `+ (not held)`, the key
    asking counted once when it held nothing: now such a key gets its batch in whole, and the
    share is only asked of keys holding calls, which are in the count.)"""
    async def main() -> None:
        gateway, keys = Gateway("g", None, None), _keys()
        gateway.count("web", 16)
        gateway.count("app", 14)
        assert _check(gateway, keys["app"], 3) == ""
        assert "14 of them of key 'app', and 4 more would exceed what it may hold: past 30 " \
               "in flight (KAIROS_GATEWAY_KEY_SHARE_FROM of the limit), a key holding calls " \
               "may hold up to its share, 17, in flight: 35 (the kept line) split among the 2 " \
               "keys" in _check(gateway, keys["app"], 4)
    asyncio.run(main())


@pytest.mark.parametrize("keys, metadata", [(None, ()), (ONE_KEY, WEB)],
                         ids=["without auth", "one key"])
def test_a_gateway_without_keys_or_with_one_has_no_shares(limited, keys, metadata):
    """Its caller holds 36, past the kept room (35) and its floor (2): a batch of 4 is
    admitted, to the limit (with shares: refused, the rest kept for other keys), and counted
    in all only; the next call is refused by the limit."""
    rig = Rig(keys)
    try:
        rig.gate(False)
        rig.hold(metadata, 36)
        batch = rig.stub.IngestBatch.future(pb.EventBatch(events=[
            rig.event(metadata) for _ in range(4)]), metadata=metadata, timeout=60)
        wait_until(lambda: batch.done() or rig.held()[0] == 40, 10, "the batch in flight")
        assert rig.held() == (40, {})
        assert refused(rig.stub.Decide, pb.DecideRequest(customer_id="over", channel="web"),
                       metadata=metadata, timeout=10) == "gateway g has 40 calls in flight"
        rig.gate(True)
        assert len(batch.result().acks) == 4
        wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight")
    finally:
        rig.close()


def test_keys_of_one_name_are_counted_apart(limited):
    """Names may repeat with other grants (a key of one name for another channel; "key 2",
    unnamed, beside a key so named with other scopes): each key counts apart, by a label of
    its own, in calls in flight and as a stream's caller (Open counts `ApiKey`s). The second
    "web", holding nothing, gets a batch of 3 in beside the first's 30 (counted as one, by
    name: refused, past the first's share); the first, one of 2 keys now, is past its share,
    17. (Entries of one name and the same grants are one key: test_key_share_rotation.)"""
    text = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, scopes: [ingest]}
  - {key: 'web-ingest-decide-9876543210', name: web, channel: web, scopes: [ingest]}
  - {key: 'unnamed-ingest-0123456789ab', scopes: [ingest]}
  - {key: 'key2-ingest-decide-01234567', name: key 2, scopes: [ingest, decide]}
"""
    keys = _keys(text)
    assert list(keys) == ["web (keys[0])", "web (keys[1])", "key 2 (keys[2])",
                          "key 2 (keys[3])"]
    assert len(set(keys.values())) == 4
    suffixed = list(_keys(text + "  - {key: 'odd-ingest-decide-0123456789', name: "
                                 "'web (keys[1])', scopes: [ingest]}\n"))
    assert len(set(suffixed)) == 5 and suffixed[4] == "web (keys[1]) (keys[4])"

    async def main() -> None:
        gateway = Gateway("g", None, None)
        gateway.count("web (keys[0])", 30)
        assert _check(gateway, keys["web (keys[1])"], 3) == ""
        gateway.count("web (keys[1])", 3)
        assert "30 of them of key 'web (keys[0])'" in _check(gateway, keys["web (keys[0])"])
    asyncio.run(main())


def test_the_floor_is_at_most_a_sixteenth_of_the_kept_room_and_at_least_one(limited,
                                                                             monkeypatch):
    """Review round 3, H2: KAIROS_GATEWAY_KEY_FLOOR is held to 1/16 of the room past the kept
    line (7999adf: of the limit, and 2 keys at its cap filled that room). At a limit of 640
    (kept line 560, 80 past it) the floor is 5: a key holding 3 may not add a batch of 3 past
    the line (within it, 3 + 3 would be; review L4), one holding none a batch of 5; at 40 (5
    past 35) it is 1. 14 keys at their floor fill the room to 630; the last 10 calls are kept
    for keys holding none, one each."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", 640)
    text = "keys:\n" + "".join(f"  - {{key: 'k{i}-ingest-decide-0123456789', name: k{i}, "
                                f"scopes: [ingest]}}\n" for i in range(30))
    keys = list(_keys(text).values())

    async def main() -> None:
        gateway = Gateway("g", None, None)
        gateway.count(keys[0].label, 555)
        gateway.count(keys[1].label, 3)
        assert _check(gateway, keys[1], 2) == ""  # within the line (560)
        gateway.count(keys[1].label, 2)
        assert _check(gateway, keys[1], 1).endswith(
            "kept for keys that may hold up to 5 in flight (KAIROS_GATEWAY_KEY_FLOOR, at most "
            "1/16 of that room), so that every key gets some in")
        gateway.count(keys[2].label, 3)
        assert "3 of them of key 'k2', and 3 more" in _check(gateway, keys[2], 3)
        assert _check(gateway, keys[3], 5) == ""
        gateway.uncount(keys[2].label, 3)
        got = []
        for key in keys[2:]:
            while _check(gateway, key) == "":
                gateway.count(key.label)
            got.append(gateway.inflight_of.get(key.label, 0))
        assert got == [5] * 14 + [1] * 10 + [0] * 4 and gateway.inflight == 640
        gateway.uncount(keys[16].label)
        assert "1 of them of key 'k17': past 480 in flight (KAIROS_GATEWAY_KEY_SHARE_FROM of " \
               "the limit), the last 10 calls to the limit are kept for keys holding none, one " \
               "call each" in _check(gateway, keys[17])
        assert _check(gateway, keys[26]) == ""
    asyncio.run(main())


def test_a_streams_event_past_its_keys_share_ends_it_after_the_earlier_acks(rig):
    """c81f2df/88c0193 had such an event wait for room, woken as calls ended, which the final
    review found unsound under overload; as in 3b120fe, the stream ends RESOURCE_EXHAUSTED with
    the refusal (naming the key's share), after the acks of the events before it, and the
    event is neither counted nor sent (its caller sends it again on a new stream)."""
    go = threading.Event()
    first = [rig.event(WEB), rig.event(WEB)]

    def events() -> Iterator[pb.Event]:
        yield from first
        go.wait(30)
        yield from (rig.event(WEB) for _ in range(2))

    rig.gate(True)
    stream = rig.stub.IngestStream(events(), metadata=WEB, timeout=60)
    acked = [next(stream), next(stream)]
    assert acked[0].sequence and acked[1].sequence
    rig.gate(False)
    rig.hold(WEB, 25)
    rig.hold(APP, 8)
    go.set()
    ended = refused(list, stream)
    assert ended == (NO_ROOM.format(event="events[2]")
                     + "gateway g has 33 calls in flight, 25 of them of key 'web': past 30 in "
                     "flight (KAIROS_GATEWAY_KEY_SHARE_FROM of the limit), a key holding calls "
                     "may hold up to its share, 17, in flight: 35 (the kept line) split among "
                     "the 2 keys with calls in flight, at least 1"), ended
    assert rig.held() == (33, {"web": 25, "app": 8})
    wait_until(lambda: rig.gateway.run(_open(rig.gateway.gateway)) == 0, 10,
               "the stream's place freed")


def test_events_in_flight_when_a_later_one_is_refused_are_acked_and_none_after_it_applied(
        rig):
    """Review of 0098723: the stream's first two events are held at the stuck shard, in
    flight, when its third is past the web key's share (its fourth sent behind it). Once the
    shard answers, the two acks come, then RESOURCE_EXHAUSTED saying where the stream ended
    and what to send again (NO_ROOM); sent again with the same idempotency keys, the first two
    are duplicates, the third and the fourth (never read) are applied now."""
    rig.hold(WEB, 15)
    rig.hold(APP, 14)
    events = [rig.event(WEB) for _ in range(4)]
    for n, event in enumerate(events):
        event.event_id = f"n{n}"
    go = threading.Event()

    def sent() -> Iterator[pb.Event]:
        yield from events
        go.wait(30)  # kept open: the gateway ends the stream

    stream = rig.stub.IngestStream(sent(), metadata=WEB, timeout=60)
    acks = []
    try:
        wait_until(lambda: rig.held() == (31, {"web": 17, "app": 14}), 10,
                   "the stream's first two events in flight")
        rig.gate(True)
        with pytest.raises(grpc.RpcError) as ended:
            for ack in stream:
                acks.append(ack)
    finally:
        go.set()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ended.value.details() == NO_ROOM.format(event="events[2]") + (
        "gateway g has 31 calls in flight, 17 of them of key 'web': past 30 in flight (KAIROS_"
        "GATEWAY_KEY_SHARE_FROM of the limit), a key holding calls may hold up to its share, "
        "17, in flight: 35 (the kept line) split among the 2 keys with calls in flight, at "
        "least 1")
    assert [(ack.event_id, ack.duplicate) for ack in acks] == [("n0", False), ("n1", False)]
    again = rig.stub.IngestStream(iter(events), metadata=WEB, timeout=20)
    assert [(ack.event_id, ack.duplicate) for ack in again] == [
        ("n0", True), ("n1", True), ("n2", False), ("n3", False)]
    wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight, no key counted")


async def _open(gateway: Gateway) -> int:
    return gateway.ingest_streams.open


def test_each_keys_count_goes_back_to_nothing_once_its_calls_end_cancelled(rig):
    """A Decide, an Ingest, a batch of 3 and a stream of 3 events of the web key, held at the
    stuck shard, count 8 calls as its; cancelled while the shard is still stuck, they leave no
    count behind, in all or of the key; the key is served afterwards."""
    done = threading.Event()

    def events() -> Iterator[pb.Event]:
        yield from (rig.event(WEB) for _ in range(3))
        done.wait(30)  # kept open: cancelled by its caller, not ended

    pending = [rig.decide(WEB), rig.stub.Ingest.future(rig.event(WEB), metadata=WEB, timeout=60),
               rig.stub.IngestBatch.future(pb.EventBatch(events=[
                   rig.event(WEB) for _ in range(3)]), metadata=WEB, timeout=60)]
    stream = rig.stub.IngestStream(events(), metadata=WEB, timeout=60)
    try:
        wait_until(lambda: rig.held() == (8, {"web": 8}), 10, "8 calls of the web key held")
        for call in (*pending, stream):
            call.cancel()
        wait_until(lambda: rig.held() == (0, {}), 10, "no count left, the shard still stuck")
    finally:
        done.set()
    assert not rig.stub.IngestBatch(pb.EventBatch(), metadata=WEB, timeout=10).acks
    assert rig.held() == (0, {})  # an empty batch counts no call, nor its key
    rig.gate(True)
    assert rig.decide(WEB).result(10).channel == "web"
    assert list(rig.stub.IngestStream(iter([rig.event(WEB)]), metadata=WEB, timeout=10))
    assert rig.held() == (0, {})


def test_a_keys_stream_refusal_names_its_label():
    """Review round 3, L5: of two keys named "web", the refusal of the first's second stream
    past INGEST_STREAMS_PER_KEY named "web", either of them; it names its label."""
    keys = _keys("""keys:
  - {key: 'web-ingest-decide-0123456789', name: web, scopes: [ingest]}
  - {key: 'web-ingest-decide-9876543210', name: web, channel: web, scopes: [ingest]}
""")
    streams = Open("ingest", "INGEST_STREAMS", lambda: (10, 1, 10))
    streams.admit(keys["web (keys[0])"], "10.0.0.1")
    with pytest.raises(Busy) as refusal:
        streams.admit(keys["web (keys[0])"], "10.0.0.2")
    assert str(refusal.value) == ("this gateway serves 1 ingest streams of key 'web (keys[0])', "
                                  "its most for one key (KAIROS_INGEST_STREAMS_PER_KEY)")


@pytest.mark.parametrize("floor, share_from, refused", [
    ("156", None, False), ("157", None, True), ("157", "1", False)])
def test_a_floor_past_a_sixteenth_of_the_kept_room_stops_the_settings_import(floor, share_from,
                                                                             refused):
    """Review round 3, L6: at the default limit, 20,000 (kept line 17,500), the floor may be at
    most 2,500 // 16 = 156; one set above it was held to it without a word. The refusal names
    both settings the cap comes of; with shares off (KAIROS_GATEWAY_KEY_SHARE_FROM=1) no floor
    is used, and none is refused."""
    env = {**os.environ, "KAIROS_GATEWAY_KEY_FLOOR": floor}
    env.pop("KAIROS_GATEWAY_INFLIGHT_LIMIT", None)
    env.pop("KAIROS_GATEWAY_KEY_SHARE_FROM", None)
    if share_from is not None:
        env["KAIROS_GATEWAY_KEY_SHARE_FROM"] = share_from
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"], env=env,
                          capture_output=True, text=True)
    assert (done.returncode != 0) == refused, done.stderr
    if refused:
        assert "ValueError: KAIROS_GATEWAY_KEY_FLOOR must be >= 1 and <= 156 (KAIROS_GATEWAY_" \
               "INFLIGHT_LIMIT and KAIROS_GATEWAY_KEY_SHARE_FROM: a sixteenth of the room " \
               "above the kept line), got '157'" in done.stderr
