"""The gateway's per-tenant guard: a rate limit on every ``/v1`` call and caps on progress
streams.

Second step of every call, right after the key check (``api/deps.py``): the tenant's token
bucket on this gateway replica is charged (a write — POST, PUT, DELETE — costs one token, a read
a fifth of one), and a call over it answers 429 ``rate_limited`` with ``Retry-After``; every
answer carries ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset``. Each
replica holds ``requests_per_minute / gateway_replicas`` of the tenant's rate. Progress streams
count per tenant and per replica (``max_streams_per_tenant``, ``max_streams``) and end after
``stream_max_s``. No FastAPI here.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar

from genmedia.deployments.errors import ApiError
from genmedia.deployments.tenants.ratelimit import RateLimiter, retry_after_header
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.server_config import ServerSettings

WRITE_COST = 1.0
READ_COST = 0.2
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# This request's per-key intake slot (``api/inflight.py``): how to give it back early.
INFLIGHT_SLOT: ContextVar[Callable[[], None] | None] = ContextVar("inflight_slot", default=None)


def leave_intake_slot() -> None:
    """Give back this request's per-key intake slot before it waits for work done elsewhere
    (a sync generate waiting for its result, a long-poll): the slot bounds one key's intake
    work on this replica, not its waiting requests, so a tenant's interactive request never
    queues behind its own sync batch requests that wait for the workers."""
    release = INFLIGHT_SLOT.get()
    if release is not None:
        release()


class TenantGuard:
    """One per gateway replica; ``now`` comes from ``clock`` (monotonic seconds)."""

    def __init__(
        self,
        tenants: Iterable[Tenant],
        server: ServerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        replicas = max(1, server.gateway_replicas)
        self.limits = {t.id: max(1, t.quotas.requests_per_minute // replicas) for t in tenants}
        self.rate = RateLimiter(self.limits)
        self.server = server
        self.clock = clock
        self.streams: dict[str, int] = {}
        self.open_streams = 0

    def charge(self, tenant: Tenant, method: str) -> dict[str, str]:
        """Take the call's tokens; the rate-limit headers of its answer, or ApiError 429."""
        cost = WRITE_COST if method.upper() in WRITES else READ_COST
        limit = self.limits.get(tenant.id)
        if limit is None:  # a tenant added after this replica started: its own bucket
            limit = self.limits[tenant.id] = max(1, tenant.quotas.requests_per_minute)
            self.rate.limits[tenant.id] = limit
        wait = self.rate.try_acquire(tenant.id, self.clock(), cost)
        left = self.rate.remaining(tenant.id)
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(math.floor(left)),
            "x-ratelimit-reset": str(math.ceil((limit - left) * 60.0 / limit)),
        }
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"tenant {tenant.id!r} is over its request rate ({limit} a minute on this "
                "gateway replica; reads cost a fifth of a write)",
                [{"field": "requests_per_minute", "message": "over the rate", "limit": limit}],
                headers={"Retry-After": retry_after_header(wait), **headers},
            )
        return headers

    def check_streams(self, tenant: Tenant) -> None:
        """429 ``too_many_streams`` when ``tenant`` or this replica is at its cap of open
        progress streams (checked before the stream's answer starts)."""
        for count, limit, field in (
            (
                self.streams.get(tenant.id, 0),
                self.server.max_streams_per_tenant,
                "max_streams_per_tenant",
            ),
            (self.open_streams, self.server.max_streams, "max_streams"),
        ):
            if count >= limit:
                raise ApiError(
                    429,
                    "too_many_streams",
                    f"{count} progress streams are open ({field} {limit}); close one or poll "
                    "the status URL",
                    [{"field": field, "message": "too many open streams", "limit": limit}],
                    headers={"Retry-After": "5"},
                )

    @asynccontextmanager
    async def stream_slot(self, tenant: Tenant) -> AsyncIterator[float]:
        """Count one open progress stream of ``tenant`` while the block runs (inside the
        stream, so a stream that never starts holds nothing); yields its deadline on
        ``clock``."""
        self.streams[tenant.id] = self.streams.get(tenant.id, 0) + 1
        self.open_streams += 1
        try:
            yield self.clock() + self.server.stream_max_s
        finally:
            self.open_streams -= 1
            self.streams[tenant.id] -= 1
