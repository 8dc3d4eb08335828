"""PutCatalog and RollbackCatalog, through AdminService, safe to retry when they name the
version they expect (expected_current_version, to_version): a rollback retried after it was
done answers OK on the version it named, and a put or a rollback whose expectation no longer
holds ends FAILED_PRECONDITION saying what runs, with nothing switched. A rollback done is
answered OK even when the catalog it restored cannot be described."""
from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

import grpc
import pytest

from kairos.cluster.gateway import compiling
from kairos.cluster.gateway.admin import AdminService
from kairos.v1 import admin_pb2

from tests.unit.control.test_interrupted import catalog_v2, no_grace, started, versions
from tests.unit.gateway.test_admin_deadlines import Context, answer

__all__ = ["no_grace"]  # the fixture, used here too


def admin(controller) -> AdminService:
    return AdminService(SimpleNamespace(backend=SimpleNamespace(controller=lambda: controller),
                                        node=None))


def test_a_rollback_retried_with_its_version_answers_it_and_switches_nothing(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good, v2 = controller.catalog_version, catalog_v2(controller)
        bad = await controller.put_catalog(v2)
        service, to_good = admin(controller), admin_pb2.RollbackCatalogRequest(to_version=good)
        # what the operator names: GetCatalog and the status say it
        shown = await service.GetCatalog(admin_pb2.GetCatalogRequest(), Context(None))
        assert shown.version == bad and shown.previous_version == good
        status = await service.GetClusterStatus(admin_pb2.ClusterStatusRequest(), Context(None))
        assert status.previous_catalog_version == good
        for _ in range(2):  # the first answer lost at the caller's deadline: sent again
            info = await service.RollbackCatalog(to_good, Context(None))
            assert info.version == good and versions(backend) == {good}
        assert controller.previous_catalog == v2
        refused = await answer(service.RollbackCatalog(
            admin_pb2.RollbackCatalogRequest(to_version="v0"), Context(None)))
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.details == (f"the previous catalog is {bad!r}, not 'v0' "
                                   f"(catalog {good!r} runs): nothing was switched")
        assert versions(backend) == {good}
    asyncio.run(main())


def test_a_put_that_expected_another_running_version_fails_its_precondition(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good, v2 = controller.catalog_version, catalog_v2(controller)
        refused = await answer(admin(controller).PutCatalog(
            admin_pb2.CatalogText(yaml=v2, expected_current_version="v0"), Context(None)))
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.details.startswith(f"catalog {good!r} runs, not the expected 'v0': ")
        assert controller.catalog_version == good and versions(backend) == {good}
        info = await admin(controller).PutCatalog(
            admin_pb2.CatalogText(yaml=v2, expected_current_version=good), Context(None))
        assert controller.catalog_version == info.version != good
    asyncio.run(main())


@pytest.mark.parametrize("compiler", ["import time; time.sleep(60)", "raise SystemExit(3)"],
                         ids=["too long", "compiler died"])
def test_a_rollback_done_answers_ok_though_its_catalog_could_not_be_described(
        tmp_path, monkeypatch, compiler):
    """The restored catalog is compiled only to describe it: that compile failing (past
    CATALOG_COMPILE_S, its process dead) ended a rollback that was done with an error, and the
    retry it invited, without to_version, rolled back again to the catalog just left."""
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good, v2 = controller.catalog_version, catalog_v2(controller)
        await controller.put_catalog(v2)
        monkeypatch.setattr(compiling, "CATALOG_COMPILE_S", 0.5)
        monkeypatch.setattr(compiling, "COMPILER", (sys.executable, "-c", compiler))
        info = await admin(controller).RollbackCatalog(admin_pb2.RollbackCatalogRequest(),
                                                       Context(None))
        assert info == admin_pb2.CatalogInfo(version=good)  # the rest empty: not described
        assert versions(backend) == {good}
    asyncio.run(main())
