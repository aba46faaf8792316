"""``free_port`` picks a local server's port (the Serve proxy, a throw-away PostgreSQL) outside
the kernel's ephemeral range, which the connections of a starting Ray may take as their local
ports before the server binds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from genmedia.deployments import local_ports as local


def test_the_port_is_free_and_below_the_ephemeral_range() -> None:
    start = local._ephemeral_start()
    for _ in range(20):
        port = local.free_port()
        assert local.RAY_WORKER_PORTS_END <= port < start
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free right now


def test_without_room_below_the_range_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("20500\t60999\n")
    monkeypatch.setattr(local, "EPHEMERAL_RANGE", narrow)
    assert local._ephemeral_start() == 20500
    assert local.free_port() >= 20500  # bind(0): an ephemeral port
    monkeypatch.setattr(local, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert local._ephemeral_start() == 32768
