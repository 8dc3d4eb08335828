"""Where a take-up creates the saved shards it cannot reach: not all on the first node back.

After a full restart (a KubeRay Recreate upgrade, the head container restarted, a suspend and
resume) the head's node is alive first and the workers rejoin tens of seconds to minutes later.
Shards ask Ray for no resources and each is placed on the node with the fewest, so a take-up
that created them at once would put every one on the head, each loading its partitions'
customers: more memory than the head has, and the head, killed, restarts into the same take-up.

So the state records how densely shards were placed (`Density`: about the most any one node
hosted), and a take-up after a full restart first waits, up to KAIROS_TAKEUP_NODES_WAIT_S,
until the alive nodes can host the shards at no more than that a node (`nodes_to_host`). A
take-up where any saved shard answers waits for nothing: the Ray cluster survived (Ray
restarted the controller), so no node is about to rejoin, and the shards of a node lost for
good are created on the nodes there are. Nothing is written while it waits: a controller
killed meanwhile waits again.

The density is about the nodes the cluster was spread over, not those it runs on: after a
node lost for good, or nodes back after a take-up gave up on them (Ray gives them new ids:
joiners, given new shards), the shards stay more than the nodes there are host at it. So the
state also records how many serving nodes the cluster last ran on (`NodesRun`), and the wait
ends as well once that many are alive, whichever comes first. The count follows the control
loop's rounds: a rise at any round, a drop only once every settled round for
KAIROS_TAKEUP_NODES_WAIT_S found fewer, so that nodes only slow to come back (a take-up that
gave up on them, a short preemption) are waited for again. A state saved before the count was
kept has none: its take-up waits for the density alone, and the count starts from the nodes
the state knew (`Nodes.known`), so that a drop from them waits as any drop does.

What a start does with the shards it took up (`kept_on`, `resumed_count`, `uneven`): by
default it scales to the count asked (`kairos up --shards`); with KAIROS_RESUME_KEEPS_SHARDS,
as a KubeRay head whose `kairos start --shards` never changes, it keeps them, as many as the
nodes hosting them are sized for: the joiners' shards, waited for above, are not retired
seconds later with their partitions moved into the count asked.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from kairos.cluster.control.nodes import Nodes
from kairos.cluster.control.partitions import PartitionMap
from kairos.cluster.settings import RESUME_KEEPS_SHARDS, TAKEUP_NODES_WAIT_S
from kairos.cluster.storage.ownership import StoreClaim

log = logging.getLogger("kairos.controller")
POLL_S = 1.0  # how often the wait reads the node table


def _ceil_div(n: int, d: int) -> int:
    """ceil(n / d), `d` taken as 1 at least: the nodes `n` shards take at `d` a node, say."""
    return -(-n // max(d, 1))


class Density:
    """The density a save records: the lower of the current placement's (the most shards on
    one node) and a ceiling. The ceiling is the density taken up (or saved before), and only
    the events that add shards on purpose set it: a scale-up to an even spread of the count
    asked over the serving nodes (`scaled`: higher or lower than before, as the count and the
    serving nodes have it), a joiner's shards to its share (`joined`: never lower). So a
    placement crowded by a take-up that timed out, or by a node lost (its shards replaced on
    the others), is never recorded, nor are the steps that spread it out again (each creates a
    shard on a node with room before it retires one of the crowded node's: `_uncrowd`): the
    next full restart waits for the nodes again, rather than crowding the head at once. Nor
    does the cluster running on fewer nodes raise it: a crowding that lasts is what `NodesRun`
    records, and a take-up waits for no more nodes than that."""

    def __init__(self) -> None:
        self.ceiling = 0  # none: a first start, or a state saved before it was kept

    def taken_up(self, saved: int | None) -> None:
        """The density a state recorded (None: saved before it was kept)."""
        self.ceiling = saved or 0

    def scaled(self, n_shards: int, serving: int) -> None:
        """A scale-up to `n_shards` shards, with `serving` nodes to spread them over."""
        self.ceiling = _ceil_div(n_shards, serving)

    def joined(self, shares: Iterable[int]) -> None:
        """Nodes joined, each given as many new shards as its share in `shares`."""
        self.ceiling = max(self.ceiling, *shares, 0)

    def to_save(self, placement: dict[str, str | None]) -> int:
        """The density to record of `placement` (shard -> node), the ceiling lowered to it."""
        by_node = Counter(n for n in placement.values() if n is not None)
        if not self.ceiling and by_node:  # none yet: the first save sets it, an even spread
            self.ceiling = _ceil_div(sum(by_node.values()), len(by_node))
        self.ceiling = min(self.ceiling, max(by_node.values(), default=0))
        return self.ceiling


class NodesRun:
    """How many serving nodes the cluster last ran on, as the state records it (`count`;
    None: a first start before its first settled round). Every round of the control loop
    that read the nodes and found more raises it at once (the cautious direction: a cluster
    that never settles, a gateway retried forever, still records its joiners); fewer lower it
    only once every settled round since one at least KAIROS_TAKEUP_NODES_WAIT_S before found
    fewer, to the most of them any found: a round that is not settled (a node lost, its
    shards' replacements not started yet) lowers nothing, and what it found does not count
    in that most (a node that never lasts until the cluster settles, a pod crash-looping, is
    none to wait for). A take-up counts anew (`taken_up`):
    the rounds on the nodes back before the slow ones lower nothing within the wait's length.
    `unsaved` until a save of the count succeeded: a save that failed is made again by the
    next round.

    A drop is timed only: nothing tells a node lost for good from one away for long. Every
    worker preempted, or spot capacity gone, for longer than the wait drops the count to the
    nodes left (1: the head alone), and a full restart then waits for no worker: where
    workers can be away longer, raise KAIROS_TAKEUP_NODES_WAIT_S. The timer lives in the
    controller's process: a controller Ray restarts takes the saved count up and starts it
    again, a drop then waiting a wait's length from its own first settled round."""

    def __init__(self) -> None:
        self.count: int | None = None
        self.saved: int | None = None  # the count the last save that succeeded wrote
        self._fewer_since: float | None = None  # the first round of those that found fewer
        self._fewer = 0  # the most serving nodes any of them found

    def taken_up(self, saved: int | None, known: int | None) -> None:
        """The count a state recorded (`saved`), or, from a state saved before it was kept
        (None), the serving nodes it knew (`known`: `Nodes.known` less those draining; None
        where it kept no nodes either), which the next save records."""
        self.count, self.saved = saved if saved is not None else known, saved
        self._fewer_since = None

    def ran(self, serving: int, settled: bool, now: float) -> None:
        """A round ended at `now` (seconds, monotonic) having read `serving` nodes serving;
        `settled`: it left nothing to do. A first start takes its first settled round's."""
        if self.count is None:  # no bound, the most cautious: only a settled round sets one
            if settled:
                self.count = serving
            return
        if serving >= self.count:
            self.count, self._fewer_since = serving, None
            return
        if not settled:  # its nodes may be only slow: replacements not started, say
            return
        if self._fewer_since is None:
            self._fewer_since, self._fewer = now, serving
        self._fewer = max(self._fewer, serving)
        if now - self._fewer_since < TAKEUP_NODES_WAIT_S:
            return
        if TAKEUP_NODES_WAIT_S:  # else no take-up waits: nothing to tell
            log.warning("the cluster has run on %d serving nodes at most for %.4g s, not %d: "
                        "a full restart now waits for %d at most", self._fewer,
                        now - self._fewer_since, self.count, self._fewer)
        self.count, self._fewer_since = self._fewer, None

    @property
    def unsaved(self) -> bool:
        return self.count != self.saved


async def nodes_to_host(nodes: Nodes, answered: bool, n_new: int, saved_density: int | None,
                        ran_on: int | None, claim: StoreClaim) -> None:
    """Return once the serving nodes alive can take `n_new` shards at no more than
    `saved_density` a node, or are as many as the `ran_on` the cluster last ran on
    (`NodesRun`; None: no such bound), or once KAIROS_TAKEUP_NODES_WAIT_S has passed. A
    warning says where more than the density go to a node: the wait timed out, or `ran_on`
    nodes alive ended it (or were there from the start) fewer than the density asks for. At
    once where a saved shard `answered` (Ray's cluster survived), without a density (a state
    saved before it was kept), without shards to create, or with the wait set to 0 (turned
    off). The node table is read every POLL_S with an await between reads: the long polls
    this loop serves go on. StoreInUse once the claim on the store is lost meanwhile."""
    if answered or not n_new or not saved_density or not TAKEUP_NODES_WAIT_S:
        return
    wanted = _ceil_div(n_new, saved_density)  # the nodes that host them at the density
    if ran_on:
        wanted = min(wanted, ran_on)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TAKEUP_NODES_WAIT_S
    logged: list[str] | None = None  # the alive nodes the last notice named
    # a draining node is alive and hosts no shard: it is no room
    while len(serving := nodes.serving(nodes.alive())) < wanted:
        claim.check()  # lost while it waited: no shard is created
        free = saved_density * len(serving)
        if loop.time() >= deadline:
            log.warning("taking up the cluster: after %g s the %d serving nodes alive take "
                        "%d of the %d shards to create at %d a node, the most a node hosted "
                        "when the cluster was saved: all are placed on them, more to a node",
                        TAKEUP_NODES_WAIT_S, len(serving), free, n_new, saved_density)
            return
        if serving != logged:
            log.warning("taking up the cluster: waiting up to %.4g s for %d serving nodes, "
                        "those that host the %d shards to create at no more than %d a node, "
                        "the most a node hosted when the cluster was saved, or as many as it "
                        "last ran on if fewer: the %d serving nodes alive take %d",
                        deadline - loop.time(), wanted, n_new, saved_density, len(serving),
                        free)
            logged = serving
        await asyncio.sleep(min(POLL_S, deadline - loop.time()))
    if saved_density * len(serving) < n_new:  # said even without a wait: the head crowded
        log.warning("taking up the cluster: the %d serving nodes alive are as many as the "
                    "cluster last ran on: the %d shards to create are placed on them, more "
                    "than %d a node", len(serving), n_new, saved_density)
    elif logged is not None:
        log.warning("taking up the cluster: the %d serving nodes alive host the %d shards to "
                    "create at no more than %d a node", len(serving), n_new, saved_density)


def kept_on(nodes: Nodes, placement: dict[str, str | None]) -> list[str] | None:
    """With KAIROS_RESUME_KEEPS_SHARDS, the alive nodes hosting a shard a resume took up
    (`placement`): no joiners (`Nodes.known`), given no share of new shards, those a scale
    down (`resumed_count`) leaves with none included (`_uncrowd` gives them a crowded node's).
    An alive node hosting none joined, and the control loop gives it its share as it would
    after the start. None without the setting: `--shards` placed them all."""
    if not RESUME_KEEPS_SHARDS:
        return None
    hosting = set(placement.values())
    return [n for n in nodes.alive() if n in hosting]


def resumed_count(saved: int, asked: int, nodes: Nodes, kept: list[str] | None) -> int:
    """The shard count a start that took up `saved` shards scales to, asked for `asked`
    (`--shards`): `asked`, or where it keeps them on the nodes `kept` (`kept_on`), as many as
    those serving are sized for (`Nodes.shares`), `saved` at most and `asked` at least. A
    take-up that stopped waiting for nodes (`nodes_to_host`) crowded the shards of those not
    back onto those alive: kept there, they would stay above their share, as the nodes back
    later are joiners, each given its full share of new shards, and the count would grow past
    what was saved."""
    if kept is None:
        return asked
    return max(asked, min(saved, sum(nodes.shares(nodes.serving(kept)).values())))


def uneven(kept: list[str] | None, spread: PartitionMap, target: list[str]) -> bool:
    """Whether a start that keeps its shards (`kept`: `kept_on`) scales them though their
    count is unchanged: a scale, drain or join cut short left their partitions spread unevenly
    over `target`, which no round of the control loop evens out, and a scale does."""
    return kept is not None and bool(spread.plan(target, 1))
