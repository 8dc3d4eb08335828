"""What GetClusterStatus and `kairos status` show: the controller's map and catalog, every
shard as its health answers (or unavailable), the learner, and each node (nodes.py)."""
from __future__ import annotations

import asyncio
from typing import Any

from kairos.cluster.transport.backend import Unavailable


async def cluster_status(controller: Any) -> dict[str, Any]:
    """`controller`: the Controller (not imported: it imports this module)."""
    shards = await asyncio.gather(*(_shard_status(controller, s) for s in controller.shards))
    try:
        learner = await controller.backend.learner().status()
    except Unavailable:
        learner = {"available": False}
    return {"map_version": controller.map.version, "partitions": controller.n_partitions,
            "catalog_version": controller.catalog_version, "nodes": controller.backend.nodes(),
            "catalog_evidence": controller.evidence.get("summary", ""),
            "previous_catalog_version": await controller.previous_version(),
            "shards": shards, "learner": learner, "unsettled_moves": len(controller.moving),
            "resident": sum(s.get("resident", 0) for s in shards),
            "node_status": [{**n, "controller": n["node"] == controller.home_node}
                            for n in controller.nodes.describe(shards)]}


async def _shard_status(controller: Any, name: str) -> dict[str, Any]:
    try:
        health = await controller.backend.shard(name).health()
    except Unavailable:
        health = {"available": False}
    return {**health, "shard": name, "placed_on": controller.placement.get(name),
            "partitions": len(controller.map.partitions_of(name))}
