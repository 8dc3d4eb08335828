"""The `kairos` command line's commands and their options (main.py runs them)."""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable

from kairos.cluster.cli import console, local, logexport, operate, replay, uplift
from kairos.cluster.cli.targets import port, port_or_zero
from kairos.cluster.storage.store import redact  # light: no store's client is imported

# the embedded default's store: a directory that outlives `kairos down`
STORE_DIR = "store"
MAX_PORT_RANGE = 1024  # shard endpoints one node may bind (a bind is tried per port)
MAX_RAY_WAIT_S = 86_400.0  # a day: a wait past Python's threading bound killed its timer
MAX_SHARDS_PER_CPU = 64.0  # $KAIROS_SHARDS_PER_CPU's bound (settings.py)


def parser(gateway_port: int) -> argparse.ArgumentParser:
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", default=argparse.SUPPRESS,
                        help="a gateway's host:port (default: the first gateway `kairos up` "
                             f"recorded in $KAIROS_HOME, else 127.0.0.1:{gateway_port})")
    top = argparse.ArgumentParser(prog="kairos", description="Kairos next-best-action engine",
                                  parents=[target])
    commands = top.add_subparsers(dest="command", required=True)
    serving = serving_options()
    up_ = commands.add_parser("up", help="start the embedded default on this machine",
                              parents=[serving])
    up_.add_argument("--nodes", type=int, default=1,
                     help="Ray nodes on this machine (default %(default)s)")
    up_.add_argument("--host", default=local.LOOPBACK, help="gateway bind address")
    up_.add_argument("--port", type=port_or_zero, default=gateway_port,
                     help="first gateway's port (node i's gateway: port + i; 0: any free "
                          "port); default $KAIROS_GATEWAY_PORT or %(default)s")
    up_.add_argument("--ray-port", type=port, default=local.RAY_PORT,
                     help="the Ray cluster's GCS port on 127.0.0.1 (default %(default)s)")
    up_.add_argument("--dashboard-port", type=port, default=local.DASHBOARD_PORT,
                     help="the Ray dashboard's port on 127.0.0.1 (default %(default)s)")
    up_.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                     help="start Ray without its dashboard")
    up_.add_argument("--ray-temp-dir", help="Ray's session files and logs (default "
                     "$RAY_TMPDIR/ray where RAY_TMPDIR is set, else "
                     f"{local.own_ray_temp_dir()}, or a new /tmp/kairos-ray-UID-*/tmp where "
                     "Ray's socket paths would be too long there)")
    console.add_up_option(up_)
    on_ray = commands.add_parser(
        "start", parents=[serving],
        help="start Kairos on a running Ray cluster (KubeRay's head pod, `ray start`)")
    on_ray.add_argument("--address", required=True,
                        help="the Ray cluster's GCS, host:port (or 'auto' on one of its nodes)")
    on_ray.add_argument("--ray-wait", type=positive(MAX_RAY_WAIT_S), default=120.0, metavar="S",
                        help="how long to wait for the cluster's GCS to answer, up to "
                             f"{MAX_RAY_WAIT_S:g} s (default %(default)g s; nothing is "
                             "started before it does)")
    on_ray.add_argument("--host", default="0.0.0.0",
                        help="gateways' bind address (default %(default)s: with --tls-cert, "
                             "or --insecure)")
    on_ray.add_argument("--port", type=port_or_zero, default=gateway_port,
                        help="every node's gateway port (0: any free port); default "
                             "$KAIROS_GATEWAY_PORT or %(default)s")
    commands.add_parser("down", help="stop what `kairos up` started on this KAIROS_HOME")
    commands.add_parser("status", help="show the cluster", parents=[target])
    console.add_command(commands, [target])
    logexport.add_command(commands, [target])
    operate.add_command(commands, [target], positive)
    show = commands.add_parser("demo", help="replay a cross-channel journey", parents=[target])
    show.add_argument("--local", action="store_true", help="in-process, without a cluster")
    catalog = commands.add_parser("catalog", help="work with catalogs")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    check = catalog_commands.add_parser("validate", help="validate and compile catalogs")
    check.add_argument("paths", nargs="+", metavar="FILE")
    operate.add_catalog_commands(catalog_commands, [target])
    replay.add_parser(commands)
    uplift.add_parser(commands)
    return top


def serving_options() -> argparse.ArgumentParser:
    """What `up` and `start` share: the runtime's and the gateways' options."""
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--shards", type=int, default=4,
                         help="shards to start with (default %(default)s)")
    serving.add_argument("--shards-per-cpu", type=positive(MAX_SHARDS_PER_CPU), default=None,
                         help="shards a node that joins gets per CPU (up to "
                              f"{MAX_SHARDS_PER_CPU:g}), at least one (default "
                              "$KAIROS_SHARDS_PER_CPU or 1)")
    serving.add_argument("--keys", help="API keys file (YAML); default $KAIROS_API_KEYS")
    serving.add_argument("--catalog", help="catalog file (default: the built-in catalog, or "
                                           "the one last pushed to the store's cluster)")
    default_store = os.environ.get("KAIROS_STORE", os.path.join(str(local.home()), STORE_DIR))
    serving.add_argument("--store", default=default_store, type=checked_store,
                         help="where shards keep customers, snapshots and journals: a "
                              "directory, redis://host:port/db, or 'memory' (nothing survives "
                              "a restart); default $KAIROS_STORE or "
                              + redact(default_store).replace("%", "%%")
                              + "; a Redis URL's password goes in the file "
                                "$KAIROS_STORE_PASSWORD_FILE names (one in the URL is "
                                "refused)")
    serving.add_argument("--journal-policy", choices=("fsync", "os", "off"),
                         default=os.environ.get("KAIROS_JOURNAL_POLICY", "fsync"),
                         help="fsync each batch before acknowledging it (default), leave it "
                              "to the OS (survives a crash of Kairos, not of the machine), or "
                              "journal nothing")
    serving.add_argument("--shard-endpoints", action="store_true",
                         help="every shard also serves the gRPC contract itself, on a free "
                              "port of the gateways' address, for clients that route "
                              "(GetRoutes): one hop fewer than through a gateway")
    serving.add_argument("--shard-endpoint-ports", type=port_range, metavar="LOW-HIGH",
                         help="with --shard-endpoints (implied): each shard endpoint binds the "
                              "first free port of this range on its node, so that a firewall "
                              "or a NetworkPolicy can open them (default: any free port)")
    serving.add_argument("--tls-cert", help="serve TLS: the certificate chain (PEM)")
    serving.add_argument("--tls-key", help="serve TLS: the private key (PEM)")
    serving.add_argument("--tls-client-ca", help="mTLS: clients need a certificate this CA "
                                                 "signed (PEM)")
    serving.add_argument("--insecure", action="store_true",
                         help="allow plaintext gRPC on a --host other than loopback (API keys "
                              "and every request then cross the network in clear); without "
                              "it, such a --host needs --tls-cert")
    return serving


def checked_store(url: str) -> str:
    """argparse's type of --store (so applied to the default too): `url` as given, once the
    password it will be opened with checked (providers.with_password_file: a file refused,
    unreadable or empty, a URL it cannot go into) by ArgumentTypeError, whose words never
    hold the password. The password stays out of the URL: each process that opens the store
    reads it from the file itself."""
    from kairos.cluster.storage.providers import with_password_file  # redis-py: up/start only

    try:
        with_password_file(url)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return url


def port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        ports = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LOW-HIGH (port numbers), got {text}") \
            from None
    if not 1024 <= ports[0] <= ports[1] <= 65535 or ports[1] - ports[0] >= MAX_PORT_RANGE:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_PORT_RANGE} ports within 1024-65535, the low one first, "
            f"got {text}")
    return ports


def positive(most: float) -> Callable[[str], float]:
    """argparse's type of a number above 0 and at most `most` (NaN refused): a huge one
    failed only where it was used, as `start --ray-wait 1e300` did in the watchdog's timer
    thread (OverflowError), leaving the wait without a bound."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be a number above 0, at most {most:g}, "
                                             f"got {text!r}")
        return value
    return parse
