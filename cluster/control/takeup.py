"""Where a take-up creates the saved shards it cannot reach: not all on the first node back.

After a full restart (a KubeRay Recreate upgrade, the head container restarted, a suspend and
resume) the head's node is alive first and the workers rejoin tens of seconds to minutes later.
Shards ask Ray for no resources and each is placed on the node with the fewest, so a take-up
that created them at once would put every one on the head, each loading its partitions'
customers: more memory than the head has, and the head, killed, restarts into the same take-up.

So the state records how densely shards were placed (`density`: the most any one node hosted),
and a take-up that must create shards first waits, up to KAIROS_TAKEUP_NODES_WAIT_S, until the
alive nodes can host them all at no more than that a node (`nodes_to_host`). It waits only when
they cannot: a controller Ray restarted, whose shards live on, creates none and waits for
nothing. Nothing is written while it waits: a controller killed meanwhile waits again.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from kairos.cluster.control.nodes import Nodes
from kairos.cluster.settings import TAKEUP_NODES_WAIT_S
from kairos.cluster.storage.ownership import StoreClaim

log = logging.getLogger("kairos.controller")
POLL_S = 1.0  # how often the wait reads the node table


def density(placement: dict[str, str | None]) -> int:
    """The most shards placed on any one node (0 where none is placed on a known node)."""
    return max(Counter(n for n in placement.values() if n is not None).values(), default=0)


def room(nodes: Nodes, alive: list[str], placement: dict[str, str | None], most: int) -> int:
    """How many more shards the serving nodes of `alive` take before one holds `most`."""
    return sum(max(0, most - load) for load in nodes.load(alive, placement).values())


async def nodes_to_host(nodes: Nodes, placement: dict[str, str | None], n_new: int,
                        saved_density: int | None, claim: StoreClaim) -> None:
    """Return once the serving nodes alive can take `n_new` more shards besides those in
    `placement` at no more than `saved_density` a node, or once KAIROS_TAKEUP_NODES_WAIT_S has
    passed (a warning says the density is exceeded then). At once without a density (a state
    saved before it was kept) or shards to create. The node table is read every POLL_S with an
    await between reads: the long polls this loop serves go on. StoreInUse once the claim on
    the store is lost meanwhile."""
    if not n_new or not saved_density:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TAKEUP_NODES_WAIT_S
    logged: list[str] | None = None  # the alive nodes the last notice named
    while (free := room(nodes, alive := nodes.alive(), placement, saved_density)) < n_new:
        claim.check()  # lost while it waited: no shard is created
        serving = len(nodes.serving(alive))
        if loop.time() >= deadline:
            log.warning("taking up the cluster: after %g s the %d serving nodes alive take "
                        "%d of the %d shards to create at %d a node, the most a node hosted "
                        "when the cluster was saved: all are placed on them, more to a node",
                        TAKEUP_NODES_WAIT_S, serving, free, n_new, saved_density)
            return
        if alive != logged:
            log.warning("taking up the cluster: waiting up to %.0f s for nodes to host the %d "
                        "shards to create at no more than %d a node, the most a node hosted "
                        "when the cluster was saved: the %d serving nodes alive take %d",
                        deadline - loop.time(), n_new, saved_density, serving, free)
            logged = alive
        await asyncio.sleep(min(POLL_S, deadline - loop.time()))
    if logged is not None:
        log.warning("taking up the cluster: the %d serving nodes alive host the %d shards to "
                    "create at no more than %d a node", len(nodes.serving(alive)), n_new,
                    saved_density)
