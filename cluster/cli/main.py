"""The `kairos` command line.

    kairos up [--nodes N] [--shards S]  start the embedded default: a local Ray cluster (one
                                        node: on 127.0.0.1 only) with its dashboard, the
                                        runtime, the default catalog and a gRPC gateway per
                                        node (the first on 127.0.0.1:50051); shards
                                        keep their customers in --store (default ~/.kairos/store)
                                        and a cluster started again on it takes up where it
                                        stopped
    kairos start --address HOST:PORT    the same on a Ray cluster something else started (KubeRay's
                                        head pod): the runtime and a gateway on every node;
                                        nodes that join later get a gateway and shards
    kairos demo [--local]               replay a cross-channel journey against it, printing each
                                        decision as it changes (--local: in-process, no cluster)
    kairos status                       nodes, shards, partitions, customers, versions
    kairos console                      the agent's web console against --target (`kairos up`
                                        serves one on 127.0.0.1:8080, --console-port)
    kairos drain NODE                   take a node out under traffic: its gateway turns
                                        NOT_SERVING, its partitions move, its shards and
                                        gateway stop (a KubeRay worker's preStop hook)
    kairos catalog validate FILE...     check catalogs; errors name file, line:column and path
    kairos catalog push FILE [--evidence REPORT.json] [--expect VERSION]
                                        validate, then switch the cluster to it (keeping a
                                        `kairos replay` report with the version; only from
                                        VERSION running)
    kairos catalog rollback --to VERSION
                                        switch back to the previous catalog, VERSION (a retry
                                        that finds VERSION running changes nothing)
    kairos replay --log FILE --catalog CANDIDATE.yaml
                                        judge a candidate catalog on a decision log, offline:
                                        where it decides differently, off-policy estimates of
                                        its accept rate and value (see replay.py)
    kairos uplift --log FILE [--catalog FILE ...] [--json]
                                        the models' uplift over a channel's control group, per
                                        channel and per action, from a decision log (offline;
                                        convert values bounded as each catalog's models bound
                                        them)
    kairos log export --since T --until T --out FILE
                                        the decisions logged in a time range, with their
                                        outcomes, as JSON lines or Parquet (logexport.py)
    kairos down                         stop the gateways, the runtime and the Ray cluster that
                                        `kairos up` started (never another Ray on the machine)

What `kairos up` started is recorded in $KAIROS_HOME/run.json (default ~/.kairos): a second
`kairos up` on the same KAIROS_HOME refuses to start, and `kairos down` stops exactly those
processes (see local.py), within about a minute whatever state they are in. Commands that talk
to a running Kairos use --target (default: the first gateway `kairos up` recorded, once a process
of that run is seen listening there; else 127.0.0.1:50051, when no key is to be sent) and the
API key in KAIROS_API_KEY, or in the file KAIROS_API_KEY_FILE names, when the gateway requires
keys. A Redis store's password is in no Ray task's arguments nor on
`up`'s command line (Ray's GCS keeps both): every process that opens the store reads it from
the file KAIROS_STORE_PASSWORD_FILE names (`up` and `start` check it first, options.py), and
both refuse a store URL that holds one (checks.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import grpc

from kairos.core.catalog import load_catalog_file
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError

# none of these imports kairos.cluster.settings, which main() imports: a KAIROS_* setting it
# refuses is said in one line there, for every command
from kairos.cluster.cli import (checks, console, demo, graceful, local, logexport, operate,
                                remote, replay, targets, uplift, watchdog)
from kairos.cluster.cli.checks import Refused, checked_inputs
from kairos.cluster.cli.options import parser
from kairos.cluster.secret_files import SecretFileError
from kairos.cluster.gateway.auth import EVERY_ADDRESS, is_loopback
from kairos.cluster.storage.store import redact  # light: no store's client is imported

NOT_RUNNING = "Kairos is not running"


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
    try:
        checks.refuse_counts(args)
        ports = checks.given_ports(args)
        checks.refuse_shared_ports(args, ports)
        catalog_text = checked_inputs(args)
        checks.refuse_long_temp_dir(args.ray_temp_dir)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return exc.status
    local.own_home()  # 0700 before anything is kept in it (`kairos down` changes no mode)
    with local.up_lock():
        run = local.read_run()
        if run is not None:
            if local.processes(run):
                print(f"Kairos is already running ({_describe(run)}); `kairos down` stops it",
                      file=sys.stderr)
                return 1
            local.forget_stopped(run)  # it stopped without `kairos down`
        try:
            checks.refuse_busy_ports(args, ports)
        except Refused as exc:
            print(exc, file=sys.stderr)
            return exc.status
        try:
            auth_mode = local.auth_mode()
        except (SecretFileError, local.BadAuthMode) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: making Ray's authentication token failed: {exc}", file=sys.stderr)
            return 1
        if auth_mode == "disabled" and args.nodes > 1:
            print(f"error: refusing RAY_AUTH_MODE=disabled with --nodes {args.nodes}: Ray's "
                  f"nodes then listen on this machine's address, and any machine that reaches "
                  f"it could run code as this user. Keep Ray's token authentication (unset "
                  f"RAY_AUTH_MODE), or start such a Ray yourself (`ray start --head`, then "
                  f"`ray start --address` per node) and run `kairos start --address` on it",
                  file=sys.stderr)
            return 2
        try:
            temp_dir = checks.made_temp_dir(args.ray_temp_dir)
        except Refused as exc:
            print(exc, file=sys.stderr)
            return exc.status
        run = local.Run(ray_address=f"{local.LOOPBACK}:{args.ray_port}", temp_dir=temp_dir,
                        sessions=[], started=time.time(), loopback=args.nodes == 1,
                        auth_mode=auth_mode, nodes=args.nodes, store=redact(args.store),
                        dashboard=f"http://{local.LOOPBACK}:{args.dashboard_port}"
                        if args.dashboard else "")
        try:
            _start(args, run, catalog_text)
        except BaseException as exc:  # stop what started, whatever went wrong (^C too)
            done = "not all of what had started stopped" if _stop(run)[1] else \
                "stopped what had started"
            if not isinstance(exc, Exception):
                print(f"\ninterrupted: {done}", file=sys.stderr)
                return 130
            print(f"error: Kairos did not start: {exc}\n({done})", file=sys.stderr)
            return 1
    print(up_message(args, run))
    if run.auth_mode == "disabled":
        print(f"warning: Ray runs without authentication (RAY_AUTH_MODE=disabled): any process "
              f"of this machine that reaches its GCS at {run.ray_address} can run code as this "
              f"user", file=sys.stderr)
    return 0


def up_message(args: argparse.Namespace, run: local.Run) -> str:
    """What `kairos up` says once Kairos is up (the store without its credentials)."""
    where = (f"{local.LOOPBACK} (loopback only)" if run.loopback
             else "this machine's address (Ray's nodes reach each other over it)")
    return (f"Kairos is up: {args.nodes} Ray node(s) on {where}, {args.shards} shards, gRPC on "
            + ", ".join(run.gateways)
            + f"; store {redact(args.store)} (journal {args.journal_policy})"
            + (f"; each shard serves its own endpoint ({_endpoints(args)}; GetRoutes names "
               f"them)" if args.shard_endpoints or args.shard_endpoint_ports else "")
            + (f"; Ray dashboard on {run.dashboard}" if run.dashboard else "")
            + f"; Ray's temp dir {run.temp_dir}"
            + (f"; the agent's console on {run.console} (sign in with a key from "
               f"{run.console_keys})" if run.console else "")
            + ". `kairos down` stops it.")


def _endpoints(args: argparse.Namespace) -> str:
    ports = args.shard_endpoint_ports
    return f"ports {ports[0]}-{ports[1]}" if ports else "free ports"


def _start(args: argparse.Namespace, run: local.Run, catalog_text: str | None) -> None:
    # Ray reads its mode (single machine or not) when it is imported: the environment first
    # (with the run's token, which the console this starts inherits: see local.processes)
    env = local.ray_env(run.loopback, run.auth_mode, run.token)
    os.environ.clear()
    os.environ.update(env)
    local.start_ray(run, args.dashboard_port if args.dashboard else None)
    from kairos.cluster.control.endpoints import endpoint

    def stop_ray() -> None:  # from the watchdog's thread: this one is stuck in ray.init
        _stop(run)

    reach = local.LOOPBACK if args.host in EVERY_ADDRESS else args.host
    # node i's gateway on port + i: every node of `kairos up` is on this machine
    run.gateways = [endpoint(reach, None, port) for _, port in _start_kairos(
        args, run.ray_address, catalog_text, consecutive=True,
        ray_wait_s=local.RAY_INIT_TIMEOUT_S, on_timeout=stop_ray)]
    local.write_run(run)
    if args.console_port:
        console.spawn(args, run)


def start(args: argparse.Namespace) -> int:
    """Kairos on a Ray cluster something else started (KubeRay's head pod, `ray start`): the
    runtime and a gateway on every node alive, each on --port of its node's address. Nothing
    is recorded in $KAIROS_HOME: the platform that started Ray stops it."""
    try:
        catalog_text = checked_inputs(args)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return exc.status
    try:
        gateways = _start_kairos(args, args.address, catalog_text, consecutive=False,
                                 ray_wait_s=args.ray_wait)
    except Exception as exc:  # Ray not reachable, a gateway that could not bind, ...
        print(f"error: Kairos did not start on the Ray cluster at {args.address}: {exc}",
              file=sys.stderr)
        return 1
    from kairos.cluster.control.endpoints import endpoint

    # where each gateway listens: its node's address, or the one address --host names
    print(f"Kairos is serving on the Ray cluster at {args.address}: {args.shards} shards, "
          f"gRPC on " + ", ".join(endpoint(args.host, host, port) for host, port in gateways)
          + f"; store {redact(args.store)} (journal {args.journal_policy})")
    return 0


def _start_kairos(args: argparse.Namespace, address: str, catalog_text: str | None,
                  consecutive: bool, ray_wait_s: float | None = None,
                  on_timeout: Callable[[], None] | None = None) -> list[tuple[str, int]]:
    """Join the Ray cluster at `address` as a driver and start the runtime on it, with a
    gateway on every node, now and as nodes join (`consecutive`: gateway n on --port + n, for
    nodes that share this machine; else each on --port; 0: any free port); each gateway's
    (node address, port), in the order of the gateways' numbers. `ray_wait_s`: how long the
    Ray may take to answer (None: no bound), after which `on_timeout` runs and the process
    exits (watchdog.py)."""
    import ray

    from kairos.cluster.control import runtime
    from kairos.cluster.control.nodes import GatewaySpec
    from kairos.cluster.gateway.auth import KEYS_ENV
    from kairos.cluster.settings import NAMESPACE

    tls_files = tuple(os.path.abspath(p) if p else None for p in
                      (args.tls_cert, args.tls_key, args.tls_client_ca)) \
        if args.tls_cert else None
    spec = GatewaySpec(args.host, args.port, consecutive,
                       keys_file=os.path.abspath(args.keys) if args.keys else None,
                       keys_env=None if args.keys else KEYS_ENV, tls_files=tls_files,
                       shard_endpoints=args.shard_endpoints or bool(args.shard_endpoint_ports),
                       shard_ports=args.shard_endpoint_ports)
    with watchdog.exit_unless_done(ray_wait_s, f"no Ray cluster answered at {address}",
                                   "; stopping what it started" if on_timeout else
                                   " (--ray-wait)", on_timeout=on_timeout):
        ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING")
    try:
        per_cpu = {"shards_per_cpu": args.shards_per_cpu} if args.shards_per_cpu else {}
        try:
            runtime.start(n_shards=args.shards, catalog_text=catalog_text, store=args.store,
                          journal_policy=args.journal_policy, gateways=spec, **per_cpu)
        except ray.exceptions.ActorAlreadyExistsError:  # its learner's or controller's name
            raise RuntimeError(
                f"Kairos already runs on this Ray cluster (namespace {NAMESPACE}): stop it "
                f"first (`kairos down` for one `kairos up` started; else "
                f"kairos.cluster.control.runtime.stop() from a driver of this cluster)") from None
        nodes = ray.get(runtime.controller().status.remote())["node_status"]
        return [(n["address"], n["gateway_port"])
                for n in sorted(nodes, key=lambda n: n["gateway_index"]) if n["gateway_port"]]
    finally:
        ray.shutdown()


def _describe(run: local.Run) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    return (f"started {started}, Ray at {run.ray_address}"
            + (f", gRPC on {', '.join(run.gateways)}" if run.gateways else "")
            + f"; recorded in {local.home() / local.RUN_FILE}")


def down(args: argparse.Namespace) -> int:
    began = time.monotonic()
    with local.up_lock():
        run = local.read_run()
        if run is None:
            print(f"{NOT_RUNNING} (nothing recorded in {local.home() / local.RUN_FILE})")
            return 0
        procs = local.processes(run)
        if not procs:
            _say_strangers(run)
            local.forget_stopped(run)
            print(f"{NOT_RUNNING}: the processes of the Kairos {_describe(run)} had "
                  f"exited; its record is removed")
            return 0
        _say_strangers(run)
        names = {local.name_of(p) for p in procs}
        if "gcs_server" not in names or not targets.answers(run.ray_address):
            gone = f"Ray's GCS at {run.ray_address} was gone"
        elif "raylet" not in names:
            gone = "Ray's raylet was gone"
        else:
            gone = ""
        stopped_runtime, why = (None, gone) if gone else _stop_runtime(run)
        count, stuck = _stop(run)
        for warning in (stopped_runtime or {}).get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        if stuck:
            return 1
    took = f"({time.monotonic() - began:.1f} s)"
    if stopped_runtime is not None:
        print(f"Kairos is down: stopped the gateways on {', '.join(run.gateways) or '(none)'}, "
              f"the controller, the learner and {stopped_runtime['shards']} shards, then "
              f"Ray's {count} processes at {run.ray_address} {took}")
    else:
        print(f"Kairos is down: {why}, so its processes were stopped without it: Ray's "
              f"{count} processes at {run.ray_address} {took}")
    return 0


def _stop_runtime(run: local.Run) -> tuple[dict | None, str]:
    """graceful.stop_runtime(run); whatever fails in it is said, and Ray's processes are
    stopped all the same."""
    try:
        return graceful.stop_runtime(run)
    except Exception as exc:  # an environment Ray's driver cannot start with, say
        return None, f"stopping the runtime through Ray failed ({type(exc).__name__}: {exc})"


def _stop(run: local.Run) -> tuple[int, list[int]]:
    """local.stop(run), saying which processes would not stop (the record then stays)."""
    count, stuck = local.stop(run)
    if stuck:
        print(f"error: {len(stuck)} of Kairos's Ray processes would not stop (processes "
              f"{', '.join(map(str, stuck))} of sessions {run.sessions}); its record stays in "
              f"{local.home() / local.RUN_FILE}: `kairos down` tries again", file=sys.stderr)
    return count, stuck


def _say_strangers(run: local.Run) -> None:
    """A record without a token (an older `kairos up`'s) proves nothing of its sessions: what
    runs there that is not Ray or Kairos is left alone, and said."""
    if pids := local.strangers(run):
        print(f"warning: {local.home() / local.RUN_FILE} has no run token (an older Kairos "
              f"wrote it): processes {', '.join(map(str, pids))} of its sessions are left "
              f"running, as their command lines are not Ray's or Kairos's", file=sys.stderr)


def refused_target(target: str) -> str | None:
    """What is wrong with a --target before anything dials it (gRPC takes a port modulo
    65536), or None."""
    try:
        host, _ = targets.split_target(target)
    except targets.NotOneAddress:  # a Unix socket, several addresses: gRPC's own checks
        return None
    except ValueError as exc:
        return f"error: --target {exc}"
    if not target.startswith("dns://") and not targets.resolves(host):
        return f"error: --target {target}: cannot resolve host {host!r}"
    return None


def default_target(gateway_port: int) -> str:
    """The first gateway `kairos up` recorded on this KAIROS_HOME that a process of its run is
    seen to listen on; else 127.0.0.1:port where no API key is to be sent. SystemExit
    otherwise: the key goes only to a Kairos known to be there, or to a --target the user
    names (a record outlives a reboot, and a port of a Kairos gone is anyone's)."""
    run, recorded = local.read_run(), local.home() / local.RUN_FILE
    nothing = f"nothing is recorded in {recorded}"
    if run:
        procs = local.processes(run)
        for target in run.gateways:
            try:
                port = targets.split_target(target)[1]
            except ValueError as exc:
                raise SystemExit(f"error: {recorded}: its gateway {exc}") from None
            if any(local.listens(proc.pid, port) for proc in procs):
                return target
        if run.gateways:
            why = "(`kairos down` clears the record of a Kairos gone)" if not procs else \
                "(it may be starting, or stopping)"
            raise SystemExit(f"{NOT_RUNNING} here: no process of the Kairos recorded in "
                             f"{recorded} listens on {', '.join(run.gateways)} {why}; --target "
                             f"names a gateway to call")
        nothing = f"the Kairos recorded in {recorded} has no gateway yet (`kairos up` may still " \
                  f"be starting it)"
    if not gateway_port:
        raise SystemExit(f"error: KAIROS_GATEWAY_PORT is 0 (gateways on any free port), and "
                         f"{nothing}: name a gateway with --target")
    if remote.api_key_from_env():
        raise SystemExit(f"{NOT_RUNNING} here: {nothing}, and the API key goes only to a "
                         f"gateway `kairos up` recorded or one --target names (--target "
                         f"{local.LOOPBACK}:{gateway_port} for whatever listens there: a "
                         f"port-forward, a tunnel)")
    return f"{local.LOOPBACK}:{gateway_port}"


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        if sys.stdout is not None:  # None: started with stdout closed (`kairos down >&-`)
            sys.stdout.flush()  # here, where a reader that left (`kairos status | head`) is caught
        return code
    except BrokenPipeError:  # what it did not read it did not want: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # ^C in status, demo, a log export: the user's, no traceback
        return 130


def _main(argv: list[str] | None) -> int:
    try:
        from kairos.cluster.settings import GATEWAY_PORT as gateway_port
    except ValueError as exc:  # a KAIROS_* override that is not a number or out of range
        if _command(argv) != "down":
            print(f"error: {exc}", file=sys.stderr)
            return 2
        gateway_port = 0  # down reads no setting: it stops a Kairos whatever they say
    args = parser(gateway_port).parse_args(argv)
    if args.command in ("up", "down", "start"):
        return {"up": up, "down": down, "start": start}[args.command](args)
    if args.command == "catalog" and args.catalog_command == "validate":
        return validate(args.paths)
    if args.command == "replay":
        return replay.run(args)
    if args.command == "uplift":
        return uplift.run(args)
    if args.command == "demo" and args.local:
        return demo.run()
    if "target" not in args:
        args.target = default_target(gateway_port)
    if refused := refused_target(args.target):
        print(refused, file=sys.stderr)
        return 2
    try:
        if args.command == "demo":
            return demo.run_remote(args.target)
        if args.command == "console":
            return console.run(args)
        return {"status": operate.status, "drain": operate.drain, "catalog": operate.catalog,
                "log": logexport.run}[args.command](args)
    except grpc.RpcError as exc:  # a drain's names the gateway that answered it
        answered = exc.relay if isinstance(exc, operate.DrainFailed) else args.target
        print(failed_call(answered, exc), file=sys.stderr)
        return 1


def _command(argv: list[str] | None) -> str | None:
    """The command `argv` names, before the full parser reads it (None: none, or --help)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--target")
    first.add_argument("command", nargs="?")
    return first.parse_known_args(argv)[0].command


def failed_call(target: str, exc: grpc.RpcError) -> str:
    """What a command says of a call to the gateway at `target` that failed: the gateway's own
    answer (its UNAVAILABLE too: a catalog switch no shard prepared, a store that refuses
    writes, a stuck drain, while Kairos does run); NOT_RUNNING only when gRPC opened no
    connection and nothing accepts one at the target's address."""
    said = f"error: {target}: {exc.code().name}: {exc.details()}"
    if not targets.connect_failed(exc):
        return said
    try:
        reached = targets.answers(target)
    except ValueError:  # a Unix socket, several addresses: gRPC's own words
        return said
    if not reached:  # `kairos up` starts a gateway on this machine only
        here = is_loopback(targets.split_target(target)[0])
        hint = " (`kairos up` starts one)" if here else ""
        return f"{NOT_RUNNING}: no gateway answers at {target}{hint}"
    return f"{said}\n({remote.tls_hint()})"


if __name__ == "__main__":
    sys.exit(main())
