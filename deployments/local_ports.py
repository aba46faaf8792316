"""Loopback ports for servers a local run starts itself: the Serve HTTP proxy of a local cluster
(``loadtests/local.py``), a throw-away PostgreSQL (``store/sql/local_pg.py``). Not on a
request's way. No Ray.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 20_000  # Ray's worker ports are 10002-19999 unless configured
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    """The first port the kernel hands out to outgoing connections (32768 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    return 32_768


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, chosen between Ray's worker ports and the
    kernel's ephemeral range where there is room: a port the kernel picks itself (``bind(0)``)
    is an ephemeral one, which the dozens of connections a starting Ray opens may take as their
    local port before the server binds it."""
    low, high = RAY_WORKER_PORTS_END, _ephemeral_start()
    if high - low >= 1000:
        rng = random.Random()
        for _ in range(100):
            port = rng.randrange(low, high)
            if _binds(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        got: int = s.getsockname()[1]
        return got
