"""The gateway's catalog follow while the controller cannot answer, after the map named a
version it has not compiled: no 'Task exception was never retrieved' (an ERROR traceback
each look), one throttled warning, and fewer and fewer controller calls (review rev44
d-streams 3)."""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from kairos.cluster.gateway import calls as calls_module
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.client import KairosClient

from tests.support.local_backend import LocalBackend


async def gateway_over_a_controller() -> tuple:
    """(backend, client, gateway, controller): a gateway that compiled the running catalog."""
    backend = LocalBackend()
    await backend.start_runtime(1, n_partitions=4)
    client = await KairosClient(backend).connect()
    gateway = Gateway("g", client, backend)
    await gateway.refresh_catalog()
    return backend, client, gateway, backend.controller()


def test_a_controller_down_is_warned_of_once_and_asked_less_and_less(monkeypatch, caplog):
    monkeypatch.setattr(calls_module, "CATALOG_FOLLOW_S", 0.02)
    monkeypatch.setattr(calls_module, "CATALOG_RETRY_S", (0.05, 0.4))
    monkeypatch.setattr(calls_module, "_CATALOG_FAILED",
                        ThrottledWarning(calls_module.log, calls_module.CATALOG_FAILED_LOG_S))

    async def main() -> int:
        backend, client, gateway, controller = await gateway_over_a_controller()
        asked = 0

        async def down() -> dict:
            nonlocal asked
            asked += 1
            raise Unavailable("controller down")
        controller.get_catalog = down
        monkeypatch.setattr(backend, "controller", lambda: controller)
        gateway.start()
        client.catalog_version = "v-next"  # the map says the cluster switched
        began = time.monotonic()
        for _ in range(15):
            await asyncio.sleep(0.1)
            gc.collect()  # a failed future nobody retrieved is reported as it is collected
        await gateway.close()
        return asked, time.monotonic() - began

    with caplog.at_level(logging.WARNING):
        asked, elapsed_s = asyncio.run(main())
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    warned = [r for r in caplog.records if "could not be had" in r.getMessage()]
    assert len(warned) == 1 and "controller down" in warned[0].getMessage()
    # backing off to 0.4 s between asks; a look every 0.02 s would ask 50 times a second. By
    # the time taken: a collection of a suite's heap on a loaded machine makes the 15 turns long
    assert 2 <= asked <= 8 + elapsed_s / 0.1, (asked, elapsed_s)


def test_a_catalog_the_map_names_anew_is_asked_for_at_once_after_failures(monkeypatch):
    """The wait after failed refreshes (up to 30 s) held back a catalog the map named after
    the controller was back: another version is asked for at the next look, and the wait is
    at most 5 s (review rev44 d-streams2 3)."""
    assert calls_module.CATALOG_RETRY_S[1] <= 5.0
    monkeypatch.setattr(calls_module, "CATALOG_FOLLOW_S", 0.02)
    monkeypatch.setattr(calls_module, "CATALOG_RETRY_S", (60.0, 60.0))

    async def main() -> list[str]:
        backend, client, gateway, controller = await gateway_over_a_controller()
        asked: list[str] = []

        async def down() -> dict:
            asked.append(client.catalog_version)
            raise Unavailable("controller down")
        controller.get_catalog = down
        monkeypatch.setattr(backend, "controller", lambda: controller)
        gateway.start()
        client.catalog_version = "v-next"
        await asyncio.sleep(0.3)  # one failure, then a 60 s wait
        client.catalog_version = "v-after"
        await asyncio.sleep(0.3)
        await gateway.close()
        return asked

    assert asyncio.run(main()) == ["v-next", "v-after"]
