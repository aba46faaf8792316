"""A real genmedia gateway (the FastAPI app over ``GatewayService``) on a local port, without
Ray: the scheduler behind it (``fakes.StreamingScheduler``) completes jobs at once, streams a few
status events, can be made slow or refuse a tenant with 429. The replay talks real HTTP to it."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.loadtests.local import free_port
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.api.test_api import KEY, OTHER_KEY, tenants_file
from tests.unit.deployments.fakes import StreamingScheduler

__all__ = ["KEY", "OTHER_KEY"]


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
