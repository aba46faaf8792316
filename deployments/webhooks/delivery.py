"""Webhook delivery: one attempt at one event, the backoff between attempts, and the caps.

Last stop of a job: the scheduler writes a job's event to the job store's outbox in the same
transaction as the state change, then its delivery loop (``serve/scheduler.py``) sends due rows
with ``attempt`` under ``DeliveryCaps`` and writes back the outcome (delivered, failed, or the
next attempt time from ``backoff_delay``); ``deliver`` runs the same attempts in a loop in memory.

Before every attempt the URL is checked again (``urls.py``: DNS may have changed, the lookup has
its own timeout and threads); the connection goes to the address that was checked and redirects
are not followed. The whole attempt (lookup, connect, send, the answer's status line) has one
deadline, the policy's ``timeout_s``. Each attempt carries the Standard Webhooks headers
(``signing.py``): ``webhook-id`` is the delivery id, the same across retries and restarts, so
receivers dedupe on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from genmedia.deployments.webhooks import signing
from genmedia.deployments.webhooks.urls import (
    CheckedUrl,
    Resolver,
    WebhookUrlError,
    check_url_async,
)
from genmedia.models.server_config import WebhookPolicy

USER_AGENT = "genmedia-webhooks/2"


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


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to.

    ``final``: no retry helps (a 2xx, a URL the policy refuses, a status not retried);
    ``retry_after_s``: the receiver's Retry-After in seconds, when it sent one.
    """

    ok: bool
    status: int | None  # the receiver's HTTP status; None: no answer or not sent
    error: str | None  # why it failed; None on a 2xx
    final: bool = False
    retry_after_s: float | None = None


def encode_event(event: dict[str, Any]) -> bytes:
    """The body of an event: compact JSON (the bytes the signature covers)."""
    return json.dumps(event, separators=(",", ":")).encode()


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


def make_client(policy: WebhookPolicy) -> httpx.AsyncClient:
    """The HTTP client deliveries share: no proxies from the environment, no redirects."""
    limits = httpx.Limits(max_connections=policy.max_concurrent)
    return httpx.AsyncClient(
        timeout=policy.timeout_s, follow_redirects=False, trust_env=False, limits=limits
    )


async def _post(
    client: httpx.AsyncClient, target: CheckedUrl, body: bytes, headers: dict[str, str]
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
        follow_redirects=False,
        extensions=extensions,
    ) as response:
        return response.status_code, response.headers.get("retry-after")  # body never read


async def _try(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    delivery_id: str,
    secret: str | None,
    policy: WebhookPolicy,
    clock: Callable[[], float],
    resolve: Resolver,
) -> Attempt:
    try:
        target = await check_url_async(url, policy, resolve)
    except WebhookUrlError as e:
        error = f"webhook URL rejected ({e.rule}): {e.message}"
        return Attempt(False, None, error, final=e.rule != "resolve")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signing.headers(secret, delivery_id, int(clock()), body),
    }
    try:
        status, retry_after = await _post(client, target, body, headers)
    except httpx.TimeoutException:
        return Attempt(False, None, f"no answer within {policy.timeout_s:g}s")
    except httpx.TransportError as e:
        return Attempt(False, None, f"connection failed: {type(e).__name__}: {e}".rstrip(": "))
    if 200 <= status < 300:
        return Attempt(True, status, None, final=True)
    error = f"receiver answered {status}"
    if status != 429 and status < 500:
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return Attempt(False, status, error, final=True)
    return Attempt(False, status, error, retry_after_s=_retry_after(retry_after, clock()))


async def attempt(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    delivery_id: str,
    secret: str | None,
    policy: WebhookPolicy,
    *,
    clock: Callable[[], float] = time.time,
    resolve: Resolver = socket.getaddrinfo,
) -> Attempt:
    """One try within the policy's ``timeout_s`` in total: check the URL (refused: final, except
    a host that does not resolve), sign, POST, read the status line. Never raises, except
    cancellation."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _try(client, url, body, delivery_id, secret, policy, clock, resolve)
    except TimeoutError:
        return Attempt(False, None, f"attempt took longer than {policy.timeout_s:g}s")
    except Exception as e:  # a broken event or client: report, never raise
        return Attempt(False, None, f"delivery failed: {type(e).__name__}: {e}", final=True)


async def deliver(
    url: str,
    event: dict[str, Any],
    secret: str | None,
    policy: WebhookPolicy,
    *,
    delivery_id: str | None = None,
    client: httpx.AsyncClient | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    resolve: Resolver = socket.getaddrinfo,
    rng: Callable[[], float] = random.random,
) -> DeliveryResult:
    """POST ``event`` as JSON to ``url`` until a 2xx, up to ``max_attempts`` with backoff, in
    memory (the scheduler keeps the same schedule in the outbox instead); never raises.

    Retried: connection errors, timeouts, 429, 5xx and a host that does not resolve; not retried:
    other statuses (redirects included) and a URL the policy refuses (checked before every try).
    Unsigned when ``secret`` is None. Without ``client`` one is made for this delivery.
    Cancellation (shutdown) propagates.
    """
    delivery_id = delivery_id or signing.new_delivery_id()
    try:
        body = encode_event(event)
    except (TypeError, ValueError) as e:
        return DeliveryResult(False, 0, None, f"event is not JSON: {e}", delivery_id)
    own = client is None
    client = client or make_client(policy)
    tried = Attempt(False, None, None)
    attempts = 0
    try:
        for n in range(policy.max_attempts):
            attempts = n + 1
            tried = await attempt(
                client, url, body, delivery_id, secret, policy, clock=clock, resolve=resolve
            )
            if tried.final:
                return DeliveryResult(tried.ok, attempts, tried.status, tried.error, delivery_id)
            if attempts < policy.max_attempts:
                await sleep(backoff_delay(n, policy, tried.retry_after_s, rng))
        error = f"{tried.error}; gave up after {attempts} attempt(s)"
        return DeliveryResult(False, attempts, tried.status, error, delivery_id)
    finally:
        if own:
            # the outcome is decided; an error closing this delivery's client must not replace it
            with contextlib.suppress(Exception):
                await client.aclose()


class DeliveryCaps:
    """Counting semaphores of deliveries in flight: at most ``total`` at once, at most
    ``per_tenant`` for one tenant. Non-blocking: the delivery loop starts a delivery only when
    ``try_acquire`` succeeds and leaves the other due events in the outbox for later, so one
    tenant's backlog neither waits in memory nor holds the others back."""

    def __init__(self, total: int, per_tenant: int):
        self.total = total
        self.per_tenant = per_tenant
        self._in_flight: dict[str, int] = {}

    def try_acquire(self, tenant: str) -> bool:
        """Take a slot for ``tenant`` when both caps leave room; False otherwise."""
        n = self._in_flight.get(tenant, 0)
        if n >= self.per_tenant or self.in_flight() >= self.total:
            return False
        self._in_flight[tenant] = n + 1
        return True

    def release(self, tenant: str) -> None:
        n = self._in_flight.get(tenant, 0) - 1
        if n > 0:
            self._in_flight[tenant] = n
        else:
            self._in_flight.pop(tenant, None)

    def full(self) -> bool:
        return self.in_flight() >= self.total

    def full_tenants(self) -> list[str]:
        """Tenants at their cap (their due events are left for later)."""
        return [t for t, n in self._in_flight.items() if n >= self.per_tenant]

    def in_flight(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return self._in_flight.get(tenant, 0)
        return sum(self._in_flight.values())
