"""One real local Ray cluster + Serve app per test session, shared by the integration tests.

Ray is started with logical GPUs (none exist here) and the embedded default catalog of tiny
models, built into a session temp dir. Everything is shut down at the end of the session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.loadtests.local import ray_stack, tenant_record, tenants_file
from tests.integration.browser import browser, screenshot, screenshots_dir  # noqa: F401
from tests.unit.deployments.store.conftest import PG_PASSWORD, pg_bin, pg_server  # noqa: F401

API_KEY = "gm_0123abcd_" + "k" * 43  # tenant "dev": generous quotas, webhook secret
OTHER_KEY = "gm_4567abcd_" + "o" * 43  # tenant "other"
TINY_KEY = "gm_89abcdef_" + "t" * 43  # tenant "tiny": one queued job, 4 requests a minute
CAPPED_KEY = "gm_cafe0001_" + "c" * 43  # tenant "capped": one job running at a time
DURABLE_KEY = "gm_d0ab1e00_" + "d" * 43  # tenant "durable": the scheduler takeover test only
WEBHOOK_SECRET = "whsec-test-0123456789"


def make_tenants() -> TenantsFile:
    tiny = {"max_concurrent_jobs": 2, "requests_per_minute": 4, "max_queued_jobs": 1}
    return tenants_file(
        [
            tenant_record("dev", API_KEY, admin=True, webhook_secret=WEBHOOK_SECRET),
            tenant_record("other", OTHER_KEY),
            tenant_record("tiny", TINY_KEY, allowed_classes=["batch"], quotas=tiny),
            tenant_record(
                "capped",
                CAPPED_KEY,
                quotas={"max_concurrent_jobs": 1, "requests_per_minute": 100_000},
            ),
            tenant_record(
                "durable",
                DURABLE_KEY,
                quotas={"max_concurrent_jobs": 100, "requests_per_minute": 100_000},
            ),
        ],
        "<test tenants>",
    )


@pytest.fixture(scope="session")
def genmedia_home(tmp_path_factory) -> Path:
    home = Path(os.environ.get("GENMEDIA_TEST_HOME") or tmp_path_factory.mktemp("genmedia-home"))
    os.environ["GENMEDIA_HOME"] = str(home)
    return home


PG_PASSWORD_ENV = "GENMEDIA_TEST_PG_PASSWORD"
PG_DATABASE = "genmedia_stack"


def job_store_settings(request, tmp_path_factory) -> dict:
    """``server.scheduler`` fields of the shared stack's job store (see ``serve_app``)."""
    choice = os.environ.get("GENMEDIA_TEST_JOB_STORE") or ("postgresql" if pg_bin() else "sqlite")
    if choice == "sqlite":
        return {"job_store": str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite")}
    assert choice == "postgresql", f"GENMEDIA_TEST_JOB_STORE: sqlite or postgresql, not {choice!r}"
    server = request.getfixturevalue("pg_server")
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {PG_DATABASE}")
    admin.dispose()
    os.environ[PG_PASSWORD_ENV] = PG_PASSWORD  # tests that open the store read it too
    url = f"postgresql://{server.user}@{server.host}:{server.port}/{PG_DATABASE}"
    return {"job_store": url, "job_store_password_env": PG_PASSWORD_ENV}


@pytest.fixture(scope="session")
def serve_app(genmedia_home, tmp_path_factory, request):
    """The default catalog served on a real local Ray Serve; yields (base_url, catalog)."""
    from genmedia.deployments.cli.preflight import check_weights
    from genmedia.models.catalog import load_catalog

    catalog = load_catalog()
    # One more model on the sd15 worker that no test runs before the deadline test: its
    # service time is unknown, so a deadline is admitted and can expire in the queue.
    fresh = catalog.model("sd15-tiny").model_copy(
        update={"id": "sd15-tiny-fresh", "gpu_fraction": 0.05}
    )
    workers = {
        **catalog.workers,
        "sd15": catalog.worker("sd15").model_copy(update={"max_loaded_models": 3}),
    }
    catalog = catalog.model_copy(update={"models": [*catalog.models, fresh], "workers": workers})
    outputs = tmp_path_factory.mktemp("outputs")
    server = catalog.server.model_copy(
        update={"storage": catalog.server.storage.model_copy(update={"dir": str(outputs)})}
    )
    # The job store: PostgreSQL when its binaries are here (``.ci/run`` installs them), else
    # SQLite; GENMEDIA_TEST_JOB_STORE=sqlite|postgresql chooses. One standby scheduler either way.
    store = {"standby": 1, **job_store_settings(request, tmp_path_factory)}
    server = server.model_copy(update={"scheduler": server.scheduler.model_copy(update=store)})
    catalog = catalog.model_copy(update={"server": server})
    assert check_weights(catalog, build_tiny=True) == []
    webhooks = server.webhooks.model_copy(
        update={"allowed_hosts": ["127.0.0.1"], "backoff_base_s": 0.1, "backoff_max_s": 0.5}
    )
    # LoRA sources fetched from a local HTTP server (test_lora_urls.py)
    inputs = server.inputs.model_copy(update={"allowed_http_hosts": ["127.0.0.1"]})
    server = server.model_copy(update={"webhooks": webhooks, "inputs": inputs})
    catalog = catalog.model_copy(update={"server": server})
    tenants = make_tenants()
    from genmedia.deployments.serve.local import run_app

    env = {"GENMEDIA_HOME": str(genmedia_home), PG_PASSWORD_ENV: PG_PASSWORD}
    with ray_stack(num_cpus=4, num_gpus=1, logging_level=logging.WARNING, env_vars=env) as url:
        run_app(catalog, tenants)
        yield url, catalog


@pytest.fixture(scope="session")
def base_url(serve_app) -> str:
    return serve_app[0]


@pytest.fixture
def http(base_url):
    with httpx.Client(
        base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        yield client
