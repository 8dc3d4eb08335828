"""A catalog switch that fails part way (catalogs.py, lagging.py), without Ray: a save the store
did not take undoes the switch, so that a retry saves and publishes it and a restarted
controller runs it; a switch no shard prepared is not done; a shard that keeps failing its
catch-up is tried again after a doubling wait; a shard's refusal is permanent (a ValueError,
not Unavailable) and says the shard's own error, not Ray's process and traceback."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kairos.cluster.control import lagging as lagging_module
from kairos.cluster.control.catalogs import CatalogRefused
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable

from tests.unit.control.test_interrupted import (catalog_v2, no_grace, restarted, started,
                                                 versions)
from tests.unit.gateway.test_admin_errors import LEAKS, through_ray

__all__ = ["no_grace"]  # the fixture, used here too


def test_a_switch_the_store_did_not_take_is_undone_and_its_retry_saves_it(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1, v2 = controller.catalog_version, catalog_v2(controller)
        seen = controller.routing()  # what the gateways hold
        put_meta, fails = controller.store.put_meta, [StoreUnavailable("the store is down")]

        def flaky(key: str, blob: bytes) -> None:
            if fails:
                raise fails.pop()
            put_meta(key, blob)

        controller.store.put_meta = flaky
        with pytest.raises(Unavailable, match="the store did not take it: the store is down"):
            await controller.put_catalog(v2)
        assert controller.catalog_version == v1 and controller.previous_catalog is None
        # the map too: a shard Ray restarts now is given the version the gateways hold, not
        # one never published (it would answer MOVED to a map no client can get)
        assert controller.map.version == seen["version"]
        assert (await backend.learner().status())["catalog_version"] == v1  # put back
        await controller.reconcile()  # the control loop commits nothing of it
        assert versions(backend) == {v1} and not controller.lagging.catalog
        version = await controller.put_catalog(v2)  # the operator's retry
        assert versions(backend) == {version} != {v1}
        assert (await controller.get_map(seen["version"], 0.1))["catalog_version"] == version
        controller = await restarted(backend, str(tmp_path), 2)
        assert controller.catalog_version == version and versions(backend) == {version}
    asyncio.run(main())


def test_a_switch_that_no_shard_prepared_switches_nothing(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 3)
        v1, seen = controller.catalog_version, controller.routing()
        for shard in controller.shards:
            backend.fail[(shard, "prepare")] = 1
        with pytest.raises(Unavailable, match="no shard prepared it: kairos-shard-0000: "
                                              "prepare failed"):
            await controller.put_catalog(catalog_v2(controller))
        assert controller.catalog_version == v1 and not controller.lagging.catalog
        assert (await backend.learner().status())["catalog_version"] == v1
        assert await controller.get_map(seen["version"], 0.1) is None  # gateways told nothing
        version = await controller.put_catalog(catalog_v2(controller))
        assert versions(backend) == {version}
    asyncio.run(main())


def test_a_shard_that_keeps_failing_its_catch_up_is_tried_after_a_doubling_wait(
        tmp_path, monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(lagging_module, "monotonic", lambda: now[0])

    async def main():
        backend, controller = await started(str(tmp_path), 3)
        behind = controller.shards[2]
        backend.fail[(behind, "prepare")] = 10 ** 6
        version = await controller.put_catalog(catalog_v2(controller))

        async def rounds(n: int) -> int:
            """Catch-up tries of `behind` in `n` rounds (one a round, were it not for waits)."""
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="kairos.controller"):
                for _ in range(n):
                    await controller.reconcile()
            return sum("not committed yet" in r.getMessage() for r in caplog.records)

        assert await rounds(5) == 1
        for wait in (1.0, 2.0, 4.0):  # each failure doubles the wait
            now[0] += wait - 0.5
            assert await rounds(3) == 0
            now[0] += 0.5
            assert await rounds(3) == 1
        now[0] += 10 ** 4
        backend.fail[(behind, "prepare")] = 0
        assert await rounds(1) == 0 and versions(backend) == {version}
        assert not controller.lagging.catalog
    asyncio.run(main())


def test_the_wait_is_at_most_catch_up_max_s_and_a_new_version_is_tried_at_once(
        tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(lagging_module, "monotonic", lambda: now[0])

    async def main():
        backend, controller = await started(str(tmp_path), 2)
        behind = controller.shards[1]
        backend.fail[(behind, "prepare")] = 10 ** 6
        await controller.put_catalog(catalog_v2(controller))
        for _ in range(12):
            await controller.reconcile()
            now[0] += lagging_module.CATCH_UP_MAX_S
        assert controller.lagging._retry[behind][2] == lagging_module.CATCH_UP_MAX_S
        backend.fail[(behind, "prepare")] = 1  # the rollback's own prepare
        version = await controller.rollback_catalog()
        await controller.reconcile()  # a wait for another version holds back no catch-up
        assert versions(backend) == {version} and not controller.lagging.catalog
    asyncio.run(main())


def test_a_shard_that_refuses_the_catalog_through_ray_is_named_with_its_own_error(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        before, refusing = controller.catalog_version, controller.shards[1]

        def refuse(text: str) -> str:  # as a ShardActor's caller sees it through Ray
            raise through_ray(ValueError("rule r1: unknown feature"))

        backend.shards[refusing].prepare = refuse
        with pytest.raises(CatalogRefused) as refused:
            await controller.put_catalog(catalog_v2(controller))
        assert isinstance(refused.value, ValueError)  # permanent: not sent again as is
        assert str(refused.value).endswith(f"was not switched: {refusing}: rule r1: unknown "
                                           f"feature")
        for leak in LEAKS:
            assert leak not in str(refused.value)
        assert controller.catalog_version == before and versions(backend) == {before}
    asyncio.run(main())
