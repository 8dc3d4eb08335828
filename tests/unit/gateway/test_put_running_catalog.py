"""PutCatalog of the catalog the cluster runs answers that it runs, even where checks newer
than that catalog (a version with a space, valid before f8cc0db) would refuse it as a new one:
the gateway's compile came before the controller's answer and refused it INVALID_ARGUMENT. A
new catalog those checks refuse is still refused, and so is the running one by
ValidateCatalog, which judges a text as a new catalog."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.gateway.admin import AdminService
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled
from kairos.v1 import admin_pb2

from tests.unit.control.test_catalog_versions import SPACED, older_release
from tests.unit.control.test_interrupted import Crashing, no_grace, versions
from tests.unit.gateway.test_admin_deadlines import Context, answer

__all__ = ["no_grace", "older_release"]  # the fixtures, used here too
pytestmark = pytest.mark.usefixtures("older_release")  # clusters started with SPACED
REFUSED = "version: expected at most 64 ASCII letters, digits and punctuation marks"


async def running(store: str, text: str) -> tuple[Crashing, AdminService]:
    """A cluster that took `text` up before the checks that refuse it, and an AdminService."""
    backend = Crashing()
    backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                    unconfirmed=True)
    backend.local_controller = Controller(backend, text, n_partitions=64, store_url=store)
    await backend.local_controller.start(2)
    return backend, AdminService(SimpleNamespace(backend=backend, node=None))


def test_put_catalog_of_the_running_text_answers_that_it_runs(tmp_path):
    async def main():
        backend, service = await running(str(tmp_path), SPACED)
        info = await service.PutCatalog(admin_pb2.CatalogText(yaml=SPACED), Context(30))
        assert info.version == "2026.12 launch" and info.actions >= 40
        assert backend.local_controller.previous_catalog is None  # nothing was switched
        assert versions(backend) == {"2026.12 launch"}
    asyncio.run(main())


def test_a_new_catalog_the_newer_checks_refuse_is_still_refused(tmp_path):
    async def main():
        backend, service = await running(str(tmp_path), SPACED)
        new = SPACED.replace("2026.12 launch", "2026.12 launch 2")
        put = await answer(service.PutCatalog(admin_pb2.CatalogText(yaml=new), Context(30)))
        validated = await answer(service.ValidateCatalog(admin_pb2.CatalogText(yaml=SPACED),
                                                         Context(30)))
        assert put.code == validated.code == grpc.StatusCode.INVALID_ARGUMENT
        assert put.details.startswith("<PutCatalog>:") and REFUSED in put.details
        assert validated.details.startswith("<ValidateCatalog>:")
        assert REFUSED in validated.details
        assert versions(backend) == {"2026.12 launch"}
    asyncio.run(main())


def test_the_previous_file_pushed_again_goes_back_to_it(tmp_path):
    # k8s/README's way back: push the previous file (as `kairos catalog rollback` would)
    async def main():
        backend, service = await running(str(tmp_path), SPACED)
        newer = SPACED.replace('"2026.12 launch"', "v-next")
        assert (await service.PutCatalog(admin_pb2.CatalogText(yaml=newer),
                                         Context(30))).version == "v-next"
        back = await service.PutCatalog(admin_pb2.CatalogText(yaml=SPACED), Context(30))
        assert back.version == "2026.12 launch"
        assert backend.local_controller.catalog_version == "2026.12 launch"
    asyncio.run(main())
