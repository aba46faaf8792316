"""Completion webhooks: delivering one event, with retries and backoff.

Last stop of a job: the scheduler sends its event once the job reaches a terminal state
(COMPLETED, FAILED, CANCELLED, EXPIRED). Before every attempt the URL is checked again
(``urls.py``: DNS may have changed); the connection goes to the address that was checked and
redirects are not followed. Each attempt is signed (``signing.py``) when the tenant has a webhook
secret. Receivers dedupe on ``X-Genmedia-Delivery``, which stays the same across the retries of
one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from genmedia.deployments.webhooks.signing import SIGNATURE_HEADER, signature_header
from genmedia.deployments.webhooks.urls import CheckedUrl, Resolver, WebhookUrlError, check_url
from genmedia.models.server_config import WebhookPolicy

EVENT_HEADER = "X-Genmedia-Event"
DELIVERY_HEADER = "X-Genmedia-Delivery"
ATTEMPT_HEADER = "X-Genmedia-Attempt"
DEFAULT_EVENT_TYPE = "job.completed"
USER_AGENT = "genmedia-webhooks/1"


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
class _Try:
    """What one attempt came to: final (a result to return now) or a failure worth retrying."""

    status: int | None  # the receiver's HTTP status; None: no answer or not sent
    error: str | None  # why it failed; None on a 2xx
    final: bool = False  # True: 2xx, a URL the policy refuses, or a status not retried
    retry_after: str | None = None  # the receiver's Retry-After header, as sent


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
    client: httpx.AsyncClient,
    target: CheckedUrl,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
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


def _headers(event_type: str, delivery_id: str, attempt: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery_id,
        ATTEMPT_HEADER: str(attempt),
    }


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    secret: str | None,
    policy: WebhookPolicy,
    clock: Callable[[], float],
    resolve: Resolver,
) -> _Try:
    """One try: check the URL (refused: final, except a host that does not resolve), sign, POST."""
    try:
        target = await asyncio.to_thread(check_url, url, policy, resolve)
    except WebhookUrlError as e:
        error = f"webhook URL rejected ({e.rule}): {e.message}"
        return _Try(None, error, final=e.rule != "resolve")
    if secret:
        headers = {**headers, SIGNATURE_HEADER: signature_header(secret, body, int(clock()))}
    try:
        status, retry_after = await _post(client, target, body, headers, policy.timeout_s)
    except httpx.TimeoutException:
        return _Try(None, f"no answer within {policy.timeout_s:g}s")
    except httpx.TransportError as e:
        return _Try(None, f"connection failed: {type(e).__name__}: {e}".rstrip(": "))
    if 200 <= status < 300:
        return _Try(status, None, final=True)
    error = f"receiver answered {status}"
    if status != 429 and status < 500:
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return _Try(status, error, final=True)
    return _Try(status, error, retry_after=retry_after)


async def deliver(
    url: str,
    event: dict[str, Any],
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
    own_client = client is None
    try:
        body = json.dumps(event, separators=(",", ":")).encode()
        event_type = str(event.get("type") or DEFAULT_EVENT_TYPE)
        if client is None:
            client = httpx.AsyncClient(
                timeout=policy.timeout_s, follow_redirects=False, trust_env=False
            )
        error: str | None = None
        for n in range(policy.max_attempts):
            attempts = n + 1
            status = None
            headers = _headers(event_type, delivery_id, attempts)
            tried = await _attempt(client, url, body, headers, secret, policy, clock, resolve)
            status, error = tried.status, tried.error
            if tried.final:
                return DeliveryResult(error is None, attempts, status, error, delivery_id)
            wait_hint = _retry_after(tried.retry_after, clock()) if status is not None else None
            if attempts < policy.max_attempts:
                await sleep(backoff_delay(n, policy, wait_hint, rng))
        return DeliveryResult(
            False, attempts, status, f"{error}; gave up after {attempts} attempt(s)", delivery_id
        )
    except Exception as e:
        return DeliveryResult(
            False, attempts, status, f"delivery failed: {type(e).__name__}: {e}", delivery_id
        )
    finally:
        if own_client and client is not None:
            # Best effort: the outcome is decided; an error closing this delivery's own client
            # (e.g. a broken connection) must not replace it or escape a function that never raises.
            with contextlib.suppress(Exception):
                await client.aclose()
