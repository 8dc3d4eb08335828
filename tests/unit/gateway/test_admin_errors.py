"""What an admin call's error tells the client when the controller raised: through Ray, the
raised error's own message, never the RayTaskError's (the controller's traceback, process id
and address), nor a shard's in the controller's message; a store that did not take the
controller's state ends UNAVAILABLE, and a catalog a shard refused FAILED_PRECONDITION."""
from __future__ import annotations

import asyncio
import traceback
from types import SimpleNamespace

import grpc
import pytest
from ray.exceptions import RayTaskError

from kairos.cluster.control.catalogs import CatalogRefused
from kairos.cluster.control.nodes import NodeUnknown
from kairos.cluster.gateway.admin import AdminService
from kairos.cluster.storage.store import StoreUnavailable
from kairos.v1 import admin_pb2

from tests.unit.control.test_interrupted import catalog_v2, no_grace, started, versions
from tests.unit.gateway.test_admin_deadlines import MAPPED, Context, answer

__all__ = ["no_grace"]  # the fixture, used here too


LEAKS = ("ray::", "pid=", "10.1.2.3", "Traceback", "File ", "\x1b[")  # of through_ray's


def through_ray(exc: Exception) -> Exception:
    """`exc` as a Ray actor's caller gets it."""
    try:
        raise exc
    except Exception:
        text = traceback.format_exc()
    return RayTaskError("ControllerActor.call", text, exc,
                        proctitle="ray::ControllerActor.call()", pid=4242,
                        ip="10.1.2.3").as_instanceof_cause()


class Raising:
    """A controller whose every call raises `error`."""

    def __init__(self, error: Exception):
        self.error = error

    async def put_catalog(self, catalog_text: str, evidence: dict | None = None,
                          expected_version: str | None = None) -> str:
        raise self.error

    async def rollback_catalog(self, to_version: str | None = None) -> str:
        raise self.error

    async def scale(self, n_shards: int) -> dict:
        raise self.error

    async def drain_node(self, node: str) -> dict:
        raise self.error


def admin(error: Exception) -> AdminService:
    controller = Raising(error)
    return AdminService(SimpleNamespace(backend=SimpleNamespace(controller=lambda: controller),
                                        node=None, client=MAPPED))


def calls(default_yaml):
    return {
        "PutCatalog": lambda s: s.PutCatalog(
            admin_pb2.CatalogText(yaml=default_yaml.read_text()), Context(None)),
        "RollbackCatalog": lambda s: s.RollbackCatalog(admin_pb2.RollbackCatalogRequest(),
                                                       Context(None)),
        "ScaleShards": lambda s: s.ScaleShards(admin_pb2.ScaleRequest(shards=2),
                                               Context(None)),
        "DrainNode": lambda s: s.DrainNode(admin_pb2.DrainNodeRequest(node_id="ab12"),
                                           Context(None)),
    }


CATALOG_CALLS = ("PutCatalog", "RollbackCatalog")


@pytest.mark.parametrize("error, code, names", [
    (ValueError("there is no previous catalog version to roll back to"),
     grpc.StatusCode.FAILED_PRECONDITION, CATALOG_CALLS),
    (CatalogRefused("catalog x was not switched: kairos-shard-0002: rule r1: unknown "
                    "feature"), grpc.StatusCode.FAILED_PRECONDITION, CATALOG_CALLS),
    (RuntimeError("handoffs failed (their partitions stay where they were): "
                  "kairos-shard-0001 -> kairos-shard-0002: adopt failed"),
     grpc.StatusCode.UNAVAILABLE, (*CATALOG_CALLS, "ScaleShards", "DrainNode")),
    (StoreUnavailable("the store did not answer"), grpc.StatusCode.UNAVAILABLE,
     (*CATALOG_CALLS, "ScaleShards", "DrainNode")),
    (NodeUnknown("ab12 is not an alive node of this cluster"), grpc.StatusCode.NOT_FOUND,
     ("DrainNode",)),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_an_error_raised_in_the_controller_reaches_the_client_as_its_own_message(
        default_yaml, error, code, names):
    async def main():
        for name in names:
            aborted = await answer(calls(default_yaml)[name](admin(through_ray(error))))
            assert aborted.code == code, name
            assert str(error) in aborted.details, name
            for leak in LEAKS:
                assert leak not in aborted.details, (name, aborted.details)
    asyncio.run(main())


def test_a_catalog_a_shard_refused_fails_its_precondition_with_the_shards_own_error(
        tmp_path, default_yaml):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        before, refusing = controller.catalog_version, controller.shards[1]

        def refuse(text: str) -> str:  # as the controller sees it: through Ray
            raise through_ray(ValueError("rule r1: unknown feature"))

        backend.shards[refusing].prepare = refuse
        # the controller's error as the gateway gets it: through Ray too
        service = admin(through_ray(await _raised(controller.put_catalog(
            catalog_v2(controller)))))
        aborted = await answer(calls(default_yaml)["PutCatalog"](service))
        assert aborted.code == grpc.StatusCode.FAILED_PRECONDITION
        assert aborted.details.endswith(f"{refusing}: rule r1: unknown feature")
        for leak in LEAKS:
            assert leak not in aborted.details, aborted.details
        assert versions(backend) == {before}
    asyncio.run(main())


async def _raised(call) -> Exception:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("it did not raise")
