"""kairos.v1.AdminService: catalogs, cluster status, scaling and drains, through the
controller; the decision log's export, from the shards (logexport.py).

Every call needs a key with the admin scope (auth.py checks it before the handler runs); a
gateway runs at most bounds.ADMIN_CALLS of them at once, and compiles one catalog at a time
(compiling.py: in a process of its own; a ValidateCatalog is refused RESOURCE_EXHAUSTED while
another compile runs or waits, a catalog change waits its turn within its deadline). A
call to the controller ends within the caller's deadline (DEADLINE_EXCEEDED), and one that a
shard or the controller did not answer ends UNAVAILABLE naming it (the controller's own calls
have deadlines, settings.CONTROL_CALL_S), so a stuck shard never hangs an admin call.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable

import grpc

from kairos.core.errors import CatalogError
from kairos.v1 import admin_pb2, admin_pb2_grpc

from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.control.nodes import NodeRefused, NodeUnknown
from kairos.cluster.evidence import report as evidence_report
from kairos.cluster.gateway.calls import Gateway, fail
from kairos.cluster.gateway.compiling import CompilerFailed, OneCompile, Summary, TooLong
from kairos.cluster.gateway.logexport import export
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable, said
from kairos.cluster.transport.client import Busy

MAX_SHARDS = 1024
MAX_NODE_ID = 64  # Ray's node ids are 56 hex digits
HEX = frozenset("0123456789abcdef")
# a replay report kept with a catalog version: a few KiB for a catalog of tens of actions; it
# shares the request's bound (settings.MAX_MESSAGE_BYTES) with its catalog
MAX_EVIDENCE_BYTES = 256 * 1024
log = logging.getLogger("kairos.gateway")


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.backend = gateway.backend
        self.node = gateway.node
        self.compiles = OneCompile()

    async def ValidateCatalog(self, request: admin_pb2.CatalogText, context
                              ) -> admin_pb2.CatalogInfo:
        return _catalog_info(await self._compile(request.yaml, context, "<ValidateCatalog>"))

    async def PutCatalog(self, request: admin_pb2.CatalogText, context) -> admin_pb2.CatalogInfo:
        compiled = await self._compile(request.yaml, context, wait=True, unless_running=True)
        evidence = await _evidence(request.evidence_json, request.yaml, compiled, context)
        try:
            await _answer(context, self.backend.controller().put_catalog(
                request.yaml, evidence, request.expected_current_version or None))
        # other text under a version, not the expected one runs, or a shard refused the text
        except ValueError as exc:
            await fail(context, grpc.StatusCode.FAILED_PRECONDITION, said(exc))
        return _catalog_info(compiled)

    async def RollbackCatalog(self, request: admin_pb2.RollbackCatalogRequest, context
                              ) -> admin_pb2.CatalogInfo:
        controller = self.backend.controller()
        try:
            version = await _answer(context,
                                    controller.rollback_catalog(request.to_version or None))
        except ValueError as exc:  # no previous catalog, not to_version, or a shard refused it
            await fail(context, grpc.StatusCode.FAILED_PRECONDITION, said(exc))
        return await self._described(version, context)

    async def GetCatalog(self, request, context) -> admin_pb2.CatalogText:
        catalog = await _answer(context, self.backend.controller().get_catalog())
        return admin_pb2.CatalogText(yaml=catalog["text"], version=catalog["version"],
                                     evidence_json=catalog.get("evidence", ""),
                                     previous_version=catalog.get("previous_version", ""))

    async def GetClusterStatus(self, request, context) -> admin_pb2.ClusterStatus:
        st = await _answer(context, self.backend.controller().status())
        return admin_pb2.ClusterStatus(
            nodes=st["nodes"], partitions=st["partitions"], map_version=st["map_version"],
            catalog_version=st["catalog_version"], resident=st["resident"],
            model_version=st["learner"].get("model_version", 0),
            catalog_evidence=st.get("catalog_evidence", ""),
            previous_catalog_version=st.get("previous_catalog_version", ""),
            learner_unconfirmed=st["learner"].get("unconfirmed", False),
            learner_refused_unconfirmed=st["learner"].get("refused_unconfirmed", 0),
            learner_switching=st["learner"].get("switching", False),
            learner_unsaved=st["learner"].get("unsaved", 0),
            learner_saves_failed=st["learner"].get("saves_failed", 0),
            learner_saves_failing_s=st["learner"].get("saves_failing_s", 0.0),
            shards=[admin_pb2.ShardStatus(
                name=s["shard"], node=s.get("node") or "", partitions=s["partitions"],
                resident=s.get("resident", 0), passivated=s.get("passivated", 0),
                queued=s.get("queued", 0), available=s.get("available", True),
                catalog_version=s.get("catalog_version", ""),
                model_version=s.get("model_version", 0),
                problem=(s.get("recovery") or {}).get("failed", "")) for s in st["shards"]],
            node_status=[admin_pb2.NodeStatus(
                node_id=n["node"], address=n["address"], gateway_port=n["gateway_port"],
                serving=n["serving"], draining=n["draining"], shards=n["shards"],
                partitions=n["partitions"], resident=n["resident"], cpus=n["cpus"],
                controller=n["controller"])
                for n in st.get("node_status", ())])

    async def ScaleShards(self, request: admin_pb2.ScaleRequest, context
                          ) -> admin_pb2.ScaleResponse:
        if not 1 <= request.shards <= MAX_SHARDS:
            await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"shards: must be 1..{MAX_SHARDS}, got {request.shards}")
        if request.shards > (partitions := await self._partitions(context)):
            await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"shards: at most the cluster's {partitions} partitions (a shard past "
                       f"them would own none, yet run a process), got {request.shards}")
        done = await _answer(context, self.backend.controller().scale(request.shards))
        return admin_pb2.ScaleResponse(shards=done["shards"], moved=done["moved"],
                                       map_version=done["version"])

    async def _partitions(self, context) -> int:
        """The cluster's partition count, which its map has (UNAVAILABLE while this gateway
        has none yet: maps start at version 1)."""
        client = self.gateway.client
        if client.version == 0:
            await fail(context, grpc.StatusCode.UNAVAILABLE,
                       f"gateway {self.gateway.name} has no partition map yet (the cluster is "
                       f"starting): try again")
        return len(client.routes()[2])

    async def DrainNode(self, request: admin_pb2.DrainNodeRequest, context
                        ) -> admin_pb2.DrainNodeResponse:
        node = request.node_id
        if not 1 <= len(node) <= MAX_NODE_ID or not all(c in HEX for c in node):
            await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"node_id: must be a node's hex id (1..{MAX_NODE_ID} characters), "
                       f"got {node[:MAX_NODE_ID]!r}")
        if node == self.node:  # this gateway stops as part of the drain: the call would be cut
            await fail(context, grpc.StatusCode.FAILED_PRECONDITION,
                       f"node_id: this gateway runs on node {node} and stops with its drain; "
                       f"send DrainNode to a gateway on another node (kairos drain does)")
        try:
            done = await _answer(context, self.backend.controller().drain_node(node))
        except NodeUnknown as exc:
            await fail(context, grpc.StatusCode.NOT_FOUND, f"node_id: {said(exc)}")
        except NodeRefused as exc:
            await fail(context, grpc.StatusCode.FAILED_PRECONDITION, f"node_id: {said(exc)}")
        return admin_pb2.DrainNodeResponse(node_id=node, shards=done["shards"],
                                           moved=done["moved"], map_version=done["version"])

    async def ExportDecisionLog(self, request: admin_pb2.ExportDecisionLogRequest, context
                                ) -> AsyncIterator[admin_pb2.DecisionLogChunk]:
        async for chunk in export(self.gateway, request, context):
            yield chunk

    async def _described(self, version: str, context) -> admin_pb2.CatalogInfo:
        """The catalog running after a rollback to `version`, described. The rollback is done,
        so the call never fails here: an error would invite a retry, and one without
        to_version rolls back again, to the catalog just left. Whatever keeps the running
        catalog from being described (the controller, a compile too long or failed, the
        deadline) leaves only its version in the answer."""
        try:
            async with asyncio.timeout(context.time_remaining()):
                catalog = await self.backend.controller().get_catalog()
                version = catalog["version"]
                # its compile waits its turn rather than being refused
                return _catalog_info(await self.compiles.compile(catalog["text"], "<catalog>",
                                                                 False, True))
        except Exception as exc:  # whatever failed, the rollback is done
            log.warning("catalog %s runs after a rollback, but could not be described: %s: %s",
                        version, type(exc).__name__, exc)
            return admin_pb2.CatalogInfo(version=version)

    async def _compile(self, text: str, context, source: str = "<PutCatalog>",
                       strict: bool = True, wait: bool = False,
                       unless_running: bool = False) -> Summary:
        """The text's compile; with `wait` (a catalog change), after those before it, within
        the call's deadline, rather than refused while another runs. With `unless_running`
        (PutCatalog), a text the cluster runs or ran is compiled as a saved one: the controller
        answers that it runs (a retry, a deploy sending it again) or switches back to it (the
        previous file pushed again), and checks newer than it must not refuse it first."""
        try:
            async with asyncio.timeout(context.time_remaining()):
                try:
                    return await self.compiles.compile(text, source, strict, wait)
                except CatalogError:
                    if not (strict and unless_running and await self._ran(text)):
                        raise
                return await self.compiles.compile(text, source, False, wait)
        except TimeoutError:
            await fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                       "the catalog was not compiled within the call's deadline (this gateway "
                       "compiles one at a time)")
        except CatalogError as exc:
            await fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Busy as exc:
            await fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except TooLong as exc:  # the same text would take as long again: not worth a retry
            await fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except CompilerFailed as exc:
            await fail(context, grpc.StatusCode.INTERNAL, str(exc))


    async def _ran(self, text: str) -> bool:
        """Whether the cluster runs or ran the catalog `text` (not, when the controller does
        not answer: the text's refusal stands, and a retry may find it)."""
        try:
            running = await self.backend.controller().get_catalog()
        except (Unavailable, RuntimeError, StoreUnavailable):
            return False
        return running["text"] == text or \
            catalog_digest(text) in running.get("ran_digests", ())  # older controllers: none


async def _answer(context, work: Awaitable) -> Any:
    """The controller's answer, within the caller's deadline (if it set one)."""
    try:
        async with asyncio.timeout(context.time_remaining()):
            return await work
    except TimeoutError:
        await fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                   "the controller did not answer within the call's deadline")
    # a shard (named) or the controller is stuck, or the store did not take the new state
    except (Unavailable, RuntimeError, StoreUnavailable) as exc:
        await fail(context, grpc.StatusCode.UNAVAILABLE, said(exc))


async def _evidence(text: str, catalog_text: str, compiled: Summary, context
                    ) -> dict[str, str]:
    """PutCatalog's evidence_json checked: a replay report (at most MAX_EVIDENCE_BYTES) whose
    candidate is this catalog: its version and its text's digest (a candidate edited after its
    replay keeps its version); what the controller keeps: {json, summary}."""
    if not text:
        return {}
    size = len(text.encode())
    if size > MAX_EVIDENCE_BYTES:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"evidence_json: at most {MAX_EVIDENCE_BYTES} bytes, got {size}")
    try:
        report = json.loads(text)
        version = report["candidate"]["version"]
        digest = report["candidate"].get("digest")
        summary = evidence_report.headline(report)
    # RecursionError: nested deeper than the parser's stack (under 1 MiB of brackets);
    # ArithmeticError: numbers past a float's, which the headline's int() and float() refuse
    # (1e999 parses as infinity; an integer of 400 digits is past any float)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError,
            ArithmeticError) as exc:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"evidence_json: not a replay report (kairos replay's replay.json): "
                   f"{type(exc).__name__}: {str(exc)[:200]}")
    if version != compiled.version:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"evidence_json: the report is about catalog version {str(version)[:100]!r}, "
                   f"not {compiled.version!r}")
    if digest is None:  # a report written before they named one
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                   "evidence_json: the report names no catalog digest (written by an older "
                   "kairos replay): run kairos replay on this catalog again")
    if digest != catalog_digest(catalog_text):
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"evidence_json: the report is about another text of version "
                   f"{compiled.version!r} (digest {str(digest)[:64]!r}), not this catalog's "
                   f"{catalog_digest(catalog_text)!r}: run kairos replay on this catalog again")
    return {"json": text, "summary": summary}


def _catalog_info(compiled: Summary) -> admin_pb2.CatalogInfo:
    return admin_pb2.CatalogInfo(**compiled._asdict())
