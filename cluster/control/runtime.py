"""Start, reach and stop the Kairos runtime on a Ray cluster.

`start()` creates the controller and, once it claimed the store, the learner as named,
detached actors in the "kairos" namespace; the controller creates the shards across the nodes
and, given a GatewaySpec, a gateway on every node, now and as nodes join. `connect()` gives a
client.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kairos.core.catalog import default_catalog_text

from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.controller import SHARD_PREFIX
from kairos.cluster.control.saved import STATE_KEY
from kairos.cluster.control.learner import LearnerActor
from kairos.cluster.control.nodes import GATEWAY_PREFIX, GatewaySpec, gateway_name
from kairos.cluster.control.partitions import DEFAULT_PARTITIONS
from kairos.cluster.settings import (CONTROLLER_NAME, JOURNAL_POLICIES, JOURNAL_POLICY,
                                     LEARNER_NAME, NAMESPACE, SHARDS_PER_CPU, STORE)
from kairos.cluster.storage.ownership import new_owner
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreInUse
from kairos.cluster.transport.sync_client import SyncClient
from kairos.cluster.transport.ray_backend import RayBackend

log = logging.getLogger("kairos.runtime")
DEFAULT_SHARDS = 4
STOP_WAIT_S = 30.0  # the most `stop` waits for Ray to free the actors' names
LEARNER_FLUSH_S = 10.0  # the most `stop` waits for the learner to save its last merges


def start(n_shards: int = DEFAULT_SHARDS, catalog_text: str | None = None,
          n_partitions: int = DEFAULT_PARTITIONS, store: str = STORE,
          journal_policy: str = JOURNAL_POLICY, gateways: GatewaySpec | None = None,
          shards_per_cpu: float = SHARDS_PER_CPU) -> dict[str, Any]:
    """Start the runtime on the Ray cluster this process is connected to; the first map.

    `store`: where shards keep customers, snapshots and journals ("memory": nothing survives
    a shard's process; a directory; or redis://host:port/db, which every node reaches). A
    store that holds an earlier cluster's state brings it back: the same shards recover their
    partitions, on the catalog last switched to unless `catalog_text` names another. A store
    serves one cluster at a time: one that another live cluster holds fails the start
    (StoreInUse), before anything is written to it.

    `gateways`: how the gateway the controller keeps on every node serves (None: the caller
    starts gateways itself, with gateway_actor). `shards_per_cpu`: the shards a node that
    joins gets, per CPU (at least one).

    A start that fails (a gateway's port in use, say) stops what it started, and raises what
    stopped it."""
    if journal_policy not in JOURNAL_POLICIES:
        raise ValueError(f"journal policy must be one of {', '.join(JOURNAL_POLICIES)}, "
                         f"got {journal_policy!r}")
    open_store(store).get_meta(STATE_KEY)  # a bad or unreachable store fails here
    # on this (the head) node, as Ray Serve places its controller: they hold the map and the
    # global models in memory, so they must not move with a worker node that leaves
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    detached = {"namespace": NAMESPACE, "lifetime": "detached", "scheduling_strategy": here}
    # ValueError when a name is taken: another runtime's actor, which a failure leaves alone.
    # Ray restarts the controller with these arguments: the owner stays the cluster's
    controller = ControllerActor.options(name=CONTROLLER_NAME, **detached).remote(
        catalog_text, n_partitions, store, journal_policy, gateways, shards_per_cpu,
        owner=new_owner())
    learner = None
    try:
        # before the learner exists: it writes to the store as it starts (a saved posterior
        # it cannot read is kept aside), and a store another cluster holds is not its to write
        ray.get(controller.claim_store.remote())
        learner = LearnerActor.options(name=LEARNER_NAME, **detached).remote(
            catalog_text or default_catalog_text(), store)
        return ray.get(controller.start.remote(n_shards))
    except BaseException as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        # detached: left alone they would hold their names and serve on their own later; a
        # controller refused its store started no shard (and asked, it is refused again)
        stop(find_shards=not isinstance(cause, StoreInUse), learner=learner is not None)
        if cause is not exc:  # the controller's own error
            raise cause from exc
        raise


def gateway_actor(actor_class: Any, index: int, node: str, **serving: Any) -> Any:
    """Create the gateway actor kairos-gateway-<index> on a node; it serves as `serving`
    says (host, port, keys_file, keys_env, tls_files), `start()` answers its port."""
    return actor_class.options(
        name=gateway_name(index), namespace=NAMESPACE, lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            gateway_name(index), **serving)


def controller() -> Any:
    return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)


def connect(timeout_s: float = 60.0) -> SyncClient:
    return SyncClient(RayBackend(), timeout_s)


def stop(find_shards: bool = True, learner: bool = True) -> None:
    """Stop the controller's loop (first: it starts gateways and shards), the gateways
    (gracefully), every shard (`find_shards`: those the controller knows and every actor
    named as a shard), and the learner once it saved what it merged since its
    last save (last: the shards sync to it until they stop; `learner`: not one a start found
    there, another runtime's; no save where the controller lost the store, which may be
    another cluster's now); then, once Ray has freed their names, the controller, which
    gives up the store first: a `start` on it then runs beside none of their writes. Return
    once Ray has freed the controller's name too (all in all at most STOP_WAIT_S), so that a
    `start` right after creates them anew."""
    lost = _ask_controller("stop_loop", "stop its loop", "it may start what is stopped again")
    names = _shards() if find_shards else []
    for name in _named_with(GATEWAY_PREFIX):
        try:
            ray.get(ray.get_actor(name, namespace=NAMESPACE).stop.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError, ValueError):
            pass
        names.append(name)
    _kill(names)
    if learner:
        if not lost:  # else the store may be another cluster's: its last merges are lost
            _flush_learner()
        _kill([LEARNER_NAME])
        names.append(LEARNER_NAME)
    # ray.kill only asks: the writers gone before the store is, and the names free for a start
    deadline = time.monotonic() + STOP_WAIT_S
    _wait_gone(names, deadline)
    _ask_controller("release_store", "give up its store",
                    "a start on it may wait for its claim to run out")
    _kill([CONTROLLER_NAME])
    _wait_gone([CONTROLLER_NAME], deadline)


def _shards() -> list[str]:
    """The shards the controller knows, and every actor named as a shard: one the controller
    does not know (it crashed while it created shards, and has not resumed yet to stop
    them), or all of them where it cannot list them (there is none, a start failed, or it
    lost its store and refuses calls, when a shard it created as it stood down may outlive
    it)."""
    listed: list[str] = []
    try:
        listed = [s["shard"] for s in ray.get(controller().status.remote(), timeout=30)["shards"]]
    except ValueError:
        pass  # no controller
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("stop: the controller did not list its shards (%s): stopping those named "
                    "as shards", _one_line(exc))
    return sorted(set(listed) | set(_named_with(SHARD_PREFIX)))


def _named_with(prefix: str) -> list[str]:
    """This runtime's actors whose names start with `prefix`."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))


def _kill(names: list[str]) -> None:
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass


def _wait_gone(names: list[str], deadline: float) -> None:
    while time.monotonic() < deadline and any(_named(n) for n in names):
        time.sleep(0.05)


def _ask_controller(method: str, what: str, risk: str) -> Any:
    """The controller's `method` called, if there is a controller: its answer (None if
    none); one that does not answer is logged: what it did not do, why, and what may come of
    it."""
    try:
        return ray.get(getattr(controller(), method).remote(), timeout=10)
    except ValueError:
        pass  # no controller
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("stop: the controller did not %s (%s): %s", what, _one_line(exc), risk)
    return None


def _flush_learner() -> None:
    """The learner's last merges saved; one that does not answer is logged, and killed all
    the same."""
    try:
        ray.get(ray.get_actor(LEARNER_NAME, namespace=NAMESPACE).flush.remote(),
                timeout=LEARNER_FLUSH_S)
    except ValueError:
        pass  # no learner
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("stop: the learner did not save its last merges: %s", _one_line(exc))


def _one_line(exc: BaseException) -> str:
    """What failed, in a line an operator reads in `kairos down`'s output: a task's own error
    (the store's refusal), not the traceback Ray wraps it in; the first line of Ray's own
    (an actor that died says how on the lines after)."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _named(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True
