"""gRPC targets as the command line reads them: the one TCP address a target names, whether
anything accepts connections there, and whether a failed call failed to connect at all.

gRPC takes `host:port`, `[v6]:port`, `dns:[//authority/]host:port`, `ipv4:a.b.c.d:port` and
`ipv6:[v6]:port`, or a socket that is no TCP address (`unix:/path`, `unix-abstract:name`,
`vsock:cid:port`); a host without a port is on port 443, as gRPC has it.
"""
from __future__ import annotations

import socket

import grpc

DEFAULT_PORT = 443  # gRPC's, for a target that names no port
NOT_TCP = ("unix:", "unix-abstract:", "vsock:")
# the beginning of what gRPC's core says when it opened no connection (newer gRPC: "errors
# resolving"; older: "DNS resolution failed"); a gateway's own UNAVAILABLE says something else
CONNECT_FAILURES = ("failed to connect to all addresses", "DNS resolution failed",
                    "errors resolving")


def split_target(target: str) -> tuple[str, int]:
    """The (host, port) of the one TCP address a gRPC target names, an IPv6 host without its
    brackets; ValueError for a target that names none (a Unix socket) or several."""
    address = target
    if address.startswith(NOT_TCP):
        raise ValueError(f"{target} is not a TCP address")
    if address.startswith("dns:"):
        address = address[len("dns:"):]
        if address.startswith("//"):  # an authority (the DNS server's), then the name
            address = address[2:].partition("/")[2]
    elif address.startswith(("ipv4:", "ipv6:")):
        address = address[len("ipv4:"):]
        if "," in address:
            raise ValueError(f"{target} names several addresses")
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{target}: no ']' closes the IPv6 address")
        port = rest[1:]
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a name, or an IPv6 address without brackets: all host, as gRPC reads it
        host, port = address, ""
    if not host:
        raise ValueError(f"{target} names no host")
    number = int(port) if port else DEFAULT_PORT  # ValueError: not a number
    if not 0 < number < 65536:
        raise ValueError(f"{target}: port {number} is out of range")
    return host, number


def join_target(host: str, port: int) -> str:
    """host:port, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def answers(target: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the address a gRPC target names (a name
    that does not resolve: False); ValueError when it names no one TCP address."""
    address = split_target(target)
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


def connect_failed(exc: grpc.RpcError) -> bool:
    """Whether a call failed because gRPC opened no connection to the target (nothing
    listening, a name that does not resolve, a TLS handshake that failed), not because the
    server answered it with an error."""
    return (exc.code() == grpc.StatusCode.UNAVAILABLE
            and (exc.details() or "").startswith(CONNECT_FAILURES))
