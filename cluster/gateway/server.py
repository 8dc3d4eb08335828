"""The gateway's gRPC server: both kairos.v1 services behind the auth, in-flight, bounds and
parsing interceptors, with health and reflection (open to all; reflection describes
DecisionService, health and itself, not AdminService: `reflected_pool`), on plaintext or TLS.
Each connection carries at most `streams_per_connection()` calls at once (more wait in the
client, silently, until one ends or their deadline passes)."""
from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kairos.v1 import admin_pb2_grpc, decision_pb2, decision_pb2_grpc

from kairos.cluster.gateway import streams
from kairos.cluster.gateway.admin import AdminService
from kairos.cluster.gateway.auth import Auth, AuthInterceptor, is_loopback
from kairos.cluster.gateway.bounds import Bounds
from kairos.cluster.gateway.calls import Gateway, InflightLimit
from kairos.cluster.gateway.parsing import ParseInterceptor
from kairos.cluster.gateway.decisions import DecisionService
from kairos.cluster.secret_files import check_secret_file
from kairos.cluster.settings import (GATEWAY_CONNECTION_IDLE_S, GATEWAY_CONNECTIONS,
                                     MAX_MESSAGE_BYTES)

SERVICES = ("kairos.v1.DecisionService", "kairos.v1.AdminService")
# What reflection, open to anyone who reaches the port, lists and describes: what a channel's
# grpcurl needs (the calls, health), not the operators' AdminService (their CLI and
# protos/kairos/v1/admin.proto describe it), whose calls a key must still be refused to reveal
REFLECTED = (decision_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
# calls a connection carries besides every watch stream of the gateway (the in-flight limit,
# 20,000 by default, is shared by all of its callers)
CALLS_PER_CONNECTION = 4096
# A client that vanished without closing (its host lost, a NAT or load balancer that dropped
# the connection's state) holds its streams, watch slots and shard registrations until the
# gateway notices: it pings a quiet connection after KEEPALIVE[0] and drops it when no answer
# comes within KEEPALIVE[1] (gRPC's default is 2 h). Clients may ping too, to keep a quiet
# watch alive through such middleboxes: every 5 s at most, with or without
# calls; faster pings earn GOAWAY too_many_pings (gRPC's default minimum is 5 min).
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000)]


def connection_options() -> list[tuple[str, int]]:
    """The bounds on connections, which anyone who reaches the port opens before a key is
    asked for: how many at once (KAIROS_GATEWAY_CONNECTIONS), and how long one may carry no
    call (KAIROS_GATEWAY_CONNECTION_IDLE_S)."""
    return [("grpc.max_allowed_incoming_connections", GATEWAY_CONNECTIONS),
            ("grpc.max_connection_idle_ms", int(GATEWAY_CONNECTION_IDLE_S * 1000))]


def streams_per_connection() -> int:
    """What one connection carries at once: every watch stream the gateway serves
    (KAIROS_WATCH_STREAMS: a push service may watch all of its customers on one channel) and
    CALLS_PER_CONNECTION more, so its Decides on that channel never wait behind its watches.

    By default that is 14,096 calls, about 70 % of KAIROS_GATEWAY_INFLIGHT_LIMIT (20,000): one
    connection, so one client, may take most of the gateway's room. That is meant: the
    gateway's own bounds (the in-flight limit and its shedding, WATCH_STREAMS, bounds.py's)
    protect it whichever connection a call comes on, and refuse a call (RESOURCE_EXHAUSTED)
    where this bound makes it wait in the client in silence; well under them, it would make a
    push service watching many customers on one channel wait on its own Decides, what it is
    sized to prevent."""
    return streams.WATCH_STREAMS + CALLS_PER_CONNECTION


@dataclass(frozen=True)
class Tls:
    """Server certificate and key (PEM); with a client CA, clients must present a certificate
    it signed (mTLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> "Tls":
        """SecretFileError for a key file others may read (each node checks its own copy)."""
        check_secret_file(key, "the TLS private key (--tls-key)")

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        return cls(read(cert), read(key), read(client_ca) if client_ca else None)


async def serve(gateway: Gateway, auth: Auth, host: str, port: int, tls: Tls | None = None,
                admin: bool = True, interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
                serving: bool = True, ports: tuple[int, int] | None = None
                ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Start the gRPC server; (server, health, the port it bound). Auth may be off (no keys)
    only on a loopback address. `admin`: AdminService too (a shard's endpoint serves
    DecisionService only: operators' calls belong to gateways). `interceptors` go after the
    parsing one, next to the handlers; `serving`: what health answers at first
    (`set_health` changes it). `port` (0: any free one) and then, with `ports` (low, high),
    the first of them free; OSError when nothing binds."""
    if not auth.enabled and not is_loopback(host):
        raise ValueError(f"refusing to serve without API keys on {host}: auth may be off only "
                         f"on a loopback address")
    checker = health.aio.HealthServicer()
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(auth), InflightLimit(gateway), Bounds(gateway, checker),
                      ParseInterceptor(), *interceptors],
        # one bound for every method: grpc reads a message whole before any key is checked, so
        # a larger one for AdminService's catalogs would be a stranger's on every stream
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_concurrent_streams", streams_per_connection()),
                 ("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS, *connection_options()])
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(DecisionService(gateway), server)
    if admin:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(gateway), server)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        [service.full_name for file in REFLECTED for service in file.services_by_name.values()],
        server, pool=reflected_pool())
    credentials = None if tls is None else grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None)
    # `port` first (a restart's own), then the range
    tried = [p for p in [port, *(range(ports[0], ports[1] + 1) if ports else ())] if p] or [0]
    bound = _bind(server, host, list(dict.fromkeys(tried)), credentials)
    await set_health(checker, serving, admin)
    await server.start()
    gateway.start()
    return server, checker, bound


def reflected_pool() -> descriptor_pool.DescriptorPool:
    """The REFLECTED files and those they import, and nothing else. Reflection answers a
    request by symbol or file name from its pool, which by default is every .proto the process
    imported: asked for kairos.v1.AdminService by name, it described it to anyone."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for imported in file.dependencies:  # a file goes in after what it imports
            add(imported)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)
    for file in REFLECTED:
        add(file)
    return pool


def _bind(server: grpc.aio.Server, host: str, ports: list[int],
          credentials: grpc.ServerCredentials | None) -> int:
    """The first of `ports` that binds; OSError when none does. Of several, one that is
    taken is skipped before grpc tries it (grpc logs an error for each bind that fails)."""
    failed: Exception | None = None
    for port in ports:
        if len(ports) > 1 and not _free(host, port):
            continue
        address = f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address) if credentials is None else \
                server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc's "Failed to bind": in use, or not allowed
            failed = exc
            continue
        if bound:
            return bound
    raise OSError(f"could not bind {host} on port {ports[0]}" if len(ports) == 1 else
                  f"could not bind {host} on any of ports {ports[0]}-{ports[-1]}") from failed


def _free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port now (a bind that fails says so; one that cannot
    be tried leaves it to grpc)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except OSError:
        return True
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


async def set_health(checker: health.aio.HealthServicer, serving: bool, admin: bool = True
                     ) -> None:
    """What health answers for the server's services and the whole server ("")."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else \
        health_pb2.HealthCheckResponse.NOT_SERVING
    for service in _services(admin) + ("",):
        await checker.set(service, status)


def _services(admin: bool) -> tuple[str, ...]:
    """What a server serves: both services, or DecisionService alone (a shard's endpoint)."""
    return SERVICES if admin else SERVICES[:1]
