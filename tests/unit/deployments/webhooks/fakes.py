"""A getaddrinfo stand-in and its table: URL policy and delivery tests resolve no real names."""

from __future__ import annotations

import socket


def fake_resolver(table: dict[str, list[str]], calls: list | None = None):
    """getaddrinfo stand-in: host -> addresses; unknown hosts fail like NXDOMAIN."""

    def resolve(host, port, *args, **kwargs):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in table[host]:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, port, 0, 0) if fam == socket.AF_INET6 else (addr, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return resolve


DNS = fake_resolver(
    {
        "hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
        "localhost": ["127.0.0.1", "::1"],
        "internal.example.com": ["10.0.0.5"],
        "mixed.example.com": ["93.184.216.34", "192.168.1.20"],
        "meta.example.com": ["169.254.169.254"],
        "v6local.example.com": ["fd12:3456::1"],
    }
)
