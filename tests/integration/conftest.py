"""One real local Ray cluster + Serve app per test session, shared by the integration tests.

Ray is started with logical GPUs (none exist here) and the embedded default catalog of tiny
models, built into a session temp dir. Everything is shut down at the end of the session.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

API_KEY = "gm_0123abcd_" + "k" * 43  # the development tenant's key in these tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def genmedia_home(tmp_path_factory) -> Path:
    home = Path(os.environ.get("GENMEDIA_TEST_HOME") or tmp_path_factory.mktemp("genmedia-home"))
    os.environ["GENMEDIA_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def serve_app(genmedia_home, tmp_path_factory):
    """The default catalog served on a real local Ray Serve; yields (base_url, catalog)."""
    import ray
    from ray import serve

    from genmedia.deployments.app import APP_NAME, build_app
    from genmedia.deployments.preflight import check_weights
    from genmedia.deployments.tenants import development_tenants
    from genmedia.models.catalog import load_catalog

    catalog = load_catalog()
    outputs = tmp_path_factory.mktemp("outputs")
    server = catalog.server.model_copy(
        update={"storage": catalog.server.storage.model_copy(update={"dir": str(outputs)})}
    )
    jobs = tmp_path_factory.mktemp("jobs") / "jobs.sqlite"
    server = server.model_copy(
        update={"scheduler": server.scheduler.model_copy(update={"job_store": str(jobs)})}
    )
    catalog = catalog.model_copy(update={"server": server})
    assert check_weights(catalog, build_tiny=True) == []
    os.environ["GENMEDIA_DEV_API_KEY"] = API_KEY
    tenants, _ = development_tenants()
    port = free_port()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `genmedia serve` does
    ray.init(
        num_cpus=4,
        num_gpus=1,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={"env_vars": {"GENMEDIA_HOME": str(genmedia_home)}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(catalog, tenants), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", catalog
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def base_url(serve_app) -> str:
    return serve_app[0]


@pytest.fixture
def http(base_url):
    with httpx.Client(
        base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        yield client
