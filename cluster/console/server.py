"""Serving the console: its keys, and uvicorn.

The keys agents sign in with are the gateway's, read the way gateways read them: from the
keys file `kairos up --keys` names, else the KAIROS_API_KEYS variable. A Kairos without keys
(its gateway on loopback with auth off) has none to sign in with, so the console makes one of
its own in $KAIROS_HOME (CONSOLE_KEYS_FILE, mode 600, kept across restarts) with the console's
scopes only: its gateway, with auth off, takes any call, and the console still lets in only
the holder of that file's key.

The console answers only requests whose Host header names it (DNS-rebinding defence): the
names of its bind address, and those the operator adds (`served_hosts`).

Behind a reverse proxy (`Listen.proxy`), uvicorn takes the scheme and the client's address from
that one peer's X-Forwarded-Proto and X-Forwarded-For (the rightmost address that is not the
proxy's own; where every one is, the leftmost, which the client wrote: a client that reaches the
proxy from the proxy's own address chooses it), and ignores them from any other, which could
forge them.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import psutil
import yaml

from kairos.cluster.cli import private
from kairos.cluster.console.app import LOOPBACK_HOSTS, ConsoleConfig, create_app
from kairos.cluster.console.session import CONSOLE_SCOPES, OPTIONAL_SCOPES
from kairos.cluster.gateway.auth import EVERY_ADDRESS, KEYS_ENV, Auth, is_loopback

CONSOLE_KEYS_FILE = "console-keys.yaml"
GRACEFUL_STOP_S = 3  # live pages hold streams open: do not wait on them to stop


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls_cert: str | None = None  # PEM files: the console is served over HTTPS
    tls_key: str | None = None
    # a reverse proxy's IP address: its X-Forwarded-Proto and -For are believed, so that
    # behind one that ends TLS the console sees HTTPS (__Host- cookies, Secure, HSTS) and the
    # agents' own addresses (each its sign-in limit); no other peer's are
    proxy: str | None = None


def keys_text(keys_file: str | None, home: Path) -> tuple[str, str]:
    """(the YAML of the keys agents sign in with, where they come from): the keys file, else
    $KAIROS_API_KEYS, else the console's own key in `home` (made the first time)."""
    if keys_file:
        with open(keys_file, encoding="utf-8") as f:
            return f.read(), keys_file
    if os.environ.get(KEYS_ENV, "").strip():
        return os.environ[KEYS_ENV], f"${KEYS_ENV}"
    path = home / CONSOLE_KEYS_FILE
    if not path.exists():
        private.own_home(home, "$KAIROS_HOME")  # 0700, as `kairos up` makes it
        text = yaml.safe_dump({"keys": [{"key": secrets.token_urlsafe(32), "name": "console",
                                         "scopes": sorted(CONSOLE_SCOPES | OPTIONAL_SCOPES)}]})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    return path.read_text(encoding="utf-8"), str(path)


def served_hosts(bind: str, names: Iterable[str] = (), *, tls: bool) -> tuple[str, ...]:
    """The Host names (without the port) the console answers when bound to `bind`: loopback's
    when it listens there, the bind address itself (bound to every interface: each of the
    machine's addresses, which an address-typing agent reaches it by and a rebinding page
    cannot send, as its Host is the attacker's own name), and the operator's `names` (what
    agents' browsers call it; `*.example.com` for any name under it, over `tls` only: plain
    HTTP's cookies have no __Host- name, and a sibling subdomain could set them). ValueError
    for a name no Host header could match, or one that matches too much."""
    own = list(LOOPBACK_HOSTS) if bind in EVERY_ADDRESS or is_loopback(bind) else []
    own += [_as_host(a) for a in _interface_addresses()] if bind in EVERY_ADDRESS else \
        [_as_host(bind)]
    wildcards = [name for name in names if name.strip().startswith("*.")]
    if wildcards and not tls:
        raise ValueError(f"{wildcards[0]!r} over plain HTTP: any of its subdomains could set "
                         f"the console's cookies for it (session fixation); serve HTTPS "
                         f"(--tls-cert), or name the console's hosts one by one")
    return tuple(dict.fromkeys(own + [_as_host(_checked(name)) for name in names]))


def _interface_addresses() -> list[str]:
    """The machine's IP addresses, but link-local IPv6 ones (a Host header cannot carry their
    zone)."""
    return [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family in (socket.AF_INET, socket.AF_INET6) and "%" not in a.address
            and not ipaddress.ip_address(a.address).is_link_local]


# a DNS name: letters, digits and hyphens in labels of up to 63, dot-separated
_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _checked(name: str) -> str:
    """`name` lower-cased, if a Host header could carry it: an IP address, a DNS name, or
    `*.` and a domain of two labels at least (`*.com` would let any site's page through)."""
    name = name.strip().lower()
    if _ip(name.strip("[]")) is not None:
        return name.strip("[]")
    domain = name[2:] if name.startswith("*.") else name
    if ":" in name:
        raise ValueError(f"{name!r}: give the name without its port")
    if not _NAME.fullmatch(domain) or (domain is not name and "." not in domain):
        raise ValueError(f"{name!r} is not a host name (nor *.domain, with two labels at "
                         f"least after the *)")
    return name


def _as_host(host: str) -> str:
    """`host` as a Host header carries it: an IPv6 address compressed, in brackets."""
    address = _ip(host)
    if address is None:
        return host
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def serve(config: ConsoleConfig, auth: Auth, listen: Listen) -> None:
    """Run the console until SIGINT or SIGTERM."""
    import uvicorn

    from kairos.cluster.console.heads import HeadDeadline

    uvicorn.run(create_app(config, auth), host=listen.host, port=listen.port,
                ssl_certfile=listen.tls_cert, ssl_keyfile=listen.tls_key, log_level="warning",
                timeout_graceful_shutdown=GRACEFUL_STOP_S, proxy_headers=bool(listen.proxy),
                forwarded_allow_ips=[listen.proxy] if listen.proxy else None,  # not split
                http=HeadDeadline)
