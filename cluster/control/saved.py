"""The controller's state as the store's meta keeps it (`Controller._save` writes it at every
change; `Controller.resume` takes it up): the map, shard names, catalogs, moves under way,
watches and nodes."""
from __future__ import annotations

from typing import Any

import msgpack

from kairos.cluster.control.moves import moves_to_state

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
        "next_index": controller._next_index, "catalog": controller.catalog_text,
        "previous_catalog": controller.previous_catalog,
        "moving": moves_to_state(controller.moving),
        "evidence": [controller.evidence, controller.previous_evidence],
        "nodes": controller.nodes.to_state(),
        "channel_watches": sorted((list(w) for w in controller.channel_watches), key=str)},
        use_bin_type=True)
