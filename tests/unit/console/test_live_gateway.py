"""A live page against a real gateway (tests/support/inprocess_gateway: real gRPC over the
in-process backend, whose pushes reach the watches), where the stand-ins of the other modules
cannot say how a refused watch reaches the console: as a call whose metadata comes (empty,
with the trailers) before its status. Through Starlette's TestClient."""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import grpc
import pytest
from starlette.testclient import TestClient

from kairos.cluster.console import app as console_app
from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.console.gateway_client import GatewayClient, GatewayError
from kairos.cluster.gateway import wire
from kairos.cluster.gateway.auth import Auth
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc
from tests.support.inprocess_gateway import InProcessGateway
from tests.unit.console.test_app import AGENT, csrf_of, without_cookies
from tests.unit.gateway.test_watch_link import PushingBackend

BOUND = "bound-key-0123456789abcdef"  # a channel's own key, bound to call_center
FEED = "feed-key-0123456789abcdef"  # a channel integration that sends events
KEYS = f"""keys:
  - {{key: "{AGENT}", name: agent-7, scopes: [profile:read, respond, watch]}}
  - {{key: "{BOUND}", name: bound, scopes: [profile:read, watch], channel: call_center}}
  - {{key: "{FEED}", name: feed, scopes: [ingest]}}
"""
STREAMS = "kairos.cluster.gateway.streams"


@pytest.fixture(scope="module")
def gateway() -> Iterator[InProcessGateway]:
    backend = PushingBackend()  # the shards' pushes reach the gateway's watch streams
    gateway = InProcessGateway(Auth.load(KEYS), backend)
    backend.gateway = gateway.gateway.watches
    try:
        ingest(gateway, "profile_updated", {"tier": "gold"})
        yield gateway
    finally:
        gateway.close()


def ingest(gateway: InProcessGateway, kind: str, attributes: dict) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        event = pb.Event(customer_id="ana", type=kind, channel="web",
                         time=wire.time_out(time.time()))
        for name, value in attributes.items():
            event.attributes[name].CopyFrom(wire.value_out(value))
        decision_pb2_grpc.DecisionServiceStub(channel).Ingest(
            event, timeout=10, metadata=[("x-api-key", FEED)])


class Reads(GatewayClient):
    """The real client, noting the channel each record read logs a decision for."""

    shown: list[str] = []

    async def profile(self, key, who, explain=False, shown_channel=""):
        Reads.shown.append(shown_channel)
        return await super().profile(key, who, explain, shown_channel)


@pytest.fixture
def client(gateway, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setattr(console_app, "GatewayClient", Reads)  # made on the app's own loop
    Reads.shown = []
    app = create_app(ConsoleConfig(f"127.0.0.1:{gateway.port}"), Auth.load(KEYS))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        form = client.get("/signin")
        client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT})
        yield client


def events(client: TestClient, url: str, wanted: int) -> list[tuple[str, str]]:
    """The stream's first `wanted` events (fewer if it ends), name and first data line."""
    seen: list[tuple[str, str]] = []
    with client.stream("GET", url) as live:
        lines = live.iter_lines()
        for line in lines:
            if line.startswith("event:"):
                seen.append((line[7:], next(lines)[6:]))
                if len(seen) == wanted:
                    break
    return seen


def lines_until_blank(lines: Iterator[str]) -> Iterator[str]:
    """An event's remaining lines."""
    for line in lines:
        if not line:
            return
        yield line


@pytest.mark.parametrize("key, channel, kind", [
    (BOUND, "web", "denied"), (AGENT, "retired", "invalid"), (AGENT, "web", "busy")])
def test_a_refused_watch_fails_before_it_says_the_watches_are_in_place(gateway, monkeypatch,
                                                                        key, channel, kind):
    """`initial_metadata()` returns (empty) for a call the gateway refused outright, so the
    client said every watch was in place ({"*"}) and failed only afterwards."""
    if kind == "busy":
        monkeypatch.setattr(f"{STREAMS}.WATCH_STREAMS_PER_KEY", 0)

    async def first() -> object:
        client = GatewayClient(f"127.0.0.1:{gateway.port}")
        changes = client.changes(key, "ana", ["call_center", channel])
        try:
            return await anext(changes)
        except GatewayError as exc:
            return exc.kind
        finally:
            await changes.aclose()
            await client.close()
    assert asyncio.run(first()) == kind


def test_a_page_naming_a_channel_the_catalog_lacks_goes_on_following(client, gateway):
    """A page opened before a catalog switch that dropped a channel: one update, then `gone`
    (live updates lost until a reload). Now it learns the channels and follows them."""
    url = "/customer/live?id=ana&" + "&".join(
        f"channel={c}" for c in ("call_center", "app", "email", "push", "store", "web",
                                 "retired"))
    with client.stream("GET", url) as live:
        lines = live.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: update"
        ingest(gateway, "complaint", {"topic": "delivery", "severity": "high"})
        assert next(line for line in lines if line.startswith("event:")) == "event: update"
        assert "complaint_callback" in "".join(lines_until_blank(lines))


def test_a_busy_gateway_pauses_the_page_before_any_logged_read(client, monkeypatch):
    """With the watches refused for load, the page got an update, read with the agent's
    channel (a decision logged as shown), then `paused`."""
    monkeypatch.setattr(f"{STREAMS}.WATCH_STREAMS_PER_KEY", 0)
    assert events(client, "/customer/live?id=ana&channel=call_center", 2) \
        == [("paused", "busy")]
    assert "call_center" not in Reads.shown


def test_the_gateways_share_for_the_console_is_named_when_it_is_full(client, monkeypatch):
    """The console is one host to the gateway: its pages' watches fill that host's share
    before its own cap (1,000 pages of 6 channels against 2,500), and the page said the
    gateway was busy. Now a full share is named."""
    monkeypatch.setattr(f"{STREAMS}.WATCH_STREAMS_PER_HOST", 0)
    assert events(client, "/customer/live?id=ana", 2) == [("paused", "host")]
    page = client.get("/customer?id=ana")
    assert re.search(r'data-paused-host="[^"]*KAIROS_WATCH_STREAMS_PER_HOST', page.text)


EVENT_SOURCE = {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors",
                "sec-fetch-dest": "empty"}  # as a browser sends the live page's own requests


@pytest.mark.parametrize("headers", [
    {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"},
    {"sec-fetch-site": "same-origin", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"},
    {"sec-fetch-site": "same-origin", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "iframe"},
    {**EVENT_SOURCE, "sec-fetch-site": "same-site"}])  # another port's page on loopback
def test_only_the_pages_own_script_opens_a_live_stream(client, headers):
    """A link from another site to /customer/live got the page that asks again from the
    console's origin, whose refresh came with the Strict cookie: each opened the stream, read
    the record with the agent's channel (a decision logged as shown, for a customer the agent
    never opened) and held watches and one of the session's live places."""
    url = "/customer/live?id=ana&channel=call_center&channel=web"
    # a cross-site request carries none of the console's cookies
    refused = without_cookies(client, "GET", url, headers=headers) \
        if headers["sec-fetch-site"] == "cross-site" else client.get(url, headers=headers)
    assert refused.status_code == 403 and "refresh" not in refused.text
    assert Reads.shown == []
    assert events(client, url, 1)[0][0] == "update"  # the page's own, as the tests send it
    with client.stream("GET", url, headers=EVENT_SOURCE) as live:  # and as a browser does
        assert next(line for line in live.iter_lines() if line.startswith("event:")) \
            == "event: update"
    assert Reads.shown and set(Reads.shown) == {"call_center"}
