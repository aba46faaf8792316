"""``AsyncClient``: the same calls, retries, stream and subscribe as ``Client``, on asyncio."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from genmedia.client import AsyncClient, InvalidRequest, JobFailed, RateLimited
from tests.unit.client.fakes import BASE, PNG, FakeGateway, error, result_body, sse, status_body

SUBMIT = "/v1/queue/models/sd15-tiny"
STREAM = "/v1/queue/requests/r1/stream"
RESULT = "/v1/queue/requests/r1"


def make(gw: FakeGateway, **kw) -> tuple[AsyncClient, list[float]]:
    client = AsyncClient(BASE, "gm_key", transport=gw.transport(), **kw)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    client._sleep = sleep
    return client, sleeps


def running(step: int):
    return status_body("r1", "IN_PROGRESS", progress={"step": step, "total": 2})


def test_subscribe_with_an_async_callback_retries_and_downloads(tmp_path):
    body = sse(
        ("status", running(1)), ("status", running(2)), ("status", status_body("r1", "COMPLETED"))
    )
    gw = FakeGateway().on(
        "POST",
        SUBMIT,
        error(429, "rate_limited", headers={"Retry-After": "1"}),
        httpx.Response(202, json=status_body("r1")),
    )
    gw.on("GET", STREAM, httpx.Response(200, content=body))
    gw.on("GET", RESULT, httpx.Response(200, json=result_body("r1")))
    gw.on("GET", "/v1/files/dev/2026/01/01/r1/0.png", httpx.Response(200, content=PNG))
    steps: list[int] = []

    async def on_update(event) -> None:
        await asyncio.sleep(0)
        if event.progress:
            steps.append(event.progress.step)

    async def main():
        client, sleeps = make(gw)
        async with client:
            result = await client.subscribe("sd15-tiny", {"prompt": "x"}, on_update=on_update)
            paths = await client.save_all(result, tmp_path)
        return result, paths, sleeps

    result, paths, sleeps = asyncio.run(main())
    assert result.request_id == "r1" and steps == [1, 2] and sleeps == [1.0]
    assert paths[0].read_bytes() == PNG


def test_errors_and_job_failures_raise_the_same_classes():
    fields = [{"field": "num_inference_steps", "message": "too many", "limit": 100}]
    failed = status_body("r1", "FAILED", error={"type": "worker_lost", "message": "gone"})
    gw = FakeGateway().on("POST", SUBMIT, error(422, "invalid_request", "bad", fields))
    gw.on("GET", RESULT, httpx.Response(200, json=failed))
    gw.on(
        "POST",
        "/v1/queue/models/sd15-tiny/batch",
        error(429, "rate_limited", headers={"Retry-After": "999"}),
    )
    keep = {"type": "keepalive", **running(1)}
    gw.on("GET", STREAM, httpx.Response(200, content=sse(("keepalive", keep), ("status", failed))))

    async def main():
        client, _ = make(gw)
        async with client:
            with pytest.raises(InvalidRequest) as e:
                await client.submit("sd15-tiny", {"prompt": "x", "num_inference_steps": 500})
            assert e.value.field == "num_inference_steps" and e.value.limit == 100
            with pytest.raises(JobFailed) as f:
                await client.result("r1")
            assert f.value.type == "worker_lost"
            with pytest.raises(RateLimited):
                await client.submit_many("sd15-tiny", [{"prompt": "x"}])
            events = [e async for e in client.stream("r1", keepalives=True)]
            assert [type(e).__name__ for e in events] == ["KeepaliveEvent", "StatusEvent"]
            with pytest.raises(JobFailed):
                await client.wait("r1")

    asyncio.run(main())
