"""Per-tenant rate limits: a token bucket per tenant, and the Retry-After of a refusal.

On a request's way: every ``/v1`` call takes tokens from its tenant's bucket at the gateway
(``intake/guard.py``: a write costs one, a read a fifth of one; 429 ``rate_limited`` with
``Retry-After`` and ``x-ratelimit-*`` headers), and the scheduler's admission takes one for every
submit call (a bulk submit counts once) against the cluster-wide bucket
(``scheduler/admission.py``). The simulator runs the same limiter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from genmedia.deployments.tenants.schema import TenantsFile


class RateLimiter:
    """Token bucket per tenant: capacity = requests_per_minute, refilled rpm/60 tokens a second.

    Pure (the caller passes ``now``, any monotonic seconds) and not thread-safe: one per event
    loop. The limit holds per limiter: the scheduler (one active replica) holds the cluster's;
    one per gateway replica would allow rpm x replicas.
    """

    def __init__(self, limits: Mapping[str, int]):
        self.limits = dict(limits)
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    @classmethod
    def for_tenants(cls, tenants_file: TenantsFile) -> RateLimiter:
        return cls({t.id: t.quotas.requests_per_minute for t in tenants_file.tenants})

    def try_acquire(self, tenant_id: str, now: float, cost: float = 1.0) -> float:
        """0.0 when a request is admitted (``cost`` tokens taken), else seconds until they are
        available.

        KeyError for a tenant the limiter was not built with.
        """
        rpm = self.limits[tenant_id]
        rate = rpm / 60.0
        tokens, last = self._buckets.get(tenant_id, (float(rpm), now))
        if now > last:
            tokens = min(float(rpm), tokens + (now - last) * rate)
            last = now
        if tokens >= cost:
            self._buckets[tenant_id] = (tokens - cost, last)
            return 0.0
        self._buckets[tenant_id] = (tokens, last)
        return (cost - tokens) / rate

    def remaining(self, tenant_id: str) -> float:
        """Tokens left in the tenant's bucket at its last call (full before any)."""
        bucket = self._buckets.get(tenant_id)
        return float(self.limits[tenant_id]) if bucket is None else bucket[0]


def retry_after_header(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1) for a wait in seconds."""
    return str(max(1, math.ceil(seconds)))
