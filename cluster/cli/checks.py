"""What `kairos up` and `kairos start` check before they start anything: options, files, the
catalog, ports. Whatever is refused here would otherwise fail only once Ray runs (a shard count
the controller refuses, a key the gateways cannot load), or never (a Redis database that is no
number, which redis-py reads as database 0)."""
from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from urllib.parse import urlparse

from kairos.core.catalog import Catalog, load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError, not_text

from kairos.cluster.cli import local, operate, private, raytemp
from kairos.cluster.secret_files import SecretFileError, check_secret_file
from kairos.cluster.storage.store import redact  # light: no store's client is imported

# `kairos up`'s Ray nodes, each a raylet with its agents and workers on this one machine
MAX_NODES = 16


class Refused(Exception):
    """What stops a command before it starts anything: the message, and the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def checked_inputs(args: argparse.Namespace) -> str | None:
    """What can be wrong before anything starts (options, files, the catalog); the catalog's
    text (None: the default). Refused otherwise."""
    from kairos.cluster.gateway.auth import KEYS_ENV, Auth, is_loopback
    from kairos.cluster.storage.providers import REDIS_SCHEMES, open_store

    refuse_counts(args)
    refuse_unpaired_tls(args)
    refuse_open_secrets((args.keys, "--keys"), (args.tls_key, "--tls-key"))
    try:
        catalog_text = _read(args.catalog, "--catalog") if args.catalog else None
        if catalog_text is not None:
            _warn_of_refusals(compile_catalog(load_catalog(catalog_text, args.catalog,
                                                           strict=False)).catalog)
        # checked here, read again by each gateway from the file (or the variable, which Ray's
        # processes inherit): secrets never travel as Ray task arguments
        auth = Auth.load(_read(args.keys, "--keys") if args.keys else os.environ.get(KEYS_ENV))
        if args.tls_cert:
            _load_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
        if args.store.startswith(REDIS_SCHEMES):  # its parameters; no connection
            open_store(args.store)
            if not args.store.startswith("unix://"):  # a socket's path, its database ?db=
                _check_redis_db(args.store)
    except (CatalogError, ValueError) as exc:
        raise Refused(f"error: {exc}", 1) from None
    except OSError as exc:
        raise Refused(f"error: {exc.filename}: {exc.strerror}", 1) from None
    _refuse_store_password(args.store)
    if not auth.enabled and not is_loopback(args.host):  # as each gateway would, once Ray runs
        raise Refused(f"error: refusing to serve without API keys on {args.host}: auth may be "
                      f"off only on a loopback address (--keys, or ${KEYS_ENV})", 2)
    if not (args.tls_cert or args.insecure or is_loopback(args.host)):
        raise Refused(f"error: refusing to serve plaintext gRPC on --host {args.host}: API "
                      f"keys, and every request and answer, would cross the network in clear; "
                      f"serve TLS (--tls-cert and --tls-key), or say --insecure to accept that",
                      2)
    return catalog_text


def refuse_unpaired_tls(args: argparse.Namespace) -> None:
    """Refused: a TLS certificate without its key or the other way round, or a client CA
    (--tls-client-ca, where the command has it) without them."""
    client_ca = "tls_client_ca" in args
    if bool(args.tls_cert) != bool(args.tls_key) or (client_ca and args.tls_client_ca
                                                     and not args.tls_cert):
        raise Refused("--tls-cert and --tls-key go together"
                      + (" (and --tls-client-ca needs them)" if client_ca else ""), 2)


def refuse_open_secrets(*files: tuple[str | None, str]) -> None:
    """Refused: a secret's file, of (path or None, what names it), that others may read or
    another user owns (check_secret_file), before anything reads it."""
    try:
        for path, option in files:
            if path:
                check_secret_file(path, option)
    except SecretFileError as exc:
        raise Refused(f"error: {exc}", 2) from None


def _read(path: str, option: str) -> str:
    """The text of an option's file; Refused, naming them, when it is not UTF-8."""
    try:
        return operate.read_text(path)
    except UnicodeDecodeError as exc:
        raise Refused(f"error: {option} {path}: {not_text(exc)}", 1) from None


def refuse_counts(args: argparse.Namespace) -> None:
    """Refused: --shards or `up`'s --nodes out of bounds (first: what loops over them, as
    given_ports does, would otherwise run as long as they say)."""
    from kairos.cluster.gateway.admin import MAX_SHARDS  # ScaleShards' bound

    if not 1 <= args.shards <= MAX_SHARDS:
        raise Refused(f"error: --shards must be 1..{MAX_SHARDS}, got {args.shards}", 2)
    nodes = getattr(args, "nodes", 1)  # `up`'s
    if not 1 <= nodes <= MAX_NODES:
        raise Refused(f"error: --nodes must be 1..{MAX_NODES} (Ray nodes on this machine), got "
                      f"{nodes}", 2)


def _refuse_store_password(store: str) -> None:
    """A store URL that holds a password, in --store or in $KAIROS_STORE (which Ray's
    processes inherit from `kairos up`), is Refused: Ray keeps it in its GCS with the
    driver's command line and the actors' arguments, and `kairos start` cannot set the
    environment of the Ray nodes where the store is opened."""
    from kairos.cluster.storage.providers import STORE_PASSWORD_FILE_ENV, split_password

    for where, url in (("$KAIROS_STORE", os.environ.get("KAIROS_STORE", "")),
                       ("--store", store)):
        if split_password(url)[1]:
            raise Refused(
                f"error: {where} {redact(url)} holds a password, which Ray would keep in its "
                f"GCS and pass to every Ray node: put it in a file only its reader may read "
                f"(`chmod 600`), set {STORE_PASSWORD_FILE_ENV} to its path (for `kairos "
                f"start`, on every Ray node too: their processes open the store), and give "
                f"the URL without it", 2)


def _load_tls(cert: str, key: str, client_ca: str | None) -> None:
    """Load the gateways' certificate chain, key and client CA as a TLS server would: PEM that
    does not parse, or a key that is not the certificate's, is Refused here. An encrypted key
    is refused too (gRPC takes no password), and never prompts for one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise Refused(f"error: --tls-cert {cert} and --tls-key {key} were refused by this "
                      f"host's OpenSSL as a certificate chain and its unencrypted private key "
                      f"({exc.reason or exc}: not PEM, not a matching pair, or weaker than its "
                      f"security level allows)", 1) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise Refused(f"error: --tls-client-ca {client_ca} holds no PEM certificate "
                          f"({exc.reason or exc})", 1) from None


def _check_redis_db(url: str) -> None:
    """redis-py reads a database that is no number (/abc) as database 0, and one with a '/'
    in it (/1/2) as 12."""
    db = urlparse(url).path.removeprefix("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"store {redact(url)}: the database after the host must be a number, "
                         f"not {db!r}")


def _operators_temp_dir(given: str | None) -> tuple[str, str] | None:
    """The Ray temp dir the operator chose (absolute), and how it is said: --ray-temp-dir's,
    else $RAY_TMPDIR/ray (as Ray has it); None: `kairos up`'s default."""
    if given:
        return os.path.abspath(given), f"--ray-temp-dir {os.path.abspath(given)}"
    if os.environ.get("RAY_TMPDIR"):
        path = os.path.abspath(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
        return path, f"Ray's temp dir {path} ($RAY_TMPDIR/ray)"
    return None


def refuse_long_temp_dir(given: str | None) -> None:
    """Refused: a Ray temp dir the operator chose (--ray-temp-dir `given`, or RAY_TMPDIR's: the
    default fits) too long for the Unix sockets Ray makes under it (`ray start` would fail, its
    words in ray-start.log). Nothing is made."""
    chosen = _operators_temp_dir(given)
    if chosen and not raytemp.socket_paths_fit(chosen[0]):
        longest = os.path.join(chosen[0], raytemp.RAY_SOCKET)
        raise Refused(f"error: {chosen[1]} is too long: Ray makes Unix sockets under it, up to "
                      f"{longest} ({len(longest.encode())} bytes), and a socket's path may have "
                      f"{raytemp.SOCKET_PATH_MAX}; {raytemp.HOW_TO_CHOOSE}", 2)


def made_temp_dir(given: str | None) -> str:
    """Ray's --temp-dir (absolute), made now (`ray start` would make it): the operator's (after
    refuse_long_temp_dir), else $KAIROS_HOME/ray/tmp in a folder of this user's only (made so),
    else, where Ray's socket paths would not fit there, a new one in /tmp (raytemp.py). One that
    cannot be made or written is Refused, saying how to choose another."""
    chosen = _operators_temp_dir(given)
    if chosen is None:
        own = local.own_ray_temp_dir()  # in the home `up` made its user's only before this
        try:
            if not raytemp.socket_paths_fit(own):
                return raytemp.make_fallback()
            private.closed_dir(Path(own).parent, "the folder of Ray's temp dir")
        except OSError as exc:
            raise Refused(f"error: making Ray's temp dir in {raytemp.SHARED}: {exc.strerror}; "
                          f"{raytemp.HOW_TO_CHOOSE}", 2) from None
        except SystemExit as exc:
            raise Refused(f"{exc}; or {raytemp.HOW_TO_CHOOSE}", 2) from None
        chosen = own, f"Ray's temp dir {own}"
    path, said = chosen
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise Refused(f"error: {said}: {exc.strerror}; {raytemp.HOW_TO_CHOOSE}", 2) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise Refused(f"error: {said}: not writable by this user; {raytemp.HOW_TO_CHOOSE}", 2)
    return path


def _warn_of_refusals(catalog: Catalog) -> None:
    """The start goes on with a catalog that only checks newer than saved catalogs refuse: at
    every head start Kubernetes passes the catalog the store may run already, and a restart is
    never refused it. The controller refuses it where it comes in new: on a new store, and on
    a store that runs another catalog (switched to as PutCatalog does). Each refusal is said."""
    for refusal in catalog.refusals:
        print(f"warning: {refusal} (a check newer than catalogs saved in a store: a store that "
              f"runs this catalog, or ran it in its last 256 switches, starts with it; a new "
              f"store, or one that never ran it, refuses it, as PutCatalog and `kairos catalog "
              f"validate` do)", file=sys.stderr)


def given_ports(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """The ports `up` is to listen on, each with what listens there and the option that gives
    it (a console port of 0, no console, and a gateway port of 0, any free one, are left out)."""
    ports = [("Ray", "--ray-port", args.ray_port)]
    if args.dashboard:
        ports.append(("the Ray dashboard", "--dashboard-port", args.dashboard_port))
    if args.console_port:
        ports.append(("the console", "--console-port", args.console_port))
    if args.port:  # node i's gateway on port + i
        ports += [("a gateway", f"--port + {i}" if i else "--port", args.port + i)
                  for i in range(args.nodes)]
    return ports


def refuse_shared_ports(args: argparse.Namespace, ports: list[tuple[str, str, int]]) -> None:
    """Refused: a port that two options give, or one within the shard endpoints' range (a
    shard may take it first) or Ray's worker ports (`ray start` refuses its GCS port there, and
    a worker may take any other first), or past 65535 (--port + i): the second to bind it
    would fail, or the first answer for it."""
    first: dict[int, str] = {}
    low, high = args.shard_endpoint_ports or (1, 0)
    workers = local.RAY_WORKER_PORTS
    taken = f"Ray's worker ports {workers[0]}-{workers[1]}, one of which each Ray worker takes"
    for _, option, port in ports:
        if port > 65535:
            raise Refused(f"error: {option} is port {port}, past 65535", 2)
        if port in first:
            raise Refused(f"error: {first[port]} and {option} are both port {port}: each "
                          f"needs a port of its own", 2)
        if low <= port <= high:
            raise Refused(f"error: {option} {port} is within --shard-endpoint-ports "
                          f"{low}-{high}", 2)
        if workers[0] <= port <= workers[1]:
            raise Refused(f"error: port {port} ({option}) is within {taken}: choose a port "
                          f"outside them", 2)
        first[port] = option
    if low <= workers[1] and high >= workers[0]:
        raise Refused(f"error: --shard-endpoint-ports {low}-{high} overlaps {taken}: choose "
                      f"ports outside them", 2)


def refuse_busy_ports(args: argparse.Namespace, ports: list[tuple[str, str, int]]) -> None:
    """Refused: a port something else listens on, or a gateway address (--host) this machine
    cannot listen on (a name that does not resolve, another machine's address)."""
    busy = []
    if not args.port:  # any free port: its address is still checked
        ports = [*ports, ("a gateway", "--port", 0)]
    for what, option, port in ports:
        gateway = what == "a gateway"
        try:
            if not local.port_free(args.host if gateway else local.LOOPBACK, port):
                busy.append(f"{port} ({what})")
        except local.AddressUnusable as exc:  # the address, or the port (EACCES)
            raise Refused(f"error: {'--host' if gateway else option}: {exc}", 2) from None
    if busy:
        raise Refused(f"error: in use on this machine: port {', '.join(busy)}; is another "
                      f"Kairos or Ray running? (`kairos up --help` shows how to choose other "
                      f"ports)", 1)
