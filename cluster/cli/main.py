"""The `kairos` command line.

    kairos up [--nodes N] [--shards S]  start the embedded default: a local Ray cluster with its
                                        dashboard, the runtime, the default catalog and a gRPC
                                        gateway per node (the first on 127.0.0.1:50051); shards
                                        keep their customers in --store (default ~/.kairos/store)
                                        and a cluster started again on it takes up where it
                                        stopped
    kairos demo [--local]               replay a cross-channel journey against it, printing each
                                        decision as it changes (--local: in-process, no cluster)
    kairos status                       nodes, shards, partitions, customers, versions
    kairos catalog validate FILE...     check catalogs; errors name file, line:column and path
    kairos catalog push FILE            validate, then switch the cluster to it
    kairos down                         stop the gateways, the runtime and the local Ray cluster

Commands that talk to a running Kairos use --target (default 127.0.0.1:50051) and the API key
in KAIROS_API_KEY when the gateway requires keys.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from kairos.core.catalog import load_catalog_file
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError

from kairos.cluster.cli import demo

DEFAULT_TARGET = "127.0.0.1:50051"
# the embedded default's store: a directory that outlives `kairos down`
DEFAULT_STORE = os.path.join(os.environ.get("KAIROS_HOME", "~/.kairos"), "store")
RAY_HEAD_PORT = 6380  # the local Ray cluster's GCS port (6379 is left to Redis)


def validate(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        try:
            compiled = compile_catalog(load_catalog_file(path))
        except CatalogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except OSError as exc:
            print(f"error: {path}: {exc.strerror}", file=sys.stderr)
            failed += 1
            continue
        cat = compiled.catalog
        print(f"{path}: ok — catalog '{cat.name}' version {cat.version}: "
              f"{len(cat.actions)} actions in {len(compiled.group_names)} groups, "
              f"{len(cat.channels)} channels, {len(cat.events)} event types, "
              f"{len(cat.features)} features, {compiled.layout.size} profile slots")
    return 1 if failed else 0


def up(args: argparse.Namespace) -> int:
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.gateway.service import GatewayActor, Tls
    from kairos.cluster.settings import NAMESPACE

    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        print("--tls-cert and --tls-key go together (and --tls-client-ca needs them)",
              file=sys.stderr)
        return 2
    # Every node starts on this machine: shards serve their data path on loopback. Ray runs
    # workers at nice 15 by default, behind any batch job on the machine; Kairos's actors are
    # the latency-bound service, so they run at 0. (Ray's workers inherit `ray start`'s
    # environment.)
    os.environ.setdefault("KAIROS_DATA_HOST", "127.0.0.1")
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    quiet = {"stdout": subprocess.DEVNULL, "check": True}
    subprocess.run([ray_cli, "start", "--head", f"--port={RAY_HEAD_PORT}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    "--disable-usage-stats"], **quiet)
    ray.init(address="auto", namespace=NAMESPACE, logging_level="WARNING")
    head = ray.get_runtime_context().gcs_address
    for _ in range(args.nodes - 1):
        subprocess.run([ray_cli, "start", f"--address={head}", "--disable-usage-stats"],
                       **quiet)
    catalog_text = open(args.catalog, encoding="utf-8").read() if args.catalog else None
    runtime.start(n_shards=args.shards, catalog_text=catalog_text, store=args.store,
                  journal_policy=args.journal_policy)
    keys_text = open(args.keys, encoding="utf-8").read() if args.keys else \
        os.environ.get("KAIROS_API_KEYS")
    tls = Tls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca) \
        if args.tls_cert else None
    ports = []
    for i, node in enumerate(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])):
        gateway = runtime.gateway_actor(GatewayActor, i, node)
        ports.append(ray.get(gateway.start.remote(args.host, args.port + i, keys_text, tls)))
    print(f"Kairos is up: {args.nodes} Ray node(s), {args.shards} shards, gRPC on "
          + ", ".join(f"{args.host}:{p}" for p in ports)
          + f"; store {args.store} (journal {args.journal_policy})"
          + "; Ray dashboard on http://127.0.0.1:8265")
    return 0


def down(args: argparse.Namespace) -> int:
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.settings import NAMESPACE
    try:
        ray.init(address="auto", namespace=NAMESPACE, logging_level="WARNING")
        runtime.stop()
        ray.shutdown()
    except ConnectionError:
        print("no local Ray cluster is running", file=sys.stderr)
    # Every node starts on this machine: shards serve their data path on loopback. Ray runs
    # workers at nice 15 by default, behind any batch job on the machine; Kairos's actors are
    # the latency-bound service, so they run at 0. (Ray's workers inherit `ray start`'s
    # environment.)
    os.environ.setdefault("KAIROS_DATA_HOST", "127.0.0.1")
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray_cli, "stop"], check=False)
    return 0


def status(args: argparse.Namespace) -> int:
    from kairos.cluster.cli.remote import Remote
    st = Remote(args.target).status()
    print(f"catalog {st.catalog_version}, map version {st.map_version}, "
          f"{st.partitions} partitions, {st.resident} customers in memory, "
          f"model version {st.model_version}")
    print(f"{len(st.nodes)} node(s); shards:")
    for s in st.shards:
        print(f"  {s.name}  node {s.node[:8]}  {s.partitions:>5} partitions  "
              f"{s.resident:>8} resident  {s.passivated:>8} passivated  queue {s.queued}")
    return 0


def push(args: argparse.Namespace) -> int:
    from kairos.cluster.cli.remote import Remote
    try:
        text = open(args.path, encoding="utf-8").read()
    except OSError as exc:
        print(f"error: {args.path}: {exc.strerror}", file=sys.stderr)
        return 1
    info = Remote(args.target).put_catalog(text)
    print(f"the cluster now runs catalog '{info.name}' version {info.version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kairos", description="Kairos next-best-action engine")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="a gateway's host:port")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the embedded default on this machine")
    start.add_argument("--nodes", type=int, default=1, help="Ray nodes on this machine")
    start.add_argument("--shards", type=int, default=4)
    start.add_argument("--host", default="127.0.0.1", help="gateway bind address")
    start.add_argument("--port", type=int, default=50051, help="first gateway's port")
    start.add_argument("--keys", help="API keys file (YAML); default $KAIROS_API_KEYS")
    start.add_argument("--catalog", help="catalog file (default: the built-in catalog, or the "
                                         "one last pushed to the store's cluster)")
    start.add_argument("--store", default=os.environ.get("KAIROS_STORE", DEFAULT_STORE),
                       help="where shards keep customers, snapshots and journals: a directory, "
                            "redis://host:port/db, or 'memory' (nothing survives a restart); "
                            "default $KAIROS_STORE or %(default)s")
    start.add_argument("--journal-policy", choices=("fsync", "os", "off"),
                       default=os.environ.get("KAIROS_JOURNAL_POLICY", "fsync"),
                       help="fsync each batch before acknowledging it (default), leave it "
                            "to the OS (survives a crash of Kairos, not of the machine), or "
                            "journal nothing")
    start.add_argument("--tls-cert", help="serve TLS: the certificate chain (PEM)")
    start.add_argument("--tls-key", help="serve TLS: the private key (PEM)")
    start.add_argument("--tls-client-ca", help="mTLS: clients need a certificate this CA "
                                               "signed (PEM)")
    commands.add_parser("down", help="stop Kairos and the local Ray cluster")
    commands.add_parser("status", help="show the cluster")
    show = commands.add_parser("demo", help="replay a cross-channel journey")
    show.add_argument("--local", action="store_true", help="in-process, without a cluster")
    catalog = commands.add_parser("catalog", help="work with catalogs")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    check = catalog_commands.add_parser("validate", help="validate and compile catalogs")
    check.add_argument("paths", nargs="+", metavar="FILE")
    send = catalog_commands.add_parser("push", help="validate, then switch the cluster to it")
    send.add_argument("path", metavar="FILE")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run() if args.local else demo.run_remote(args.target)
    if args.command == "catalog":
        return validate(args.paths) if args.catalog_command == "validate" else push(args)
    return {"up": up, "down": down, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
