"""A gateway during a catalog switch that lets a channel send an event type: a channel-bound
key's event of that type, refused by the previous catalog as the key's (Denied: PERMISSION_
DENIED, `requests.check_sender`), is checked again against the new one, as an InputError is
(test_catalog_switch.py), not refused until this gateway has compiled it."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.gateway import auth, calls, requests
from kairos.cluster.gateway.auth import ApiKey, Denied
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.transport.client import KairosClient
from kairos.core.catalog import default_catalog_text
from kairos.v1 import decision_pb2 as pb

from tests.support.held_compile import HeldCompile
from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

SENDERS = "channels: [web, call_center]"  # the default catalog's, for profile_updated
AGENTS_ONLY = default_catalog_text().replace("version: ", "version: agents-only-", 1).replace(
    SENDERS, "channels: [call_center]", 1)


def profile_updated(channel: str) -> pb.Event:
    return pb.Event(customer_id="ana", type="profile_updated", channel=channel,
                    attributes={"tier": pb.Value(string_value="gold")})


@pytest.mark.parametrize("map_seen", [True, False], ids=["map-seen", "map-not-yet-seen"])
def test_a_bound_keys_event_refused_by_the_previous_catalog_is_checked_against_the_new_one(
        monkeypatch, map_seen):
    """The previous catalog keeps profile_updated from the web; the cluster switches to one
    that lets the web send it: the web key's event waits for the new catalog (main: refused
    PERMISSION_DENIED at once), and a key whose channel the new one leaves out is refused."""
    assert SENDERS in default_catalog_text()
    held_compile = HeldCompile()

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        await backend.controller().put_catalog(AGENTS_ONLY)
        client = await KairosClient(backend).connect()
        gateway = Gateway("g", client, backend)
        await gateway.refresh_catalog()
        # held from here: a refresh the refusal below starts may meet the switch (then the
        # request after it waits for that one); and it does not keep the next from asking
        monkeypatch.setattr(calls, "compiled_from_text", held_compile)
        monkeypatch.setattr(calls, "CATALOG_RECHECK_S", 0.0)
        auth._caller.set(ApiKey("web", frozenset({"ingest"}), "web"))
        with pytest.raises(Denied, match="may not send profile_updated"):
            await gateway.checked(lambda c: requests.event_request(profile_updated("web"), c),
                                  30)  # refused by the catalog it runs
        if not map_seen:  # the map's long poll stops: a published map has not reached it yet
            client._poller.cancel()
        text = default_catalog_text().replace("version: ", "version: web-too-", 1)
        version = await backend.controller().put_catalog(text)
        if map_seen:
            await until(lambda: client.catalog_version == version, 30,
                        "the client to see the switch")
        refused_before = asyncio.ensure_future(gateway.checked(
            lambda c: requests.event_request(profile_updated("web"), c), 30))
        assert await asyncio.get_running_loop().run_in_executor(None, held_compile.entered.wait, 30)
        assert not refused_before.done()  # waits for the new catalog instead of refusing
        held_compile.release.set()
        _, event = await asyncio.wait_for(refused_before, 30)
        assert event.event_type == "profile_updated"
        assert (await gateway.catalog()).version == version
        auth._caller.set(ApiKey("app", frozenset({"ingest"}), "app"))
        with pytest.raises(Denied, match="key 'app' is for channel 'app', which may not send"):
            await gateway.checked(lambda c: requests.event_request(profile_updated("app"), c),
                                  30)  # refused by the new catalog too: the refusal stands
        await gateway.close()
    asyncio.run(main())
