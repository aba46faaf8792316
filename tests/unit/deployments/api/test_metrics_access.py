"""Secure defaults at the gateway without Ray (issue 15, item 6): ``/metrics`` needs an admin
tenant's key unless ``server.metrics.public`` and shows no tenant ids unless
``server.metrics.tenant_labels``; ``/v1/loras`` shows adapter sources to admin tenants only;
a submit with an idempotency key carries the hash of its canonical body, and the scheduler's 409
``idempotency_key_reused`` reaches the caller."""

from __future__ import annotations

from fastapi.testclient import TestClient

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.metrics import SchedulerMetrics
from genmedia.deployments.protocol import AdapterInfo, AdapterRecord, Rejection
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import key_record
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import Catalog, load_catalog
from tests.unit.deployments.fakes import FakeScheduler

KEY = "gm_0123abcd_" + "k" * 43  # tenant "dev", not an admin
ADMIN_KEY = "gm_fedcba98_" + "a" * 43  # tenant "ops", an admin


def _tenants():
    return parse_tenants(
        {
            "tenants": [
                {"id": "dev", "api_keys": [key_record(KEY).model_dump(mode="json")]},
                {
                    "id": "ops",
                    "admin": True,
                    "api_keys": [key_record(ADMIN_KEY).model_dump(mode="json")],
                },
            ]
        }
    )


class AdapterScheduler(FakeScheduler):
    async def adapters(self) -> list[AdapterRecord]:
        info = AdapterInfo("/var/cache/x.safetensors", 10, "ab", 4, 8)
        return [
            AdapterRecord(
                "style",
                "sd15-tiny",
                "s3://private-bucket/style.safetensors",
                "",
                "api",
                "ready",
                info=info,
            ),
            AdapterRecord(
                "broken",
                "sd15-tiny",
                "/srv/secret/broken.safetensors",
                "",
                "api",
                "failed",
                error="cannot read /srv/secret/broken.safetensors",
            ),
        ]


def _client(tmp_path, key: str | None, catalog: Catalog | None = None, scheduler=None):
    storage = LocalDirStorage(tmp_path)
    service = GatewayService(
        catalog or load_catalog(),
        scheduler or AdapterScheduler(storage),
        Authenticator(_tenants()),
        storage=storage,
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(build_api(service), headers=headers)


def _public_metrics_catalog() -> Catalog:
    catalog = load_catalog()
    metrics = catalog.server.metrics.model_copy(update={"public": True})
    return catalog.model_copy(
        update={"server": catalog.server.model_copy(update={"metrics": metrics})}
    )


def test_metrics_need_an_admin_key_unless_public(tmp_path):
    anonymous = _client(tmp_path, None).get("/metrics")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "unauthorized"
    assert _client(tmp_path, "gm_00000000_" + "x" * 43).get("/metrics").status_code == 401
    tenant = _client(tmp_path, KEY).get("/metrics")
    assert tenant.status_code == 403 and "admin" in tenant.json()["error"]["message"]
    admin = _client(tmp_path, ADMIN_KEY)
    admin.post("/v1/models/sd15-tiny/generate", json={"prompt": "a fox", "seed": 1})
    text = admin.get("/metrics").text
    assert 'genmedia_submitted_total{model="sd15-tiny",priority="interactive"} 1.0' in text
    assert "genmedia_queue_depth 0.0" in text  # the scheduler's part
    public = _client(tmp_path, None, _public_metrics_catalog()).get("/metrics")
    assert public.status_code == 200 and "genmedia_queue_depth" in public.text


def test_per_tenant_series_name_no_tenant_unless_configured():
    hidden = SchedulerMetrics()
    hidden.tenant_images.labels("acme", "m").inc(2)
    hidden.tenant_images.labels("globex", "m").inc(3)
    hidden.tenant_jobs.labels("acme", "m", "COMPLETED").inc()
    text = hidden.render().decode()
    assert 'genmedia_tenant_images_total{model="m",tenant="-"} 5.0' in text
    assert "acme" not in text and "globex" not in text
    shown = SchedulerMetrics(tenant_labels=True)
    shown.tenant_images.labels("acme", "m").inc(2)
    assert 'tenant="acme"' in shown.render().decode()


def test_adapter_sources_are_for_admin_tenants_only(tmp_path):
    loras = _client(tmp_path, KEY).get("/v1/loras").json()["loras"]
    assert [a["id"] for a in loras] == ["style", "broken"]
    assert all("source" not in a and "path" not in a for a in loras)
    assert loras[1]["error"] == "the adapter failed its check"
    assert "secret" not in str(loras) and "private-bucket" not in str(loras)
    admin = _client(tmp_path, ADMIN_KEY).get("/v1/loras").json()["loras"]
    assert admin[0]["source"] == "s3://private-bucket/style.safetensors"
    assert "/srv/secret" in admin[1]["error"] and "path" not in admin[0]


def test_a_keyed_submit_carries_the_hash_of_its_canonical_body(tmp_path):
    scheduler = AdapterScheduler(LocalDirStorage(tmp_path))
    client = _client(tmp_path, KEY, scheduler=scheduler)

    def submit(body: str, key: str | None = "k-1", model: str = "sd15-tiny") -> str | None:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        r = client.post(f"/v1/queue/models/{model}", content=body, headers=headers)
        assert r.status_code == 202, r.text
        return scheduler.subs[-1].body_sha256

    first = submit('{"prompt": "a fox", "seed": 7}')
    assert first is not None and len(first) == 64
    # key order, spacing and fields sent at their defaults do not change the body
    assert submit('{"seed":7,   "prompt":"a fox"}') == first
    assert submit('{"seed": 7, "prompt": "a fox", "num_images": null}') == first
    assert submit('{"prompt": "a fox", "seed": 8}') != first
    assert submit('{"prompt": "a fox", "seed": 7}', model="sdxl-tiny") != first
    assert submit('{"prompt": "a fox", "seed": 7}', key=None) is None  # no key, no hash


def test_the_schedulers_409_for_a_reused_key_reaches_the_caller(tmp_path):
    storage = LocalDirStorage(tmp_path)
    refused = Rejection(
        409,
        "idempotency_key_reused",
        "Idempotency-Key 'k-1' was used with a different request body (job abc)",
        None,
        "Idempotency-Key",
    )
    client = _client(tmp_path, KEY, scheduler=FakeScheduler(storage, reject=refused))
    r = client.post(
        "/v1/queue/models/sd15-tiny", json={"prompt": "a fox"}, headers={"Idempotency-Key": "k-1"}
    )
    assert r.status_code == 409 and "retry-after" not in r.headers
    error = r.json()["error"]
    assert error["type"] == "idempotency_key_reused"
    assert error["fields"][0]["field"] == "Idempotency-Key"
