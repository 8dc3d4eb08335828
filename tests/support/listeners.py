"""The addresses processes listen on: what a test checks when it says "loopback only"."""
from __future__ import annotations

import psutil

LOOPBACK = frozenset({"127.0.0.1", "::ffff:127.0.0.1", "::1"})


def listening(procs: list[psutil.Process]) -> set[str]:
    """The local addresses of every listening TCP socket of `procs` (those gone are skipped)."""
    found = set()
    for proc in procs:
        try:
            conns = proc.net_connections("inet")
        except psutil.Error:
            continue
        found |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return found
