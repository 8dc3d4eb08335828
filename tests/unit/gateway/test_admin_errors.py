"""What an admin call's error tells the client when the controller raised: through Ray, the
raised error's own message, never the RayTaskError's (the controller's traceback, process id
and address); a store that did not take the controller's state ends UNAVAILABLE."""
from __future__ import annotations

import asyncio
import traceback
from types import SimpleNamespace

import grpc
import pytest
from ray.exceptions import RayTaskError

from kairos.cluster.control.nodes import NodeUnknown
from kairos.cluster.gateway.admin import AdminService
from kairos.cluster.storage.store import StoreUnavailable
from kairos.v1 import admin_pb2

from tests.unit.gateway.test_admin_deadlines import Context, answer


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
                                        node=None))


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
    (RuntimeError("catalog x was not switched: kairos-shard-0002: refused"),
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
            for leak in ("ray::", "pid=", "10.1.2.3", "Traceback", "File ", "\x1b["):
                assert leak not in aborted.details, (name, aborted.details)
    asyncio.run(main())
