"""The commands that operate a running Kairos through a gateway's AdminService, with the key
in KAIROS_API_KEY: status, drain, catalog push and rollback."""
from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import Callable

import grpc
import psutil

from kairos.core.errors import not_text

from kairos.cluster.cli.remote import Remote, channel_refusal
from kairos.cluster.cli.targets import join_target, split_target
from kairos.cluster.gateway.auth import is_loopback
from kairos.v1 import admin_pb2

# the gateway's answers to DrainNode from the controller's drain itself (gateway/admin.py): a
# node unknown, refused, or a request no gateway takes. Any other failure (a relaying gateway's
# call cut short, a host that is no gateway of this cluster) sends the drain through the next
# relay: the drain goes on in the controller, which answers a drain sent again with the first
# one's result (control/drains.py)
DRAIN_ANSWERS = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                 grpc.StatusCode.INVALID_ARGUMENT)
MIN_RELAY_S = 1.0  # less left than this: the drain is not sent again
CONNECT_S = 3.0  # a relay not connected in this long is passed over for the next
MAX_DRAIN_S = 86_400.0  # a day: --timeout's bound (1e300 s is no bound an operator means)


def status(args: argparse.Namespace) -> int:
    st = Remote(args.target).status()
    print(f"catalog {st.catalog_version}, map version {st.map_version}, "
          f"{st.partitions} partitions, {st.resident:,} customer"
          f"{'' if st.resident == 1 else 's'} in memory, "
          f"model version {st.model_version}")
    if st.learner_unconfirmed:
        print(f"LEARNER UNCONFIRMED: not told the cluster's catalog since Ray restarted it, it "
              f"merges no learning ({st.learner_refused_unconfirmed} syncs refused); the "
              f"control loop tells it, or it confirms itself on the controller's catalog")
    if st.learner_switching:
        print("LEARNER SWITCHING: saving a catalog switch; the shards' syncs and watches wait "
              "until the store has taken it (a store that does not answer holds them)")
    if st.learner_saves_failed:
        print(f"LEARNER NOT SAVING: the store refused its last {st.learner_saves_failed} "
              f"save(s) of the posterior, for {st.learner_saves_failing_s:.0f} s; the "
              f"{st.learner_unsaved} merges since the last that landed are lost if its process "
              f"ends (it keeps trying while merges are unsaved)")
    if st.catalog_evidence:
        print(f"catalog evidence: {st.catalog_evidence}")
    if st.previous_catalog_version:
        print(f"a rollback goes back to catalog {st.previous_catalog_version} "
              f"(kairos catalog rollback --to {st.previous_catalog_version})")
    print(f"{len(st.nodes)} node(s):")
    for n in st.node_status:
        if n.draining:
            gateway = "drained" if drained(n) else "draining"
        else:
            state = "serving" if n.serving else "not serving"
            gateway = f"gateway :{n.gateway_port} {state}" if n.gateway_port else "no gateway"
        print(f"  {n.node_id[:8]}  {n.address:<15}  {gateway}  {len(n.shards)} shard(s)  "
              f"{n.partitions:>5} partitions  {n.resident:>8} resident")
    print("shards:")
    for s in st.shards:
        print(f"  {s.name}  node {s.node[:8]}  {s.partitions:>5} partitions  "
              f"{s.resident:>8} resident  {s.passivated:>8} passivated  queue {s.queued}")
        if s.problem:
            print(f"    UNAVAILABLE: {s.problem}")
    return 0


def add_command(commands, parents: list[argparse.ArgumentParser],
                positive: Callable[[float], Callable[[str], float]]) -> None:
    """`drain`; `positive(most)`: argparse's type of a number in (0, most] (options.py)."""
    drain_ = commands.add_parser(
        "drain", parents=parents,
        help="take a node out while traffic flows: its gateway, partitions and shards")
    drain_.add_argument("node", help="the node's id (or a unique prefix, as status shows it) "
                                     "or its address")
    drain_.add_argument("--timeout", type=positive(MAX_DRAIN_S), default=600.0,
                        help=f"seconds to wait for the drain, up to {MAX_DRAIN_S:g} (default "
                             "%(default)g)")
    drain_.add_argument("--if-present", action="store_true",
                        help="a node that is no longer alive is done, not an error: Ray's "
                             "autoscaler de-registers a node before its pod is deleted "
                             "(a worker's preStop hook)")


def drain(args: argparse.Namespace) -> int:
    """Drain the node named by its id, a prefix of it, or its address. The call goes to a
    gateway on another node, the controller's first (`relays`): the node's own gateway stops
    as part of its drain."""
    if not args.node.strip():
        print("error: name the node to drain (its id, a prefix of it, or its address)",
              file=sys.stderr)
        return 2
    nodes = Remote(args.target).status().node_status
    matches = [n for n in nodes
               if n.node_id.startswith(args.node) or _same_address(n.address, args.node)]
    known = ", ".join(f"{n.node_id[:8]} ({n.address})" for n in nodes)
    if not matches and args.if_present:
        # trusted: an address no alive node has is a node gone (the logs show which were);
        # said as no match, so that an operator's mistyped name does not pass for done
        print(f"{args.node!r} matches no alive node's id or address: nothing drained "
              f"(alive: {known})", file=sys.stderr)
        return 0
    if len(matches) != 1:
        print(f"error: {args.node!r} names {'no' if not matches else 'more than one'} alive "
              f"node; the nodes: {known}", file=sys.stderr)
        return 2
    node = matches[0]
    if drained(node):  # Kairos's autoscaling drained it, and the autoscaler is removing it
        print(f"node {node.node_id[:8]} ({node.address}) is drained already: no gateway, "
              f"no shard")
        return 0
    started = time.monotonic()
    try:
        done = _relayed_drain(relays(args.target, node, nodes), node.node_id, args.timeout)
    except grpc.RpcError as exc:  # NOT_FOUND: it left Ray after the status call
        if not (args.if_present and exc.code() == grpc.StatusCode.NOT_FOUND):
            raise
        print(f"node {node.node_id[:8]} ({node.address}) is no longer alive: nothing to drain")
        return 0
    print(f"node {node.node_id[:8]} ({node.address}) is drained in "
          f"{time.monotonic() - started:.1f} s: {done.moved} partitions moved, shards "
          f"{', '.join(done.shards) or '(none)'} and its gateway stopped; map version "
          f"{done.map_version}")
    return 0


def _same_address(address: str, name: str) -> bool:
    """Whether `name` is `address`, however an IP address is written (fd00::9, [fd00:0::9])."""
    try:
        return ipaddress.ip_address(address.strip("[]")) == ipaddress.ip_address(
            name.strip("[]"))
    except ValueError:
        return address == name


def drained(node) -> bool:
    """A node whose drain is done: marked draining, and with no gateway or shard left."""
    return node.draining and not node.gateway_port and not node.shards


def relays(target: str, leaving, nodes) -> list[str]:
    """The gateways to send `leaving`'s DrainNode through, best first: the controller's node's
    (never drained), then the other serving ones (a node whose drain began shows as not
    serving; one whose drain has not begun yet may still be leaving, as when several workers
    are deleted together), then `target` itself (on Kubernetes Service kairos-gateway, which
    by then reaches only gateways that are not draining). A gateway is reached at its node's
    address, or at the target's loopback host when it shares the leaving node's machine
    (`kairos up --nodes N`, where every gateway binds 127.0.0.1 on a port of its own). A
    loopback target on a machine that is none of the nodes (a port-forward) is not on the
    nodes' network: their addresses may be other hosts' there, which must not get the admin
    key, so it is the only relay. On a node (`kubectl exec`, `kairos start` on each machine)
    the nodes' addresses are the cluster's, and a node's own gateway does not drain it."""
    try:
        host = split_target(target)[0]
    except ValueError:  # a Unix socket: every other node is reached at its address
        host = ""
    forwarded = is_loopback(host) and not any(_here(n.address) for n in nodes
                                              if not is_loopback(n.address))
    others = sorted((n for n in nodes if n.node_id != leaving.node_id and n.serving
                     and n.gateway_port), key=lambda n: not n.controller)
    found = []
    for n in others:
        if is_loopback(host) and n.address == leaving.address:
            found.append(join_target(host, n.gateway_port))
        elif not forwarded or is_loopback(n.address):
            found.append(join_target(n.address, n.gateway_port))
    return list(dict.fromkeys([*found, target]))


def _here(address: str) -> bool:
    """Whether `address` is one of this machine's own (an interface's)."""
    return any(_same_address(a.address.split("%")[0], address)
               for addresses in psutil.net_if_addrs().values() for a in addresses)


class DrainFailed(grpc.RpcError):
    """A DrainNode's failure, with the gateway that answered it (`relay`), which the error
    names: not always the --target."""

    def __init__(self, relay: str, cause: grpc.RpcError):
        super().__init__(cause)
        self.relay, self.cause = relay, cause

    def code(self) -> grpc.StatusCode:
        return self.cause.code()

    def details(self) -> str:
        return self.cause.details()


def _relayed_drain(through: list[str], node_id: str, timeout_s: float
                   ) -> admin_pb2.DrainNodeResponse:
    """DrainNode through the first of `through` that connects within CONNECT_S (the last one:
    within what is left), and through the next one when a gateway's call failed other than
    with the controller's answer (DRAIN_ANSWERS): cut (CANCELLED: it stopped, its own node
    drained; UNAVAILABLE: it is gone or could not be reached), or answered by a host that is no
    gateway of this cluster, with what is left of `timeout_s`. A drain sent again answers the
    first one's result, which goes on in the controller: joined while it runs, kept once it
    ended (control/drains.py). Its failure is a DrainFailed naming the gateway."""
    deadline = time.monotonic() + timeout_s
    for relay, after in zip(through, through[1:]):
        refusal = channel_refusal(relay)
        if refusal:  # a node's address, plaintext off this machine: not sent the key
            print(f"DrainNode through {relay}: passed over ({refusal}); sent through {after}",
                  file=sys.stderr)
            continue
        remote = Remote(relay)
        try:
            if not _connects(remote, min(CONNECT_S, deadline - time.monotonic())):
                print(f"DrainNode through {relay}: no connection in {CONNECT_S:g} s; sent "
                      f"through {after}", file=sys.stderr)
                continue
            return remote.drain(node_id, deadline - time.monotonic())
        except grpc.RpcError as exc:
            if exc.code() in DRAIN_ANSWERS or deadline - time.monotonic() < MIN_RELAY_S:
                raise DrainFailed(relay, exc) from None
            print(f"DrainNode through {relay} ended {exc.code().name} ({exc.details()}); "
                  f"sent again through {after}", file=sys.stderr)
        finally:
            remote.close()
    remote = Remote(through[-1])
    try:
        return remote.drain(node_id, deadline - time.monotonic())
    except grpc.RpcError as exc:
        raise DrainFailed(through[-1], exc) from None
    finally:
        remote.close()


def _connects(remote: Remote, timeout_s: float) -> bool:
    """Whether the gateway's connection is up within `timeout_s`: a pod IP that cannot be
    reached from here (packets dropped) would cost gRPC's connect timeout, 20 s, per relay."""
    try:
        remote.wait_ready(max(timeout_s, 0.0))
    except (OSError, grpc.FutureTimeoutError):
        return False
    return True


def add_catalog_commands(catalog_commands, parents: list[argparse.ArgumentParser]) -> None:
    send = catalog_commands.add_parser("push", help="validate, then switch the cluster to it",
                                       parents=parents)
    send.add_argument("path", metavar="FILE")
    send.add_argument("--evidence", metavar="REPORT.json",
                      help="a `kairos replay` report on this catalog, kept with its version")
    send.add_argument("--expect", metavar="VERSION", default="",
                      help="switch only from this version running (`kairos status` shows it), "
                           "so a push that waited does not undo a switch made meanwhile")
    back = catalog_commands.add_parser(
        "rollback", parents=parents,
        help="switch the cluster back to the catalog that ran before the last switch")
    # required: without it a rollback sent again after its answer was lost switches back
    back.add_argument("--to", metavar="VERSION", required=True,
                      help="the previous catalog's version; refused when the previous is "
                           "another, done already when it runs")


def catalog(args: argparse.Namespace) -> int:
    return {"push": push, "rollback": rollback}[args.catalog_command](args)


def rollback(args: argparse.Namespace) -> int:
    info = Remote(args.target).rollback_catalog(args.to)
    print(f"the cluster runs catalog '{info.name}' version {info.version}")  # if it did already
    return 0


def push(args: argparse.Namespace) -> int:
    path = args.path
    try:
        text = read_text(path)
        path = args.evidence
        evidence = read_text(path) if path else ""
    except OSError as exc:
        print(f"error: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as exc:  # a catalog is YAML, a report JSON: both UTF-8 text
        print(f"error: {path}: {not_text(exc)}", file=sys.stderr)
        return 1
    info = Remote(args.target).put_catalog(text, evidence, args.expect)
    print(f"the cluster now runs catalog '{info.name}' version {info.version}"
          + (f", with the evidence in {args.evidence}" if evidence else ""))
    return 0


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
