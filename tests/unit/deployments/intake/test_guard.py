"""The gateway's tenant guard without Ray: every /v1 call charged (reads a fifth of a write),
429 with Retry-After and x-ratelimit-* headers over the rate, the rate split across gateway
replicas, caps on open progress streams, and a stream's lifetime."""

from __future__ import annotations

import asyncio

import pytest

from genmedia.deployments.errors import ApiError
from genmedia.deployments.intake.guard import TenantGuard
from genmedia.deployments.tenants.schema import Tenant
from genmedia.models.server_config import ServerSettings
from tests.unit.deployments.api.test_api import make_client


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def tenant(tid: str = "t", rpm: int = 60) -> Tenant:
    return Tenant.model_validate({"id": tid, "quotas": {"requests_per_minute": rpm}})


def test_writes_cost_a_token_and_reads_a_fifth():
    clock = Clock()
    guard = TenantGuard([tenant(rpm=2)], ServerSettings(), clock)
    t = tenant(rpm=2)
    assert guard.charge(t, "POST")["x-ratelimit-remaining"] == "1"
    for _ in range(5):
        guard.charge(t, "GET")
    with pytest.raises(ApiError) as e:
        guard.charge(t, "GET")
    err = e.value
    assert err.status == 429 and err.type == "rate_limited"
    assert err.fields[0]["limit"] == 2 and err.headers is not None
    assert int(err.headers["Retry-After"]) >= 1 and err.headers["x-ratelimit-remaining"] == "0"
    clock.t += 6.0  # 2 a minute: a fifth of a token after 6 s
    guard.charge(t, "GET")


def test_each_gateway_replica_holds_its_share_of_the_rate():
    server = ServerSettings(gateway_replicas=4)
    guard = TenantGuard([tenant(rpm=100)], server, Clock())
    assert guard.charge(tenant(rpm=100), "POST")["x-ratelimit-limit"] == "25"


def test_stream_caps_per_tenant_and_per_replica_and_lifetime():
    clock = Clock()
    server = ServerSettings(max_streams=3, max_streams_per_tenant=2, stream_max_s=10.0)
    a, b = tenant("a"), tenant("b")
    guard = TenantGuard([a, b], server, clock)

    async def go() -> None:
        async with guard.stream_slot(a) as deadline, guard.stream_slot(a):
            assert deadline == 10.0
            with pytest.raises(ApiError) as e:
                guard.check_streams(a)
            assert e.value.type == "too_many_streams" and e.value.fields[0]["limit"] == 2
            guard.check_streams(b)
            async with guard.stream_slot(b):
                with pytest.raises(ApiError) as e:
                    guard.check_streams(b)
                assert e.value.fields[0]["field"] == "max_streams"
        guard.check_streams(a)  # closed streams free their slots
        assert guard.open_streams == 0

    asyncio.run(go())


def test_every_v1_answer_carries_the_rate_limit_headers_errors_too(tmp_path):
    from genmedia.deployments.store.storage import LocalDirStorage
    from tests.unit.deployments.fakes import FakeScheduler

    storage = LocalDirStorage(tmp_path)
    client = make_client(FakeScheduler(storage), storage)
    ok = client.get("/v1/models")
    missing = client.get("/v1/queue/requests/nope/status")
    assert ok.status_code == 200 and missing.status_code == 404
    for r in (ok, missing):
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(r.headers)
