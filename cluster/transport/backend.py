"""The seam between the runtime's roles and what carries their calls.

The controller, the client, the gateway and the shards' background loops reach each other only
through a `Backend` and the typed handles it gives out: a `ShardControl` per shard, the
`LearnerControl`, the `ControllerControl` and a `WatchSink` per gateway. Request batches go
by `Backend.send`, as protocol.py's requests and replies. ray_backend.py is the real Backend;
tests/cluster/local_backend.py runs the same roles in one process, so the logic above runs and
is tested without Ray (Ray Serve's ActorReplicaWrapper is the model).

Every handle raises `Unavailable` when the other side cannot answer (dead, restarting, gone);
any other exception is the other side's own error (a ValueError from the controller, an
InputError from a shard), raised as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kairos.cluster.protocol import Reply, Request
from kairos.cluster.settings import CONTROL_CALL_S, LONG_POLL_S

if TYPE_CHECKING:  # types only
    import numpy as np

    from kairos.core.decision import Decision
    from kairos.core.models import ModelDelta

# (sink, channel, placement): a gateway watching every customer's best action for a view
ChannelWatch = tuple[str, str, str | None]


class Unavailable(Exception):
    """A shard, the learner, the controller or a sink did not answer (dead, restarting,
    gone, or not within the call's deadline: stopped, wedged): the call may or may not have
    taken effect."""


class ShardUnavailable(Unavailable):
    """The shard answered, but failed the request: its own UNAVAILABLE reply (recovering from
    the store, its journal or a round failed, the customer's home is damaged), or an error
    its data plane answered for the batch."""


def said(exc: BaseException) -> str:
    """What an error raised on the other side tells a client: through Ray, the raised error's
    own message (`cause`), not the RayTaskError's, which adds the raising process's traceback,
    process title, id and address (and terminal colours)."""
    return str(getattr(exc, "cause", exc))


class NotSent(Unavailable):
    """A batch never left this process (its connection had closed before it was written):
    it cannot have taken effect, so it may be sent again. `gapped`: batches written before
    it on that connection went unanswered, so its session may have a gap at the shard that
    nothing will fill; it goes again only in a fresh session."""

    gapped = False


class NotCarried(Unavailable):
    """A batch the transport cannot carry (a value msgpack has no type for, a frame over the
    data plane's limits): nothing of it was sent, and sending it again would fail again."""


class NotRunning(Unavailable):
    """The learner's answer to a delta of a catalog version it has not run: the switch has
    not reached it yet (the shard sends the delta again), or it lost what it ran (a restart
    before its state was saved)."""


class NoSuchCall(Exception):
    """The other side has no such call (it runs an older Kairos): not an error the call
    raised there, which comes through as raised, whatever its class."""


@dataclass
class Published:
    """A model version as the learner publishes it and shards adopt it."""

    version: int
    catalog_version: str
    mean: np.ndarray
    precision: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    value_count: np.ndarray
    value_sum: np.ndarray
    inputs: np.ndarray


class ShardControl(Protocol):
    """A shard's control and admin calls (the controller's, and `status`)."""

    name: str  # the shard's

    async def data_address(self) -> tuple[str, int, bytes, bytes | None]:
        """Where the shard serves request batches: host, port, the secret of this
        incarnation that a data plane connection must prove it knows (dataplane.py), and the
        SHA-256 fingerprint of the certificate it serves TLS with, which a connection pins
        (None: it serves no TLS, on loopback; pinned.py)."""

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[ChannelWatch], map_version: int,
                    sources: dict[int, str] | None = None, *, owner: str) -> str:
        """Recover `partitions` from the store (`sources`: partition -> the dead shard whose
        journal holds its changes) and serve them, granted at `map_version`; the shard's
        incarnation. `owner`: the starting controller's token, whose claim the store must hold
        where the shard opens it, from this start on (ownership.py `check_claimed`): a shard
        another controller created (Ray's restart passes that one's) checks this one's."""

    async def set_owner(self, owner: str) -> None:
        """Check the claim of `owner` (the token of a controller that takes the shard up
        serving: resuming.py) from the shard's next build on, serving on meanwhile."""

    async def serve_api(self, host: str, port: int = 0, keys_file: str | None = None,
                        keys_env: str | None = None,
                        tls_files: tuple[str, str, str | None] | None = None,
                        ports: tuple[int, int] | None = None) -> int:
        """Serve kairos.v1 from the shard's own process too (shard/api.py), as a gateway
        with these arguments would, on the first free port of `ports` when given; the port
        (the one bound before, if it serves already)."""

    async def health(self) -> dict[str, Any]:
        """Cheap: liveness, incarnation, node, and statistics at most a second old."""

    async def stats(self) -> dict[str, Any]:
        """Fresh statistics, taken in turn with the data path."""

    async def freeze(self, partitions: list[int], version: int) -> bytes:
        """Stop serving the partitions (their requests answer MOVED to `version`); their
        customers, packed for `adopt`."""

    async def adopt(self, payload: bytes, version: int) -> int:
        """Serve a frozen payload's partitions from `version` on; customers adopted."""

    async def release(self, partitions: list[int], version: int) -> None:
        """Forget partitions whose move of map `version` is settled with another shard
        owning them (it adopted them, or the move to this shard was undone)."""

    async def thaw(self, partitions: list[int], version: int) -> None:
        """Serve frozen partitions again (their handoff failed), granted at `version`."""

    async def confirm(self, partitions: list[int], version: int) -> None:
        """The moves up to map `version` that brought these partitions here are done: their
        timers fire here from now on. NoSuchCall from a shard older than this call."""

    async def prepare(self, catalog_text: str) -> str:
        """Phase one of a catalog switch: compile the catalog; its version."""

    async def commit(self, version: str) -> None:
        """Phase two: switch to the prepared version."""

    async def retire(self) -> None:
        """Owning nothing any more: drop the journal before being stopped."""

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        """Start (or, not `active`, stop) pushing a view's changed decisions to `sink`."""

    async def read_log(self, query: Any, live: list[str], timeout_s: float = CONTROL_CALL_S
                       ) -> tuple[list, bool | int]:
        """Read the decision log (shard/decisionlog.py `read`: an export page's decisions, or
        their outcomes, by the query's type, evidence/records.py): this shard's, and with a
        shared store, if it is the first of the `live` shards, the logs of shards no longer
        live; Unavailable past `timeout_s`."""


class LearnerControl(Protocol):
    async def sync(self, catalog_version: str, delta: ModelDelta | None,
                   known_version: int) -> Published | None:
        """Merge a shard's model delta; the latest models unless `known_version` is it."""

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        """Long poll: the latest models once they are for `catalog_version` and the caller
        does not hold them; None when `timeout_s` passes first. A caller that `takes_rows`
        gets PublishedRows (an older shard cannot unpickle it), the models changed since its
        version if that is of the learner process `based_on`."""

    async def switch(self, catalog_text: str) -> int:
        """Carry the posteriors over to a new catalog; the new model version."""

    async def stand_down(self) -> None:
        """Save nothing more to the store: the cluster lost it (ownership.py)."""

    async def status(self) -> dict[str, Any]: ...


class ControllerControl(Protocol):
    async def shard_endpoints(self) -> dict[str, str]:
        """Each shard's own kairos.v1 endpoint, where it serves one (GetRoutes)."""

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S
                      ) -> dict[str, Any] | None:
        """Long poll: the routing table once its version differs from `known_version`;
        None when `timeout_s` passes first."""

    async def scale(self, n_shards: int) -> dict[str, Any]:
        """Change the shard count while traffic flows: {shards, moved, version}."""

    async def put_catalog(self, catalog_text: str, evidence: dict[str, str] | None = None,
                          expected_version: str | None = None) -> str:
        """Switch every shard and the learner to a catalog, keeping `evidence` ({json,
        summary} of a replay report) with it; its version. ValueError, switching nothing,
        when a version other than `expected_version` (if given) runs and this one does not."""

    async def rollback_catalog(self, to_version: str | None = None) -> str:
        """Switch back to the previous catalog (ValueError if there is none); its version.
        With `to_version`: nothing to do when it runs already (a retry), ValueError when the
        previous catalog is another version."""

    async def get_catalog(self) -> dict[str, Any]:
        """{version, text, has_previous, previous_version, evidence}."""

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        """Have every shard, now and later, push a view's changed decisions to `sink`."""

    async def drain_node(self, node: str) -> dict[str, Any]:
        """Take a node out: its gateway stops serving, its partitions move, its shards and
        gateway stop; {node, shards, moved, version} once it holds nothing. LookupError for a
        node that is not alive, ValueError for the last one that serves."""

    async def status(self) -> dict[str, Any]: ...


class GatewayControl(Protocol):
    """A node's gateway, as the controller drives it."""

    async def unready(self) -> None:
        """Health answers NOT_SERVING from now on; calls are still served."""

    async def stop(self) -> None:
        """Stop serving once the calls in flight are done (GATEWAY_STOP_GRACE_S at most)."""


class WatchSink(Protocol):
    """Where a shard pushes changed decisions (a gateway)."""

    async def deliver(self, decisions: list[Decision]) -> None: ...


class Backend(Protocol):
    def nodes(self) -> list[str]:
        """Ids of the alive nodes, in a stable order."""

    def node_info(self) -> dict[str, dict[str, Any]]:
        """Alive node id -> {address, cpus}."""

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """A standing request to the cluster's autoscaler (Ray's `request_resources`): keep
        enough nodes for these bundles, replacing the previous request ([]: none)."""

    async def create_gateway(self, name: str, node: str, serving: dict[str, Any]) -> int:
        """Create the gateway `name` on `node` (or take the one of that name that exists),
        serving as `serving` says (GatewaySpec.serving); the port it serves on."""

    async def kill_gateway(self, name: str) -> None:
        """Stop the gateway for good (one already gone is no error)."""

    def gateway(self, name: str) -> GatewayControl: ...

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str, owner: str) -> None:
        """Create the shard `name` (on `node`, if given) and wait until it answers. `owner`:
        the cluster's token, whose claim the store must hold where the shard opens it
        (ownership.py `check_claimed`)."""

    async def kill_shard(self, name: str) -> None:
        """Stop the shard for good (a shard already gone is no error)."""

    def shard(self, name: str) -> ShardControl: ...

    def learner(self) -> LearnerControl: ...

    def controller(self) -> ControllerControl: ...

    def sink(self, name: str) -> WatchSink: ...

    async def send(self, name: str, session: str, seq: int, requests: list[Request],
                   routed: list[int]) -> list[Reply]:
        """A batch of routed requests to a shard, with the map version each was routed
        under; a reply per request, in order. A sender's batches are taken in `seq` order
        within its `session`. Raises Unavailable if the shard cannot answer (NotSent if the
        batch certainly did not reach it)."""

    async def disconnect(self, name: str) -> None:
        """Close the connection to shard `name`, if one is open (it left the map); a later
        send opens one again."""

    async def close(self) -> None:
        """Close the connections this backend opened (on the running event loop)."""
