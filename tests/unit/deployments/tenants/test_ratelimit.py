"""Per-tenant token buckets and the Retry-After of a refusal."""

from __future__ import annotations

import pytest

from genmedia.deployments.tenants.ratelimit import RateLimiter, retry_after_header
from genmedia.deployments.tenants.schema import parse_tenants
from tests.unit.deployments.tenants.builders import tenant_entry


def test_rate_limiter_burst_refill_and_retry_after():
    rl = RateLimiter({"a": 60, "b": 30})
    assert all(rl.try_acquire("a", 100.0) == 0.0 for _ in range(60))  # burst = capacity
    assert rl.try_acquire("a", 100.0) == pytest.approx(1.0)  # 1 token a second
    assert rl.try_acquire("a", 100.25) == pytest.approx(0.75)
    assert rl.try_acquire("a", 101.0) == 0.0  # refilled one
    assert rl.try_acquire("a", 101.0) == pytest.approx(1.0)
    assert rl.try_acquire("a", 99.0) == pytest.approx(1.0)  # clock going back refills nothing
    assert rl.try_acquire("b", 100.0) == 0.0  # tenants are independent
    for _ in range(29):
        rl.try_acquire("b", 100.0)
    assert rl.try_acquire("b", 100.0) == pytest.approx(2.0)  # 30/min: one token per 2 s
    assert sum(rl.try_acquire("a", 10_000.0) == 0.0 for _ in range(100)) == 60  # capped
    with pytest.raises(KeyError):
        rl.try_acquire("nobody", 0.0)
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_rate_limiter_from_tenants_file():
    tf = parse_tenants({"tenants": [tenant_entry(quotas={"requests_per_minute": 2})]})
    rl = RateLimiter.for_tenants(tf)
    assert [rl.try_acquire("acme", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(30.0)]
