"""A gateway during a catalog switch: the shards run the new catalog before the gateway has
compiled it (or even seen it in the routing table), and the gateway checks requests against
the previous one meanwhile. A request made for the new catalog (here a Respond naming an
action only the new one has) must not be refused by the previous one, and a request both
accept must not wait for the compile; a refused one waits for it only within its deadline."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.gateway import auth, calls, requests
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.decisions import DecisionService
from kairos.cluster.transport.client import KairosClient
from kairos.core.catalog import default_catalog_text
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb

from tests.support.held_compile import HeldCompile
from tests.support.local_backend import LocalBackend
from tests.support.waiting import until

LAUNCH = """actions:
  - {id: launch, group: sell, purpose: service, channels: {web: {treatment: t}}, value: 1}
"""


def respond(action_id: str) -> pb.Outcome:
    return pb.Outcome(customer_id="ana", channel="web", action_id=action_id,
                      outcome=pb.ACCEPT, offline=True)


@pytest.mark.parametrize("map_seen", [True, False], ids=["map-seen", "map-not-yet-seen"])
def test_a_refusal_by_the_previous_catalog_is_checked_again_against_the_new_one(monkeypatch,
                                                                                  map_seen):
    """With the switch seen in the routing table, the gateway compiles the new catalog in the
    background; before it is seen (the shards switch before the map is published), a refusal
    asks the controller."""
    held_compile = HeldCompile()

    async def main():
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        client = await KairosClient(backend).connect()
        gateway = Gateway("g", client, backend)
        await gateway.refresh_catalog()
        before = (await gateway.catalog()).version
        if not map_seen:  # the map's long poll stops: a published map has not reached it yet
            client._poller.cancel()
        text = default_catalog_text().replace("version: ", "version: launch-", 1)
        version = await backend.controller().put_catalog(text.replace("actions:\n", LAUNCH, 1))
        monkeypatch.setattr(calls, "compiled_from_text", held_compile)
        if map_seen:
            await until(lambda: client.catalog_version == version, 30,
                        "the client to see the switch")
            # accepted by the previous catalog: answered with it, not waiting for the compile
            assert await asyncio.wait_for(gateway.checked(lambda c: c.version, 30), 30) == before
        refused_before = asyncio.ensure_future(gateway.checked(
            lambda c: requests.outcome_request(respond("launch"), c), 30))
        # the compile of the new one started, and is held
        assert await asyncio.get_running_loop().run_in_executor(None, held_compile.entered.wait, 30)
        assert not refused_before.done()  # waits for the new catalog instead of refusing
        held_compile.release.set()
        assert (await asyncio.wait_for(refused_before, 30)).action_id == "launch"
        assert (await gateway.catalog()).version == version
        # refused by the new catalog too: the refusal stands
        with pytest.raises(InputError, match="unknown action 'nowhere'"):
            await gateway.checked(lambda c: requests.outcome_request(respond("nowhere"), c), 30)
        await gateway.close()
    asyncio.run(main())


def test_a_refused_request_waits_for_the_new_catalog_only_within_its_deadline(monkeypatch):
    """The wait for the new catalog (a controller call, then a compile) was not bounded by
    the caller's deadline: the handler answered only once the compile ended. Past the
    deadline the request is not refused (it may be valid), but DEADLINE_EXCEEDED."""
    held_compile = HeldCompile()

    class Context:
        def time_remaining(self) -> float:
            return 0.3

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError(f"{code.name}: {details}")

    async def main():
        auth._caller.set(None)  # no keys: as the interceptor leaves it when auth is off
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        client = await KairosClient(backend).connect()
        gateway = Gateway("g", client, backend)
        await gateway.refresh_catalog()
        client._poller.cancel()  # the switch is not seen in the map: a refusal asks
        text = default_catalog_text().replace("version: ", "version: launch-", 1)
        await backend.controller().put_catalog(text.replace("actions:\n", LAUNCH, 1))
        monkeypatch.setattr(calls, "compiled_from_text", held_compile)
        try:
            with pytest.raises(TimeoutError, match="not ready in time"):
                await asyncio.wait_for(gateway.checked(
                    lambda c: requests.outcome_request(respond("launch"), c), 0.1), 5)
            with pytest.raises(RuntimeError, match="^DEADLINE_EXCEEDED: the catalog"):
                await asyncio.wait_for(DecisionService(gateway).Respond(respond("launch"),
                                                                         Context()), 5)
        finally:
            held_compile.release.set()
        await gateway.close()
    asyncio.run(main())
