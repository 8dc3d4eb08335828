"""A live page's watch that the gateway ends for a reason a new watch overcomes (a catalog
switch took its channel away: NOT_FOUND; it fell behind: RESOURCE_EXHAUSTED, both saying to
watch again) follows the catalog's channels anew, the gone one dropped, rather than end the
page's updates on every channel or read as "Kairos is busy" (review rev44 d-streams 4)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from kairos.core.errors import InputError
from kairos.cluster.console import live
from kairos.cluster.gateway import calls as calls_module
from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.gateway.calls import _view_left
from kairos.cluster.gateway.streams import Ended, FellBehind, Watch

SWITCHED = Ended("the catalog the cluster switched to (v2) has no sms/inbox (unknown channel "
                 "'sms'): this watch ended; watch again on a view it has")


def test_the_endings_a_new_watch_overcomes_are_told_apart_from_final_and_busy_ones():
    again = [(grpc.StatusCode.NOT_FOUND, str(SWITCHED)),
             (grpc.StatusCode.RESOURCE_EXHAUSTED, str(FellBehind(5, "WATCH_BACKLOG", 1024)))]
    assert [GatewayError.status(code, d).kind for code, d in again] == ["again", "again"]
    final = [(grpc.StatusCode.NOT_FOUND, "the customer was forgotten (ForgetCustomer): its "
              "watch ended; a new watch follows the id if it comes back"),
             (grpc.StatusCode.RESOURCE_EXHAUSTED, "this gateway serves 10 watch streams, its "
              "most (KAIROS_WATCH_STREAMS)")]
    assert [GatewayError.status(code, d).kind for code, d in final] == ["not_found", "busy"]


def test_the_gateways_ending_for_a_view_gone_names_watching_again(monkeypatch):
    def missing(*_) -> None:
        raise InputError("channel", "unknown channel 'sms'")
    monkeypatch.setattr(calls_module, "view", missing)
    why = _view_left(SimpleNamespace(version="v2"), Watch("c", "sms", "inbox"))
    assert GatewayError.status(grpc.StatusCode.NOT_FOUND, why).kind == "again"


@pytest.mark.parametrize("ending", [
    GatewayError.status(grpc.StatusCode.NOT_FOUND, str(SWITCHED)),
    GatewayError.status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        str(FellBehind(5, "CHANNEL_WATCH_BACKLOG", 16384)))],
    ids=["view gone", "fell behind"])
def test_a_page_follows_anew_when_a_watch_ends_again(ending):
    watched: list[list[str]] = []
    catalog = [["web", "sms"]]  # the channels a read shows

    async def watch(channels: list[str]):
        watched.append(list(channels))
        yield {"*"}
        if "sms" in channels:
            yield {"web"}
            raise ending
        while True:
            await asyncio.sleep(0.01)
            yield {"web"}

    async def read(shown: bool):
        return SimpleNamespace(channels=catalog[0])

    async def main() -> list[set[str]]:
        changes, page = await live.followed(watch, read, ["web", "sms"])
        assert page.channels == ["web", "sms"]
        got = [await anext(changes)]
        catalog[0] = ["web"]  # the switch took sms away
        got += [await anext(changes), await anext(changes)]
        await changes.aclose()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 10))
    assert got == [{"web"}, {"*"}, {"web"}]  # {"*"}: the page reads again, all channels
    assert watched == [["web", "sms"], [], ["web"]]


def test_a_final_ending_still_ends_the_page():
    async def watch(channels: list[str]):
        yield {"*"}
        raise GatewayError.status(grpc.StatusCode.NOT_FOUND, "the customer was forgotten")

    async def read(shown: bool):
        return SimpleNamespace(channels=["web"])

    async def main() -> None:
        changes, _ = await live.followed(watch, read, ["web"])
        with pytest.raises(GatewayError) as ended:
            await anext(changes)
        assert ended.value.kind == "not_found"

    asyncio.run(asyncio.wait_for(main(), 10))
