"""Where the systems under test run: Ray with one or three nodes on this machine, and Kairos
on it with its gateway steered to the node holding the fewest shards (in three-node mode most
requests then cross nodes: gateway on one node, the owning shard on another; the report says
what share, from the partition map and the workload's popularity)."""
from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import tempfile
import time
from collections import Counter, deque
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import psutil
import ray
from ray.cluster_utils import Cluster
from tqdm import tqdm

from kairos.cluster.cli.local import SINGLE_MACHINE, single_machine
from kairos.cluster.control import runtime
from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.gateway.actor import GatewayActor
from kairos.cluster.control.partitions import DEFAULT_PARTITIONS, partition_of
from kairos.cluster.protocol import Event, Outcome, Request
from kairos.cluster.raytuning import RAY_SETTINGS
from kairos.cluster.settings import NAMESPACE
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from .cpu import server_cpu_during
from .journeys import PROFILE_EVENT, crm_profiles, customer_id, popularity
from .lifetime import Abandoned, within

ROOT = Path(__file__).resolve().parents[1]
OBJECT_STORE_BYTES = 256 * 2**20  # per node; the bench moves small messages only
CPUS_PER_NODE = 1  # Ray's CPU resource per node of a multi-node run (Kairos reserves none)
# The populated customers must stay resident for the whole run (passivation would turn the
# load test into a test of the passivation store).
# Every node runs on this machine: shards serve their data path on loopback. Ray runs its
# workers at nice 15 by default; the services measured here (Kairos's and the Ray-hosted
# peers') run at 0, as the in-process peers and the generators do.
# Ray's own settings are those of every Ray Kairos starts (cluster/raytuning.py).
NODE_ENV = {"KAIROS_PASSIVATE_IDLE_S": "86400", "KAIROS_DATA_HOST": "127.0.0.1",
            "RAY_worker_niceness": "0"}
# runtime.start waits for its actors with no deadline: one Ray never places (its workers
# killed by Ray's memory monitor on a crowded machine) would hang the run
START_TIMEOUT_S = 180.0
# A start given up on still waits on its thread: once its actors are stopped its wait fails
# and it stops what it started, by name, so it must end before the next phase starts its own
ABANDONED_START_WAIT_S = 60.0
POPULATE_INFLIGHT = 4096  # events the bulk load keeps in flight
POPULATE_PROGRESS_EVERY = 1000
POPULATE_WINDOW = POPULATE_INFLIGHT // 4  # served customers whose events go, then impressions


def set_node_env() -> None:
    """The environment the bench's Ray inherits: NODE_ENV, and Kairos's Ray settings where the
    environment has no value of its own (as `kairos up` leaves an operator's), so that a run
    against Ray's defaults needs no edit (its token: bench/__init__.py)."""
    os.environ.update(NODE_ENV)
    for name, value in RAY_SETTINGS.items():
        os.environ.setdefault(name, value)


@contextmanager
def ray_nodes(n: int) -> Iterator[list[str]]:
    """Ray with n nodes on this machine; the alive node ids, head first. Everything Ray
    started is stopped on the way out, whatever happened."""
    set_node_env()
    if n > 1:  # Ray's clusters of several nodes need the machine's address
        os.environ.pop(SINGLE_MACHINE, None)
    # Ray's workers unpickle the peers' actors and servicers: they import bench from here
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # Ray's session files and its record of the latest cluster in a folder of the bench's own,
    # not beside those of a `kairos up` or another Ray on this machine (the tests set theirs)
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "kairos-bench-ray"))
    quiet = {"namespace": NAMESPACE, "logging_level": "WARNING", "log_to_driver": False}
    # a Ray of our own even when another runs on this machine: its GCS on a free port, no
    # dashboard, the dashboard agent on a free port (not Ray's default 52365)
    node_args = {"num_cpus": os.cpu_count() if n == 1 else CPUS_PER_NODE,
                 "object_store_memory": OBJECT_STORE_BYTES, "dashboard_agent_listen_port": 0}
    cluster = None
    # the run's SIGTERM handler (exit_on_sigterm), which each node Cluster starts here and
    # ray.init replace with Ray's own (exit status 1, 15): set again after each, so a SIGTERM
    # while the nodes start unwinds too
    ours = signal.getsignal(signal.SIGTERM)

    def ours_again() -> None:
        if callable(ours) and signal.getsignal(signal.SIGTERM) is not ours:
            signal.signal(signal.SIGTERM, ours)

    # one node: every Ray server on loopback (cluster/cli/local.py)
    with single_machine() if n == 1 else nullcontext():
        try:
            cluster = Cluster(initialize_head=True,
                              head_node_args={**node_args, "include_dashboard": False})
            ours_again()
            for _ in range(n - 1):
                cluster.add_node(**node_args)
                ours_again()
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, **quiet)
            ours_again()
            head = ray.get_runtime_context().get_node_id()
            others = sorted(x["NodeID"] for x in ray.nodes()
                            if x["Alive"] and x["NodeID"] != head)
            yield [head] + others
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()


def populate(customers: int, on_progress: Callable[[int], None], first: int = 0,
             impression: tuple[str, str] | None = None) -> dict[str, float]:
    """The CRM profiles of customers `first`..`customers`-1, through the runtime client: a
    bulk load that bypasses the gateway (it is not what the run measures); its customers per
    second. `impression` (action, channel): each customer also gets an offline impression of
    it, after its profile, as a customer shown that action holds it (its interaction ring
    written: a profile event leaves the ring's pages unwritten, so not resident)."""
    client = runtime.connect()
    try:
        started = time.perf_counter()
        client.submit(_populate(client.client, first, customers, on_progress,
                                impression)).result()
        seconds = time.perf_counter() - started
    finally:
        client.close()
    events = customers - first
    return {"events": events, **({"impressions": events} if impression else {}),
            "seconds": round(seconds, 1), "rate": round(events / max(seconds, 1e-9), 1)}


async def _populate(client: KairosClient, first: int, last: int,
                    on_progress: Callable[[int], None],
                    impression: tuple[str, str] | None) -> None:
    """Enqueued without a task per request (what a gateway's streams do), POPULATE_INFLIGHT
    requests at most in flight, a customer's answers taken together, oldest customer first.
    With `impression`, POPULATE_WINDOW customers at a time: their profile events, then their
    impressions (a customer's still in order: the client keeps a shard's), since a shard
    applies a batch's consecutive requests of one kind together, and alternating ones would
    cost a call each (about 3x slower)."""
    now = time.time()
    inflight: deque[tuple[tuple[Request, asyncio.Future], ...]] = deque()
    most = POPULATE_INFLIGHT // (2 if impression else 1)  # customers in flight
    window = POPULATE_WINDOW if impression else 1
    profiles = crm_profiles(last, first)
    done = 0

    async def oldest() -> None:
        nonlocal done
        for request, future in inflight.popleft():
            await client.settle(request, await future)
        done += 1
        if done % POPULATE_PROGRESS_EVERY == 0:
            on_progress(POPULATE_PROGRESS_EVERY)

    while batch := list(itertools.islice(profiles, window)):
        while len(inflight) + len(batch) > most:
            await oldest()
        kinds: list[list[Request]] = [[Event(customer_id=customer, event_type=PROFILE_EVENT,
                                             time=now, attributes=attributes)
                                       for customer, attributes in batch]]
        if impression:
            action_id, channel = impression
            kinds.append([Outcome(customer_id=customer, action_id=action_id, channel=channel,
                                  outcome="impression", when=now) for customer, _ in batch])
        sent = [[(request, client.enqueue(request)) for request in kind] for kind in kinds]
        inflight.extend(zip(*sent))
    while inflight:
        await oldest()
    on_progress(done % POPULATE_PROGRESS_EVERY)


def shard_actors() -> list[Any]:
    """The runtime's shard actors, as the controller lists them."""
    status = ray.get(runtime.controller().status.remote())
    return [ray.get_actor(s["shard"], namespace=NAMESPACE) for s in status["shards"]]


def snapshot_shards(shards: list[Any] | None = None, dirty_only: bool = False) -> int:
    """Every partition of the shards (default: all) snapshotted now (`dirty_only`: those with
    changes no snapshot holds yet); the customers written."""
    shards = shard_actors() if shards is None else shards
    return sum(ray.get([shard.snapshot.remote(dirty_only) for shard in shards]))


def settle_snapshots(generators: set[int]) -> dict[str, float]:
    """The dirty partitions of every shard snapshotted now, between steps: those a step's
    writes dirtied would otherwise be snapshotted SNAPSHOT_AFTER_S later, inside whichever
    step runs then (or none), and charge it their cost. How many partitions were dirty of
    those served, the customers written, the wall seconds and the server CPU seconds it
    took: what the background checkpoint would have written for the step."""
    shards = shard_actors()
    stats = ray.get([shard.stats.remote() for shard in shards])
    started = time.perf_counter()
    written, cpu_s = server_cpu_during(
        generators, lambda: snapshot_shards(shards, dirty_only=True))
    return {"dirty_partitions": sum(s["dirty_partitions"] for s in stats),
            "partitions": sum(s["partitions"] for s in stats), "customers": written,
            "seconds": round(time.perf_counter() - started, 2), "server_cpu_s": cpu_s}


def populate_and_snapshot(customers: int, on_progress: Callable[[int], None]
                          ) -> dict[str, float]:
    """`populate`, then every shard snapshotted: the partitions the load dirtied would
    otherwise be written SNAPSHOT_AFTER_S later, inside whichever measured step runs then,
    whose CPU and tail they would inflate. populate's figures and the snapshot's seconds."""
    loaded = populate(customers, on_progress)
    started = time.perf_counter()
    snapshot_shards()
    return {**loaded, "snapshot_s": round(time.perf_counter() - started, 1)}


@dataclass(frozen=True)
class Kairos:
    target: str  # the gateway's host:port
    gateway_node: str
    shards_by_node: dict[str, int]
    # the share of the workload's requests whose customer's shard is on another node than
    # the gateway (each customer weighted by its Zipf popularity)
    crossing_share: float
    # each partition's owner's own kairos.v1 endpoint (shard/api.py), when asked for
    routes: tuple[str, ...] = ()


@contextmanager
def kairos(n_shards: int, customers: int, catalog_text: str | None = None,
           keys_file: str | None = None, direct: bool = False,
           partitions: int = DEFAULT_PARTITIONS) -> Iterator[Kairos]:
    """The runtime (controller, learner, shards spread over the nodes) and one gateway, with
    the embedded default's durability: a directory store, the journal fsynced per batch. On
    the default catalog unless given one; the gateway requires the keys of `keys_file` if
    given (auth is off without). `direct`: every shard serves kairos.v1 too, and `routes`
    names each partition's owner's endpoint. `partitions`: fewer, for a short run, are fewer
    files to snapshot and delete."""
    store = tempfile.mkdtemp(prefix="kairos-bench-store-")
    abandoned = None
    try:
        # direct: as `kairos up --shard-endpoints` starts it, a gateway on every node
        spec = GatewaySpec("127.0.0.1", 0, keys_file=keys_file, shard_endpoints=True) \
            if direct else None
        try:
            within(START_TIMEOUT_S, lambda: runtime.start(
                n_shards=n_shards, catalog_text=catalog_text, n_partitions=partitions,
                store=store, journal_policy="fsync", gateways=spec), "runtime.start")
        except Abandoned as exc:
            abandoned = exc.thread
            raise
        status = ray.get(runtime.controller().status.remote())
        nodes = sorted(x["NodeID"] for x in ray.nodes() if x["Alive"])
        shards = Counter(s["placed_on"] for s in status["shards"])
        # the fewest shards; on a tie not the head, which holds the controller and learner
        head = ray.get_runtime_context().get_node_id()
        node = min(nodes, key=lambda x: (shards[x], x == head))
        if direct:
            port = next(n["gateway_port"] for n in status["node_status"] if n["node"] == node)
        else:
            gateway = runtime.gateway_actor(GatewayActor, 0, node, host="127.0.0.1", port=0,
                                            keys_file=keys_file)
            port = ray.get(gateway.start.remote())
        remote = {s["shard"] for s in status["shards"] if s["placed_on"] != node}
        target = f"127.0.0.1:{port}"
        yield Kairos(target, node, {x: shards[x] for x in nodes},
                     _crossing_share(remote, customers), _routes(target) if direct else ())
    finally:
        runtime.stop()
        if abandoned is not None:
            abandoned.join(ABANDONED_START_WAIT_S)
        shutil.rmtree(store, ignore_errors=True)


@contextmanager
def populated_kairos(n_shards: int, customers: int,
                     partitions: int = DEFAULT_PARTITIONS) -> Iterator[Kairos]:
    """One Ray node on this machine, Kairos on it (`kairos`), every customer's profile loaded
    (and snapshotted)."""
    with ray_nodes(1), kairos(n_shards, customers, partitions=partitions) as system:
        with tqdm(total=customers, desc="populate", unit="customer", leave=False) as bar:
            populate_and_snapshot(customers, bar.update)
        yield system


def kairos_processes() -> list[psutil.Process]:
    """The processes of the Ray actors this bench started (Kairos's and the peers'):
    descendants of this process whose title names an actor."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with suppress(psutil.Error):
            name = proc.name()
            if name.startswith("ray::") and "IDLE" not in name:
                found.append(proc)
    return found


def _routes(gateway: str) -> tuple[str, ...]:
    """Each partition's owner's endpoint, as the gateway's GetRoutes says (auth off)."""
    with grpc.insecure_channel(gateway) as channel:
        routes = decision_pb2_grpc.DecisionServiceStub(channel).GetRoutes(pb.RoutesRequest(),
                                                                          timeout=10)
    return tuple(routes.endpoints[owner] for owner in routes.owners)


def _crossing_share(remote_shards: set[str], customers: int) -> float:
    """The popularity-weighted share of customers owned by these shards, by the map."""
    routing = ray.get(runtime.controller().get_map.remote(-1, 0.0))
    owners = np.frombuffer(routing["owners"], np.uint16)
    remote = np.array([name in remote_shards for name in routing["shards"]])[owners]
    partitions = np.fromiter((partition_of(customer_id(i), len(owners))
                              for i in range(customers)), np.int64, customers)
    return round(float(popularity(customers)[remote[partitions]].sum()), 3)
