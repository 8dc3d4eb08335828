"""gRPC targets and ports as the command line reads them: the one TCP address a target names,
whether anything accepts connections there, and whether a failed call failed to connect at all.

gRPC takes `host:port`, `[v6]:port`, `dns:[//authority/]host:port`, `ipv4:a.b.c.d:port` and
`ipv6:[v6]:port`, or a socket that is no TCP address (`unix:/path`, `unix-abstract:name`,
`vsock:cid:port`); a host without a port is on port 443, as gRPC has it.
"""
from __future__ import annotations

import argparse
import re
import socket

import grpc

DEFAULT_PORT = 443  # gRPC's, for a target that names no port
PORTS = range(1, 65536)
NOT_TCP = ("unix:", "unix-abstract:", "vsock:")
# a URI of a resolver gRPC has besides dns (passthrough:///, xds:///): left to gRPC to read
OTHER_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://")
# the beginning of what gRPC's core says when it opened no connection (newer gRPC: "errors
# resolving"; older: "DNS resolution failed"); a gateway's own UNAVAILABLE says something else
CONNECT_FAILURES = ("failed to connect to all addresses", "DNS resolution failed",
                    "errors resolving")


class NotOneAddress(ValueError):
    """A well-formed target that names no one TCP address (a Unix socket, several)."""


def port(text: str) -> int:
    """argparse's type of a port option: 1-65535. (socket and gRPC take a port modulo 65536:
    70000 would be 4464.)"""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if number not in PORTS:
        raise argparse.ArgumentTypeError(f"must be a port, 1-65535, got {text}")
    return number


def port_or_zero(text: str) -> int:
    """A port, or 0 where the option says what 0 means (any free port, none)."""
    return 0 if text.strip() == "0" else port(text)


def split_target(target: str) -> tuple[str, int]:
    """The (host, port) of the one TCP address a gRPC target names, an IPv6 host without its
    brackets; NotOneAddress for a target that names none (a Unix socket) or several, ValueError
    for one that is malformed (no host, a port that is no number or out of range)."""
    address = target
    if address.startswith(NOT_TCP) or (OTHER_SCHEME.match(address)
                                       and not address.startswith("dns:")):
        raise NotOneAddress(f"{target} is not a TCP address")
    if address.startswith("dns:"):
        address = address[len("dns:"):]
        if address.startswith("//"):  # an authority (the DNS server's), then the name
            address = address[2:].partition("/")[2]
    elif address.startswith(("ipv4:", "ipv6:")):
        address = address[len("ipv4:"):]
        if "," in address:
            raise NotOneAddress(f"{target} names several addresses")
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
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{target}: port {port!r} is not a number") from None
    if number not in PORTS:
        raise ValueError(f"{target}: port {number} is out of range")
    return host, number


def join_target(host: str, port: int) -> str:
    """host:port, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolves(host: str) -> bool:
    """Whether `host` has an address (a name DNS or /etc/hosts knows, an address)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return True


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
