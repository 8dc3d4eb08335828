"""The controller's state as the store's meta keeps it (`Controller._save` writes it at every
change; `Controller.resume` takes it up): the map, shard names (and those handed out to shards
being created), catalogs, moves and replacements under way, watches, nodes, about the most
shards a node hosted and how many serving nodes the cluster last ran on (takeup.py)."""
from __future__ import annotations

from typing import Any

import msgpack

from kairos.cluster.control.catalog_identity import VersionsRun
from kairos.cluster.control.moves import moves_from_state, moves_to_state
from kairos.cluster.control.partitions import PartitionMap

STATE_KEY = "controller"  # the store meta holding the controller's state
STATE_FORMAT = 1


def state_blob(controller: Any) -> bytes:
    """`controller`: the Controller (not imported: it imports this module)."""
    names = sorted(set(controller.placement) | set(controller.map.owners))
    index = {n: i for i, n in enumerate(names)}
    return msgpack.packb({
        "format": STATE_FORMAT, "n_partitions": controller.n_partitions, "shards": names,
        "target": controller.map.shards,
        "owners": [index[o] for o in controller.map.owners], "version": controller.map.version,
        "next_index": controller._next_index, "starting": sorted(controller.starting),
        "catalog": controller.catalog_text,
        "previous_catalog": controller.previous_catalog,
        "versions_run": controller.versions_run.to_state(),
        "moving": moves_to_state(controller.moving),
        # [partition, journal] pairs: msgpack maps take no integer keys back
        "replacing": {name: sorted([p, journal] for p, journal in sources.items())
                      for name, sources in controller.replacing.items()},
        "evidence": [controller.evidence, controller.previous_evidence],
        "nodes": controller.nodes.to_state(),
        # how a take-up places shards: no denser than the cluster was spread (takeup.py)
        "density": controller.density.to_save(controller.placement),
        # the serving nodes it last ran on: a take-up waits for no more (takeup.py). An older
        # controller ignores it and saves none: its state's take-up waits without that bound,
        # and counts from the nodes it knew
        "nodes_run": controller.nodes_run.count,
        "channel_watches": sorted((list(w) for w in controller.channel_watches), key=str)},
        use_bin_type=True)


def take_up(controller: Any, state: dict[str, Any], catalog_version: str) -> list[str]:
    """Set `controller`'s map, catalogs, moves, replacements, watches, nodes and the names of
    shards being created from a saved `state` (states saved before replacements, nodes, the
    versions run or the names being created were kept have none), its catalog's version
    being `catalog_version` (compiled by the caller, off the event loop), the density it
    recorded of them and the serving nodes it last ran on; the names of every shard it knew,
    owning partitions or retiring."""
    names = state["shards"]
    controller.map = PartitionMap([names[i] for i in state["owners"]], state["version"],
                                  state["target"])
    controller._next_index = state["next_index"]
    controller.starting = set(state.get("starting", ()))
    controller.catalog_text = state["catalog"]
    controller.catalog_version = catalog_version
    controller.previous_catalog = state["previous_catalog"]
    controller.versions_run = VersionsRun(state.get("versions_run", ()))
    controller.evidence, controller.previous_evidence = state.get("evidence", ({}, {}))
    controller.channel_watches = {tuple(w) for w in state["channel_watches"]}
    controller.moving = moves_from_state(state.get("moving", []))
    controller.replacing = {name: {int(p): journal for p, journal in pairs}
                            for name, pairs in state.get("replacing", {}).items()}
    controller.nodes.take_up(state.get("nodes"))
    controller.density.taken_up(state.get("density"))
    # no placement is saved (shard -> node): the nodes given their shards stand for it
    known = controller.nodes.known - controller.nodes.draining
    controller.nodes_run.taken_up(state.get("nodes_run"), len(known) or None)
    return names
