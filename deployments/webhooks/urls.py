"""Webhook URL policy: which URLs a completion webhook may be sent to (SSRF guard).

Checked twice on a request's way: at submit, where the gateway answers 422 naming the rule a URL
breaks, and again before every delivery attempt, since DNS may have changed. The check returns the
addresses it approved so that delivery connects to one of them (no second lookup an attacker's DNS
could answer differently). Where webhooks may go is the catalog's ``server.webhooks`` policy
(``models/server_config.py``). Host lookups run on a small pool of their own (``LOOKUP_THREADS``),
never Python's shared default thread pool, and give up after the policy's ``resolve_timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from genmedia.models.server_config import WebhookPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[Any]]  # socket.getaddrinfo or a stand-in

MAX_URL_LENGTH = 2048
LOOKUP_THREADS = 8  # host lookups in flight at once; more wait (within their timeout)
_METADATA = ipaddress.ip_address("169.254.169.254")
_LOOKUPS = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="webhook-dns")


class WebhookUrlError(ValueError):
    """A webhook URL the policy refuses; ``rule`` is one of: url, scheme, userinfo, host, port,
    resolve, public_address."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{message} (rule: {rule})")
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the policy and the addresses it was checked against."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name: the name TLS checks (SNI)
    addresses: tuple[IPAddress, ...]
    host_is_ip: bool


def _non_public(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            why = _non_public(embedded)
            return f"{why}, embedded in an IPv6 address" if why else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip == _METADATA:
        return "link-local (cloud metadata endpoint)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 scope id
    except ValueError:
        return None


def _parse(url: str) -> tuple[str, int, httpx.URL]:
    """(host, port, parsed URL) of a URL of an accepted form; WebhookUrlError naming the rule."""
    if not isinstance(url, str) or not url:
        raise WebhookUrlError("url", "webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError("url", f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise WebhookUrlError("url", "webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise WebhookUrlError("url", f"webhook URL does not parse: {e}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookUrlError(
            "scheme", f"webhook URL scheme must be http or https, not {parts.scheme!r}"
        )
    if "@" in parts.netloc:
        raise WebhookUrlError("userinfo", "webhook URL must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookUrlError("host", "webhook URL has no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise WebhookUrlError("port", "webhook URL port is not a number in 1-65535") from None
    try:
        hx = httpx.URL(url)
    except Exception as e:
        raise WebhookUrlError("host", f"webhook URL host {host!r} is invalid: {e}") from None
    return host, port, hx


def _resolve(host: str, hx: httpx.URL, port: int, resolve: Resolver) -> list[IPAddress]:
    """The distinct addresses a host name resolves to; WebhookUrlError('resolve') for none."""
    try:
        infos = resolve(hx.raw_host.decode("ascii"), port)
    except (OSError, UnicodeError) as e:
        raise WebhookUrlError("resolve", f"webhook host {host!r} does not resolve: {e}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = _ip(str(info[4][0]))
        if ip is not None and ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise WebhookUrlError("resolve", f"webhook host {host!r} resolves to no address")
    return addresses


def _require_public(
    host: str, addresses: list[IPAddress], policy: WebhookPolicy, resolved: bool
) -> None:
    """WebhookUrlError('public_address') for the first non-public address not listed as allowed."""
    nets = policy.allowed_networks()
    for ip in addresses:
        why = _non_public(ip)
        if why and not any(ip.version == n.version and ip in n for n in nets):
            shown = f" resolves to {ip}, which" if resolved else ""
            raise WebhookUrlError(
                "public_address",
                f"webhook host {host!r}{shown} is not a public address ({why}); only public "
                "addresses are allowed unless the operator lists it in allowed_hosts",
            )


def check_url(url: str, policy: WebhookPolicy, resolve: Resolver) -> CheckedUrl:
    """The URL and its approved addresses; WebhookUrlError naming the rule it breaks."""
    host, port, hx = _parse(url)
    literal = _ip(host)
    addresses = [literal] if literal is not None else _resolve(host, hx, port, resolve)
    ascii_host = hx.raw_host.decode("ascii")
    host_allowed = host in policy.allowed_hosts or ascii_host in policy.allowed_hosts
    if not (policy.allow_private or host_allowed):
        _require_public(host, addresses, policy, resolved=literal is None)
    return CheckedUrl(hx, ascii_host, tuple(addresses), host_is_ip=literal is not None)


def bounded_resolver(timeout_s: float, resolve: Resolver = socket.getaddrinfo) -> Resolver:
    """``resolve`` run on the lookup pool, waited for at most ``timeout_s`` (then OSError, which
    the check reports as rule 'resolve'). A lookup that hangs holds one lookup thread, not the
    caller's."""

    def lookup(host: str, port: int) -> list[Any]:
        future = _LOOKUPS.submit(resolve, host, port)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise OSError(f"lookup took longer than {timeout_s:g}s") from None

    return lookup


def validate_webhook_url(url: str, policy: WebhookPolicy, resolve: Resolver | None = None) -> None:
    """Raise WebhookUrlError naming the rule ``url`` breaks under ``policy``.

    ``resolve`` has ``socket.getaddrinfo``'s signature (called as ``resolve(host, port)``); tests
    pass a fake. Without it, ``socket.getaddrinfo`` on the lookup pool within the policy's
    ``resolve_timeout_s``. It blocks: async code calls ``check_url_async`` instead.
    """
    check_url(url, policy, resolve or bounded_resolver(policy.resolve_timeout_s))


async def check_url_async(
    url: str, policy: WebhookPolicy, resolve: Resolver = socket.getaddrinfo
) -> CheckedUrl:
    """``check_url`` without blocking the event loop: the check (and its host lookup) runs on
    the lookup pool; WebhookUrlError('resolve') when it takes longer than the policy's
    ``resolve_timeout_s``."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(
            loop.run_in_executor(_LOOKUPS, check_url, url, policy, resolve),
            policy.resolve_timeout_s,
        )
    except TimeoutError:
        host = urlsplit(url).hostname or url
        raise WebhookUrlError(
            "resolve",
            f"webhook host {host!r} did not resolve within {policy.resolve_timeout_s:g}s",
        ) from None
