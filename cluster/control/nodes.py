"""Nodes: a gateway on every node that serves, shards for the nodes that join, and drains.

Nodes come and go under Kairos (a KubeRay worker pod, the autoscaler, `ray start --address`
by hand). The controller's loop calls `Nodes.ensure_gateways` every round, so a node that
joins serves kairos.v1 within a round or two without anyone calling the CLI, and asks
`Nodes.wanted` which nodes need shards of their own.

A drain takes a node out in the order load balancers need: its gateway's health turns
NOT_SERVING first (readiness probes take the node out while it still answers), its partitions
move, then the gateway stops, letting the calls it is serving finish. Draining nodes get no
gateway and no shard again; the mark goes when the node leaves Ray.

The gateways' spec holds where the secrets are (a file, an environment variable's name),
never the secrets: it is saved with the controller's state.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from kairos.cluster.transport.backend import Backend, Unavailable

log = logging.getLogger("kairos.nodes")
RETRY_MAX_S = 60.0  # a gateway that could not start is tried again at most this late


GATEWAY_PREFIX = "kairos-gateway-"


def gateway_name(index: int) -> str:
    return f"{GATEWAY_PREFIX}{index}"


class NodeUnknown(LookupError):
    """No alive node has that id."""


class NodeRefused(ValueError):
    """The node cannot be drained (the last that serves, or the controller's own)."""


@dataclass(frozen=True)
class GatewaySpec:
    """How every node's gateway serves. `consecutive`: gateway n binds port + n, for nodes
    that share one machine (`kairos up --nodes N`); else every gateway binds `port` (0: any
    free one)."""

    host: str
    port: int
    consecutive: bool = False
    keys_file: str | None = None
    keys_env: str | None = None
    tls_files: tuple[str, str, str | None] | None = None
    shard_endpoints: bool = False  # every shard serves kairos.v1 too (shard/api.py)
    # where those bind: the first free port of [low, high] on their node (None: any free one),
    # so that a firewall or a NetworkPolicy can open them
    shard_ports: tuple[int, int] | None = None

    def port_of(self, index: int) -> int:
        return self.port + index if self.consecutive and self.port else self.port

    def serving(self, index: int | None = None) -> dict[str, Any]:
        """Gateway `index`'s actor's keyword arguments; None: a shard endpoint's (served as
        a gateway is, on a free port of `shard_ports`)."""
        serving = {"host": self.host, "port": 0 if index is None else self.port_of(index),
                   "keys_file": self.keys_file, "keys_env": self.keys_env,
                   "tls_files": self.tls_files}
        return serving if index is not None else {**serving, "ports": self.shard_ports}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "GatewaySpec | None":
        if state is None:
            return None
        tls, ports = state.get("tls_files"), state.get("shard_ports")
        return cls(**{**state, "tls_files": tuple(tls) if tls else None,
                      "shard_ports": tuple(ports) if ports else None})


@dataclass
class GatewayRecord:
    name: str
    index: int
    port: int = 0  # 0 until it serves


class Nodes:
    """What Kairos runs on each node besides shards: gateways, drains, the shard policy."""

    def __init__(self, backend: Backend, spec: GatewaySpec | None, shards_per_cpu: float):
        self.backend = backend
        self.spec = spec
        self.shards_per_cpu = shards_per_cpu
        self.gateways: dict[str, GatewayRecord] = {}  # node -> its gateway
        self.draining: set[str] = set()
        # nodes whose shards were given their share of partitions (none, where shards
        # outnumber them), or that were there at start
        self.known: set[str] = set()
        # drained by the autoscaler and not gone yet: taken back before asking for a new node,
        # which this one's unit would otherwise stand in for (autoscaling.py)
        self.released: set[str] = set()
        # being drained by the autoscaler: released once drained, by whichever drain finishes
        # it (the autoscaler's, or the control loop's after that one was cut short)
        self.releasing: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # node -> (next try, backoff)
        self._gateways_lock = asyncio.Lock()
        # Ray gives a node its CPUs as it starts, for its life: read once per node, as the
        # node table costs this process and the GCS a call (`shares`, every round)
        self._cpus: dict[str, float] = {}
        # the last read and the task that made it, until an await yields (`alive`)
        self._alive: tuple[asyncio.Task | None, list[str]] | None = None

    # -- state ---------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec) if self.spec else None,
                "shards_per_cpu": self.shards_per_cpu,
                "gateways": {n: [g.name, g.index] for n, g in self.gateways.items()},
                "draining": sorted(self.draining), "known": sorted(self.known),
                "released": sorted(self.released), "releasing": sorted(self.releasing)}

    def take_up(self, state: dict[str, Any] | None) -> None:
        """The state an earlier controller saved (none before this module existed)."""
        if not state:
            return
        self.spec = GatewaySpec.from_state(state["spec"])
        self.shards_per_cpu = state["shards_per_cpu"]
        self.gateways = {n: GatewayRecord(name, index)
                         for n, (name, index) in state["gateways"].items()}
        self.draining = set(state["draining"])
        self.known = set(state["known"])
        self.released = set(state.get("released", ()))  # saved since the autoscaler reuses
        self.releasing = set(state.get("releasing", ()))

    # -- which nodes serve ---------------------------------------------------------------------

    def alive(self, again: bool = False) -> list[str]:
        """The backend's alive nodes, read now. `again`: the same task's last read, where no
        await has yielded to the event loop since it (a wait for the lock, a call) and no
        other read of Ray's node table came after it: only a few steps ran meanwhile, and a
        read would tell the same but for their time, at the cost of a call to Ray's GCS."""
        task = asyncio.current_task()
        if not again or self._alive is None or self._alive[0] is not task:
            self._alive = (task, self.backend.nodes())
            asyncio.get_running_loop().call_soon(self._yielded)
        return list(self._alive[1])

    def _yielded(self) -> None:
        self._alive = None  # run by the event loop: an await yielded since the read

    def retrying(self) -> bool:
        """Whether a gateway that did not start waits to be tried again."""
        return bool(self._retry)

    def serving(self, alive: list[str]) -> list[str]:
        """Alive nodes that are not draining: where shards and gateways may be placed."""
        return [n for n in alive if n not in self.draining]

    def wanted(self, alive: list[str], placement: dict[str, str | None]) -> dict[str, int]:
        """Nodes that joined (not known yet) -> how many new shards they get: their share
        (`shares`), none where they hold shards already (a join cut short before its shards
        were given their share: they are given it)."""
        holding = set(placement.values())
        return {n: 0 if n in holding else share
                for n, share in self.shares(self.serving(alive)).items() if n not in self.known}

    def shares(self, nodes: list[str]) -> dict[str, int]:
        """How many shards each of `nodes` is sized for: shards per CPU, at least one."""
        if any(n not in self._cpus for n in nodes):
            self._alive = None  # this read is newer: the next shared one must be too
            self._cpus.update((n, info["cpus"]) for n, info in self.backend.node_info().items())
        return {n: max(1, round(self._cpus.get(n, 1) * self.shards_per_cpu)) for n in nodes}

    def load(self, alive: list[str], placement: dict[str, str | None]) -> dict[str, int]:
        """Shards placed on each serving node, in the backend's order of the nodes."""
        load = dict.fromkeys(self.serving(alive), 0)
        for node in placement.values():
            if node in load:
                load[node] += 1
        return load

    def crowded(self, alive: list[str], placement: dict[str, str | None]
                ) -> tuple[str, str] | None:
        """The node most over its share of shards (`shares`) and the node furthest under its
        own, if there is one of each: one of the first's shards is then replaced by a new one
        on the second. Shares, not raw counts: a node with more CPUs keeps its larger count,
        and no node is given more shards than its CPUs, on which its drain's deadline is
        sized (k8s/README)."""
        load = self.load(alive, placement)
        room = {n: share - load[n] for n, share in self.shares(list(load)).items()}
        if not room:
            return None
        busiest, emptiest = min(room, key=room.__getitem__), max(room, key=room.__getitem__)
        return (busiest, emptiest) if room[busiest] < 0 < room[emptiest] else None

    def left(self, alive: list[str]) -> None:
        """Forget the marks of nodes that left Ray, when their gateways were to be tried
        again, and their CPUs."""
        gone = (self.draining | self.known | self.released | self.releasing
                | set(self._retry) | set(self._cpus)) - set(alive)
        self.draining -= gone
        self.known -= gone
        self.released -= gone
        self.releasing -= gone
        for node in gone:
            self._retry.pop(node, None)
            self._cpus.pop(node, None)

    def reuse(self, node: str) -> None:
        """Take a drained node back: it serves again, and gets shards as a node that joined."""
        self.draining.discard(node)
        self.disown(node)
        self.known.discard(node)

    def disown(self, node: str) -> bool:
        """Drop the autoscaler's marks of `node` (an operator drains it: theirs to remove, not
        the autoscaler's to take back); whether it had one."""
        marked = node in self.released | self.releasing
        self.released.discard(node)
        self.releasing.discard(node)
        return marked

    # -- gateways ------------------------------------------------------------------------------

    async def ensure_gateways(self, alive: list[str]) -> dict[str, str]:
        """A serving gateway on every alive node that is not draining: start the missing
        ones (together), let go of those whose node left. The nodes whose gateway failed to
        start (tried again later, with a growing pause), each with what stopped it."""
        if self.spec is None:  # gateways are started by whoever started the runtime
            return {}
        async with self._gateways_lock:
            for node in [n for n in self.gateways if n not in alive]:
                record = self.gateways.pop(node)
                await self.backend.kill_gateway(record.name)  # frees its name for a new node
            now = time.monotonic()
            missing = [n for n in self.serving(alive) if n not in self.gateways
                       and self._retry.get(n, (0.0, 0.0))[0] <= now]
            # already recorded ones are asked too: a restarted controller learns their ports
            # (not on a draining node, whose gateway is stopping or gone)
            unknown_port = [n for n in self.gateways if not self.gateways[n].port
                            and n not in self.draining]
            for node in missing:
                index = self._free_index()
                self.gateways[node] = GatewayRecord(gateway_name(index), index)
            todo = missing + [n for n in unknown_port if n not in missing]
            results = await asyncio.gather(*(self._start(n) for n in todo),
                                           return_exceptions=True)
            failed = {}
            for node, result in zip(todo, results):
                if isinstance(result, BaseException):
                    # a Ray task's error reads as the remote traceback: its last line is the
                    # exception (a port in use: "OSError: could not bind HOST on port P")
                    failed[node] = (str(result).strip().splitlines() or [repr(result)])[-1]
                    record = self.gateways.pop(node)
                    await self.backend.kill_gateway(record.name)
                    backoff = min(RETRY_MAX_S, 2 * self._retry.get(node, (0.0, 0.5))[1])
                    self._retry[node] = (time.monotonic() + backoff, backoff)
                    log.error("the gateway on node %s did not start (trying again in %.0f s): "
                              "%s", node, backoff, result)
                else:
                    self._retry.pop(node, None)
            return failed

    def _free_index(self) -> int:
        used = {g.index for g in self.gateways.values()}
        return next(i for i in range(len(used) + 1) if i not in used)

    async def _start(self, node: str) -> None:
        record = self.gateways[node]
        record.port = await self.backend.create_gateway(record.name, node,
                                                        self.spec.serving(record.index))
        log.warning("%s serves kairos.v1 on node %s, port %d", record.name, node, record.port)

    async def unready(self, node: str) -> None:
        """The node's gateway answers health checks NOT_SERVING, and still serves calls."""
        record = self.gateways.get(node)
        if record is not None:
            try:
                await self.backend.gateway(record.name).unready()
            except Unavailable:
                log.warning("%s did not answer; draining node %s goes on", record.name, node)

    async def stop_gateway(self, node: str) -> None:
        """Stop the node's gateway once the calls it serves are done, and let go of it."""
        async with self._gateways_lock:
            record = self.gateways.pop(node, None)
        if record is None:
            return
        try:
            await self.backend.gateway(record.name).stop()
        except Unavailable:
            log.warning("%s did not stop gracefully; it is killed", record.name)
        await self.backend.kill_gateway(record.name)

    def gateway_of(self, node: str) -> GatewayRecord | None:
        return self.gateways.get(node)

    # -- status --------------------------------------------------------------------------------

    def describe(self, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per alive node: its address, CPUs, gateway (port, serving), shards, partitions,
        resident customers and whether it is draining. `shards`: the controller's shard
        statuses (with `placed_on`, `partitions`, `resident`)."""
        nodes = []
        for node, info in sorted(self.backend.node_info().items()):
            mine = [s for s in shards if s["placed_on"] == node]
            gateway = self.gateways.get(node)
            nodes.append({
                "node": node, "address": info["address"], "cpus": info["cpus"],
                "gateway_port": gateway.port if gateway else 0,
                "gateway_index": gateway.index if gateway else -1,
                "serving": bool(gateway and gateway.port) and node not in self.draining,
                "draining": node in self.draining,
                "shards": [s["shard"] for s in mine],
                "partitions": sum(s["partitions"] for s in mine),
                "resident": sum(s.get("resident", 0) for s in mine)})
        return nodes
