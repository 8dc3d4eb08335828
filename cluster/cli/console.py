"""`kairos console`: the agent's web console against any gateway; and the one `kairos up`
starts (`--console-port`, default 8080; 0: none).

`kairos up` exits once Kairos serves, so its console runs as a process of its own, in a
process session recorded with Ray's in run.json: `kairos down` stops it with them, and a
second `kairos up` sees it running. It gets the keys the gateways get (the --keys file's path,
or KAIROS_API_KEYS in its environment), never a secret on its command line.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time

from kairos.cluster.cli import checks, local, private
from kairos.cluster.cli.remote import INSECURE_ENV, channel_refusal
from kairos.cluster.cli.targets import port, port_or_zero

CONSOLE_PORT = 8080
# host names to answer besides the bind address's, comma-separated (`kairos up`'s console
# inherits it)
HOSTS_ENV = "KAIROS_CONSOLE_ALLOWED_HOSTS"
CONSOLE_LOG = "console.log"
START_TIMEOUT_S = 60.0


def add_command(commands, parents: list[argparse.ArgumentParser]) -> None:
    run_ = commands.add_parser("console", parents=parents,
                               help="serve the agent's web console against a gateway")
    run_.add_argument("--host", default=local.LOOPBACK, help="bind address (default "
                                                              "%(default)s)")
    run_.add_argument("--port", type=port, default=CONSOLE_PORT, help="default %(default)s")
    run_.add_argument("--channel", default="call_center",
                      help="the agents' channel: its next best actions, and where their "
                           "outcomes are recorded (default %(default)s)")
    run_.add_argument("--keys", help="the keys agents sign in with (the gateways' keys file); "
                                     "default $KAIROS_API_KEYS, else a console key made in "
                                     "$KAIROS_HOME")
    run_.add_argument("--dashboard", default="", help="the Ray dashboard's URL, linked from the "
                                                      "operator page")
    run_.add_argument("--tls-cert", help="serve HTTPS: the certificate chain (PEM)")
    run_.add_argument("--tls-key", help="serve HTTPS: the private key (PEM)")
    run_.add_argument("--allowed-host", action="append", metavar="NAME",
                      default=[n for n in os.environ.get(HOSTS_ENV, "").split(",")
                               if n.strip()],
                      help="a host name agents' browsers reach the console by (repeatable; "
                           "*.example.com for any under it): requests for other names than "
                           f"these, those in ${HOSTS_ENV} (comma-separated) and the "
                           "bind address's are refused")
    run_.add_argument("--insecure", action="store_true",
                      help="allow plain HTTP on an address other than loopback (agents' keys "
                           "and session cookies then cross the network in clear)")
    run_.add_argument("--proxy", type=proxy_address, metavar="ADDR",
                      help="the IP address of a reverse proxy in front of the console (one "
                           "that ends TLS): its X-Forwarded-Proto and X-Forwarded-For are "
                           "believed, another peer's ignored, so the console sees HTTPS and "
                           "each agent's own address")


def proxy_address(text: str) -> str:
    """argparse's type of --proxy: one IP address. (uvicorn would take a name it cannot match
    as a literal that no peer ever is, and `*` as every peer: anyone could then say HTTPS, or
    sign in from a new address at each guess.)"""
    try:
        if "%" in text:  # a zone may hold a comma: "::1%a,127.0.0.1" was two addresses
            raise ValueError(text)
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be the proxy's IP address (no zone), got "
                                         f"{text!r}") from None


def add_up_option(up: argparse.ArgumentParser) -> None:
    up.add_argument("--console-port", type=port_or_zero, default=CONSOLE_PORT,
                    help="the agent's console on 127.0.0.1 (default %(default)s; 0: none)")


def run(args: argparse.Namespace) -> int:
    from kairos.cluster.console.app import ConsoleConfig
    from kairos.cluster.console.server import (CONSOLE_KEYS_FILE, Listen, keys_text, serve,
                                               served_hosts)
    from kairos.cluster.gateway.auth import KEYS_ENV, Auth, is_loopback

    try:
        checks.refuse_unpaired_tls(args)
    except checks.Refused as exc:
        print(exc, file=sys.stderr)
        return exc.status
    if not (args.tls_cert or args.insecure or is_loopback(args.host)):
        # the proxy's TLS ends before its hop to the console, which crosses the network too
        hop = f" from the proxy {args.proxy} to the console" if args.proxy else ""
        print(f"--host {args.host} without --tls-cert would send agents' keys and session "
              f"cookies in clear{hop}: serve HTTPS, or say --insecure", file=sys.stderr)
        return 2
    own_keys = None if args.keys or os.environ.get(KEYS_ENV, "").strip() else \
        str(local.home() / CONSOLE_KEYS_FILE)  # made 0600 the first time, checked after
    try:
        checks.refuse_open_secrets((args.keys, "--keys"), (args.tls_key, "--tls-key"),
                                   (own_keys, "the console's own keys file"))
    except checks.Refused as exc:
        print(exc, file=sys.stderr)
        return exc.status
    try:
        hosts = served_hosts(args.host, args.allowed_host, tls=bool(args.tls_cert))
    except ValueError as exc:
        print(f"error: --allowed-host or ${HOSTS_ENV}: {exc}", file=sys.stderr)
        return 2
    # said now, not once the server starts (its gateway client's channel_to would exit then)
    refusal = channel_refusal(args.target)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        text, source = keys_text(args.keys, local.home())
        auth = Auth.load(text)
    except (OSError, ValueError) as exc:
        print(f"error: the console's keys: {exc}", file=sys.stderr)
        return 1
    scheme = "https" if args.tls_cert else "http"
    behind = f", behind the proxy {args.proxy}" if args.proxy else ""
    print(f"the agent's console on {scheme}://{args.host}:{args.port}{behind} against "
          f"{args.target} (sign in with a key from {source}); it answers requests for "
          f"{', '.join(hosts)} (--allowed-host adds names)", flush=True)
    serve(ConsoleConfig(args.target, args.channel, args.dashboard, hosts), auth,
          Listen(args.host, args.port, args.tls_cert, args.tls_key, args.proxy))
    return 0


def spawn(args: argparse.Namespace, run: local.Run) -> None:
    """Start `kairos up`'s console in a session of its own, recorded in `run` with its URL and
    where its sign-in keys come from, once it answers (local.StartFailed if it does not)."""
    from kairos.cluster.console.server import keys_text

    if args.tls_client_ca:  # its calls would need a client certificate of their own
        print("the agent's console is not started: the gateways ask for client certificates "
              "(--tls-client-ca); run `kairos console` with KAIROS_TLS_CA, KAIROS_TLS_CERT and "
              "KAIROS_TLS_KEY naming one", file=sys.stderr)
        return
    # made here, before the console reads it, so that `kairos up` can say where it is
    run.console_keys = keys_text(args.keys and os.path.abspath(args.keys), local.home())[1]
    command = [sys.executable, "-m", "kairos.cluster.cli.main", "--target", run.gateways[0],
               "console", "--port", str(args.console_port), "--dashboard", run.dashboard]
    if args.keys:
        command += ["--keys", os.path.abspath(args.keys)]
    env = dict(os.environ)
    if args.tls_cert:
        command += ["--tls-cert", os.path.abspath(args.tls_cert),
                    "--tls-key", os.path.abspath(args.tls_key)]
        # `kairos up`'s own certificate, self-signed on a laptop, is the CA it trusts
        env.setdefault("KAIROS_TLS_CA", os.path.abspath(args.tls_cert))
    elif args.insecure:  # `up` was told to serve plaintext: its own console calls it so
        env.setdefault(INSECURE_ENV, "1")
    log = local.home() / CONSOLE_LOG
    with private.fresh_log(log) as out:  # this run's output only: its last lines are said
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    run.sessions.append(process.pid)
    local.write_run(run)
    address = f"{local.LOOPBACK}:{args.console_port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    # the console's own listener: something answering on the port may be another process's
    while not local.listens(process.pid, args.console_port):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise local.StartFailed("the console did not start:\n    " + "\n    ".join(tail)
                                    + f"\n(its output is in {log})")
        time.sleep(0.2)
    run.console = f"{'https' if args.tls_cert else 'http'}://{address}"
    local.write_run(run)
