"""A real genmedia gateway (the FastAPI app over ``GatewayService``) on a local port, without
Ray: the scheduler behind it completes jobs at once (``test_api.FakeScheduler``), streams a few
status events, can be made slow or refuse a tenant with 429. The replay talks real HTTP to it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.config import Authenticator
from genmedia.loadtests.local import free_port
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.api.test_api import KEY, OTHER_KEY, FakeScheduler, tenants_file

__all__ = ["KEY", "OTHER_KEY"]


class StreamingScheduler(FakeScheduler):
    """Adds the status stream (queued → step 1 → the end), a delay and refusals per tenant."""

    def __init__(self, storage):
        super().__init__(storage)
        self.delay_s = 0.0
        self.refuse: set[str] = set()
        self.cancelled: list[str] = []

    async def submit(self, sub):
        if sub.tenant in self.refuse:
            return {
                "rejected": {
                    "status": 429,
                    "type": "quota_exceeded",
                    "message": "too many queued jobs",
                    "retry_after_s": 1.0,
                }
            }
        return await super().submit(sub)

    async def watch(self, job_id, tenant):
        final = await self.status(job_id, tenant)
        base = {k: v for k, v in final.items() if k != "result"}
        yield {**base, "status": "IN_QUEUE", "queue_position": 0}
        yield {**base, "status": "IN_PROGRESS", "progress": {"step": 0, "total": 4}}
        await asyncio.sleep(self.delay_s / 2)
        yield {**base, "status": "IN_PROGRESS", "progress": {"step": 1, "total": 4}}
        await asyncio.sleep(self.delay_s / 2)
        yield final

    async def cancel(self, job_id, tenant):
        self.cancelled.append(job_id)
        return await super().cancel(job_id, tenant)


@pytest.fixture
def gateway(tmp_path):
    """(base URL, scheduler) of a gateway served by uvicorn in a thread."""
    storage = LocalDirStorage(tmp_path / "outputs")
    scheduler = StreamingScheduler(storage)
    service = GatewayService(
        load_catalog(), scheduler, Authenticator(tenants_file()), storage=storage
    )
    port = free_port()
    config = uvicorn.Config(build_api(service), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test gateway did not start"
    try:
        yield f"http://127.0.0.1:{port}", scheduler
    finally:
        server.should_exit = True
        thread.join(10)
