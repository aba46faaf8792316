"""Completion webhooks: URL policy, HMAC signatures, delivery with retries.

Last stop of a job: the scheduler sends its event once the job reaches a terminal state
(COMPLETED, FAILED, CANCELLED, EXPIRED). The URL is checked at submit (422 naming the rule) and
again before every attempt, since DNS may have changed; the connection goes to the address that was
checked (no second lookup an attacker's DNS could answer differently), redirects are not followed.

Receivers verify ``X-Genmedia-Signature: t=<unix ts>,v1=<hex>``: HMAC-SHA256 with the tenant's
webhook secret over ``"<ts>." + body`` (see ``verify``), and dedupe on ``X-Genmedia-Delivery``,
which stays the same across the retries of one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import ipaddress
import json
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list]

SIGNATURE_HEADER = "X-Genmedia-Signature"
EVENT_HEADER = "X-Genmedia-Event"
DELIVERY_HEADER = "X-Genmedia-Delivery"
ATTEMPT_HEADER = "X-Genmedia-Attempt"
DEFAULT_EVENT_TYPE = "job.completed"
MAX_URL_LENGTH = 2048
USER_AGENT = "genmedia-webhooks/1"

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_METADATA = ipaddress.ip_address("169.254.169.254")


class WebhookPolicy(BaseModel):
    """Where webhooks may go and how hard delivery tries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_private: bool = Field(
        default=False,
        description="Allow URLs resolving to any non-public address (loopback, private, "
        "link-local, ...); development clusters only.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Exceptions to the public-address rule: exact host names (every address they "
        "resolve to is allowed) or IP addresses / CIDRs (e.g. '10.1.0.0/16', '127.0.0.1').",
    )
    timeout_s: float = Field(
        default=10.0, gt=0.0, le=300.0, description="Timeout of one attempt (connect and answer)."
    )
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per event, the first one included."
    )
    backoff_base_s: float = Field(
        default=1.0,
        ge=0.0,
        le=3600.0,
        description="Wait before the 2nd attempt; doubles per attempt (base * 2^n).",
    )
    backoff_max_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86_400.0,
        description="Longest wait between attempts; a receiver's Retry-After above it is ignored.",
    )
    jitter: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Random share taken off each backoff wait (wait in [(1-jitter)*d, d]) so "
        "retries of many events do not arrive together.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            e = entry.strip().lower().rstrip(".")
            try:
                ipaddress.ip_network(e, strict=False)
            except ValueError:
                if not _HOSTNAME_RE.match(e):
                    raise ValueError(
                        f"{entry!r} is neither a host name nor an IP address / CIDR"
                    ) from None
            out.append(e)
        return out

    @model_validator(mode="after")
    def _backoff_ordered(self) -> WebhookPolicy:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) is below backoff_base_s "
                f"({self.backoff_base_s:g})"
            )
        return self

    def allowed_networks(self) -> list[IPNetwork]:
        nets = []
        for e in self.allowed_hosts:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(e, strict=False))
        return nets


class WebhookUrlError(ValueError):
    """A webhook URL the policy refuses; ``rule`` is one of: url, scheme, userinfo, host, port,
    resolve, public_address."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{message} (rule: {rule})")
        self.rule = rule
        self.message = message


# -- URL policy --------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class _Target:
    """A URL that passed the policy and the addresses it was checked against."""

    url: httpx.URL
    host: str
    addresses: tuple[IPAddress, ...]
    host_is_ip: bool


def _check(url: str, policy: WebhookPolicy, resolve: Resolver) -> _Target:
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
    literal = _ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = resolve(hx.raw_host.decode("ascii"), port)
        except (OSError, UnicodeError) as e:
            raise WebhookUrlError(
                "resolve", f"webhook host {host!r} does not resolve: {e}"
            ) from None
        addresses = []
        for info in infos:
            ip = _ip(str(info[4][0]))
            if ip is not None and ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise WebhookUrlError("resolve", f"webhook host {host!r} resolves to no address")
    ascii_host = hx.raw_host.decode("ascii")
    host_allowed = host in policy.allowed_hosts or ascii_host in policy.allowed_hosts
    if not (policy.allow_private or host_allowed):
        nets = policy.allowed_networks()
        for ip in addresses:
            why = _non_public(ip)
            if why and not any(ip.version == n.version and ip in n for n in nets):
                shown = "" if literal is not None else f" resolves to {ip}, which"
                raise WebhookUrlError(
                    "public_address",
                    f"webhook host {host!r}{shown} is not a public address ({why}); only public "
                    "addresses are allowed unless the operator lists it in allowed_hosts",
                )
    return _Target(hx, ascii_host, tuple(addresses), host_is_ip=literal is not None)


def validate_webhook_url(
    url: str, policy: WebhookPolicy, resolve: Resolver = socket.getaddrinfo
) -> None:
    """Raise WebhookUrlError naming the rule ``url`` breaks under ``policy``.

    ``resolve`` has ``socket.getaddrinfo``'s signature (called as ``resolve(host, port)``); tests
    pass a fake. It blocks: call it from a thread (``asyncio.to_thread``) in async code.
    """
    _check(url, policy, resolve)


# -- signatures --------------------------------------------------------------------------------
def sign(secret: str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 with ``secret`` over ``f"{timestamp}."`` + ``body``."""
    msg = f"{int(timestamp)}.".encode() + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Genmedia-Signature value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},v1={sign(secret, body, timestamp)}"


def verify(
    secret: str, body: bytes, header: str | None, now: float, tolerance_s: float = 300
) -> bool:
    """Whether an X-Genmedia-Signature ``header`` signs ``body`` with ``secret``, made within
    ``tolerance_s`` of ``now`` (replay guard). Any v1 may match (secret rotation). Never raises."""
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).encode()
    return any(hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates)


# -- delivery ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryResult:
    """How delivering one event went.

    ``attempts`` counts the tries made, a try stopped by the URL check included; ``status_code``
    is the HTTP status of the last try (None when it got no answer); ``error`` says why it failed.
    """

    ok: bool
    attempts: int
    status_code: int | None
    error: str | None
    delivery_id: str = ""


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    policy: WebhookPolicy,
    retry_after_s: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed try number ``attempt`` (0-based): the receiver's Retry-After
    when given and within backoff_max_s, else min(max, base * 2^attempt) less up to ``jitter``."""
    cap = policy.backoff_max_s
    if retry_after_s is not None and 0.0 <= retry_after_s <= cap:
        return retry_after_s
    d = min(cap, policy.backoff_base_s * 2.0 ** min(attempt, 64))
    return d * (1.0 - policy.jitter * rng())


async def _post(
    client: httpx.AsyncClient, target: _Target, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str | None]:
    pinned = target.url.copy_with(host=str(target.addresses[0]))
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https" and not target.host_is_ip:
        extensions["sni_hostname"] = target.host  # TLS checks the name, TCP goes to the address
    async with client.stream(
        "POST",
        pinned,
        content=body,
        headers={**headers, "Host": target.url.netloc.decode("ascii")},
        timeout=timeout,
        follow_redirects=False,
        extensions=extensions,
    ) as response:
        return response.status_code, response.headers.get("retry-after")  # body never read


async def deliver(
    url: str,
    event: dict,
    secret: str | None,
    policy: WebhookPolicy,
    *,
    client: httpx.AsyncClient | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    resolve: Resolver = socket.getaddrinfo,
    rng: Callable[[], float] = random.random,
) -> DeliveryResult:
    """POST ``event`` as JSON to ``url`` until a 2xx, retrying with backoff; never raises.

    Retried: connection errors, timeouts, 429, 5xx and a host that does not resolve; not retried:
    other statuses (redirects included) and a URL the policy refuses (checked before every try).
    Unsigned when ``secret`` is None. The event's ``type`` key (default 'job.completed') goes to
    X-Genmedia-Event. Without ``client`` one is made for this delivery (no proxies from the
    environment). Cancellation (shutdown) propagates.
    """
    delivery_id = str(uuid.uuid4())
    attempts = 0
    status: int | None = None
    error: str | None = None
    own_client = client is None
    try:
        body = json.dumps(event, separators=(",", ":")).encode()
        event_type = str(event.get("type") or DEFAULT_EVENT_TYPE)
        if client is None:
            client = httpx.AsyncClient(
                timeout=policy.timeout_s, follow_redirects=False, trust_env=False
            )
        for n in range(policy.max_attempts):
            attempts = n + 1
            status, retry_after = None, None
            try:
                target = await asyncio.to_thread(_check, url, policy, resolve)
            except WebhookUrlError as e:
                error = f"webhook URL rejected ({e.rule}): {e.message}"
                if e.rule != "resolve":
                    return DeliveryResult(False, attempts, None, error, delivery_id)
            else:
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    EVENT_HEADER: event_type,
                    DELIVERY_HEADER: delivery_id,
                    ATTEMPT_HEADER: str(attempts),
                }
                if secret:
                    headers[SIGNATURE_HEADER] = signature_header(secret, body, int(clock()))
                try:
                    status, retry_after_raw = await _post(
                        client, target, body, headers, policy.timeout_s
                    )
                except httpx.TimeoutException:
                    error = f"no answer within {policy.timeout_s:g}s"
                except httpx.TransportError as e:
                    error = f"connection failed: {type(e).__name__}: {e}".rstrip(": ")
                else:
                    if 200 <= status < 300:
                        return DeliveryResult(True, attempts, status, None, delivery_id)
                    error = f"receiver answered {status}"
                    if status != 429 and status < 500:
                        if 300 <= status < 400:
                            error += " (redirects are not followed)"
                        return DeliveryResult(False, attempts, status, error, delivery_id)
                    retry_after = _retry_after(retry_after_raw, clock())
            if attempts < policy.max_attempts:
                await sleep(backoff_delay(n, policy, retry_after, rng))
        return DeliveryResult(
            False, attempts, status, f"{error}; gave up after {attempts} attempt(s)", delivery_id
        )
    except Exception as e:
        return DeliveryResult(
            False, attempts, status, f"delivery failed: {type(e).__name__}: {e}", delivery_id
        )
    finally:
        if own_client and client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
