"""The HTTP layer without Ray: bad input gets a clear error, good input stored and described.

The scheduler here completes every job at once with fixed pixels; the real scheduler and workers
are exercised by the integration tests on a real Ray Serve.
"""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import key_record
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.fakes import FakeScheduler

KEY = "gm_0123abcd_" + "k" * 43
OTHER_KEY = "gm_89abcdef_" + "o" * 43


def tenants_file():
    return parse_tenants(
        {
            "tenants": [
                {
                    "id": "dev",
                    "api_keys": [key_record(KEY).model_dump(mode="json")],
                    "quotas": {"requests_per_minute": 1000},
                },
                {
                    "id": "other",
                    "api_keys": [key_record(OTHER_KEY).model_dump(mode="json")],
                    "allowed_classes": ["batch"],
                    "default_class": "batch",
                    "allowed_models": ["sdxl-tiny"],
                },
            ]
        }
    )


@pytest.fixture
def storage(tmp_path):
    return LocalDirStorage(tmp_path)


@pytest.fixture
def scheduler(storage):
    return FakeScheduler(storage)


def make_client(scheduler, storage, key=KEY):
    service = GatewayService(
        load_catalog(), scheduler, Authenticator(tenants_file()), storage=storage
    )
    return TestClient(build_api(service), headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def client(scheduler, storage):
    return make_client(scheduler, storage)


def post(client, model="sd15-tiny", **body):
    return client.post(f"/v1/models/{model}/generate", json={"prompt": "a fox", **body})


def fields(resp) -> dict:
    return {f["field"]: f for f in resp.json()["error"]["fields"]}


def test_generate_answers_with_urls_and_base64(client, scheduler):
    r = post(client, seed=41, num_images=2, return_base64=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 41 and body["status"] == "COMPLETED"
    assert [img["seed"] for img in body["images"]] == [41, 42]
    png = client.get(body["images"][0]["url"].replace("http://testserver", ""))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == base64.b64decode(body["images"][0]["base64"])
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    assert scheduler.subs[0].priority == "interactive"  # sync default


def test_queue_submit_answers_202_with_urls(client, scheduler):
    r = client.post(
        "/v1/queue/models/sd15-tiny",
        json={"prompt": "a fox"},
        headers={"Idempotency-Key": "k-1", "X-Deadline-Seconds": "30"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    rid = body["request_id"]
    for name in ("status_url", "result_url", "cancel_url", "stream_url"):
        assert rid in body[name]
    assert scheduler.subs[0].idempotency_key == "k-1" and scheduler.subs[0].deadline_s == 30
    assert client.get(f"/v1/queue/requests/{rid}/status").json()["status"] == "COMPLETED"
    assert client.get(f"/v1/queue/requests/{rid}").json()["images"]
    r = client.put(f"/v1/queue/requests/{rid}/cancel")
    assert r.status_code == 400 and r.json()["error"]["type"] == "already_completed"


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Idempotency-Key": "has spaces"}, "Idempotency-Key"),
        ({"Idempotency-Key": "x" * 129}, "Idempotency-Key"),
        ({"X-Deadline-Seconds": "soon"}, "X-Deadline-Seconds"),
        ({"X-Deadline-Seconds": "-5"}, "X-Deadline-Seconds"),
    ],
)
def test_bad_queue_headers_are_422(client, scheduler, headers, field):
    r = client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x"}, headers=headers)
    assert r.status_code == 422 and fields(r)[field]
    assert not scheduler.subs


def test_invalid_class_and_webhook_rules(client, scheduler):
    r = client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x", "priority": "urgent"})
    assert r.status_code == 422 and "priority" in fields(r)
    r = client.post(
        "/v1/queue/models/sd15-tiny", json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}
    )
    assert r.status_code == 422 and fields(r)["webhook_url"]["limit"] == "public_address"
    r = client.post(
        "/v1/queue/models/sd15-tiny", json={"prompt": "x", "webhook_url": "ftp://example.com/hook"}
    )
    assert r.status_code == 422 and fields(r)["webhook_url"]["limit"] == "scheme"
    r = post(client, webhook_url="https://example.com/hook")  # sync: queue API only
    assert r.status_code == 422 and "webhook_url" in fields(r)
    assert not scheduler.subs


def test_rejection_is_429_with_retry_after(storage):
    reject = {
        "status": 429,
        "type": "tenant_queue_full",
        "message": "full",
        "retry_after_s": 2.5,
        "field": None,
    }
    r = post(make_client(FakeScheduler(storage, reject=reject), storage))
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "tenant_queue_full"


def test_auth_401_and_403(scheduler, storage):
    anon = TestClient(
        build_api(
            GatewayService(
                load_catalog(), scheduler, Authenticator(tenants_file()), storage=storage
            )
        )
    )
    assert anon.get("/v1/models").status_code == 401
    r = anon.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    other = make_client(scheduler, storage, key=OTHER_KEY)
    assert [m["id"] for m in other.get("/v1/models").json()["models"]] == ["sdxl-tiny"]
    r = other.post("/v1/queue/models/sd15-tiny", json={"prompt": "x"})
    assert r.status_code == 403 and fields(r)["model_id"]
    r = other.post("/v1/queue/models/sdxl-tiny", json={"prompt": "x", "priority": "interactive"})
    assert r.status_code == 403 and fields(r)["priority_class"]
    r = other.post("/v1/models/sdxl-tiny/generate", json={"prompt": "x"})  # sync = interactive
    assert r.status_code == 403
    assert other.post("/v1/queue/models/sdxl-tiny", json={"prompt": "x"}).status_code == 202
    assert scheduler.subs[-1].priority == "batch"


def test_tenants_never_see_each_others_jobs_or_files(client, scheduler, storage):
    body = post(client, seed=1).json()
    other = make_client(scheduler, storage, key=OTHER_KEY)
    rid = body["request_id"]
    for path in (f"/v1/queue/requests/{rid}/status", f"/v1/queue/requests/{rid}"):
        r = other.get(path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    assert other.put(f"/v1/queue/requests/{rid}/cancel").status_code == 404
    assert other.get("/v1/files/" + body["images"][0]["path"]).status_code == 404
    assert client.get("/v1/files/" + body["images"][0]["path"]).status_code == 200


def test_models_list_has_schema(client):
    models = client.get("/v1/models").json()["models"]
    by_id = {m["id"]: m for m in models}
    assert by_id["flux-tiny"]["parameters"]["width"]["multipleOf"] == 16
    assert client.get("/v1/models/sdxl-tiny").json()["family"] == "sdxl"


def test_unknown_model_is_404_naming_it(client, scheduler):
    r = post(client, model="nope")
    assert r.status_code == 404
    assert "nope" in r.json()["error"]["message"]
    assert client.get("/v1/models/nope").status_code == 404
    assert not scheduler.subs


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"width": 4096}, "width", 512),
        ({"height": 36}, "height", 8),
        ({"num_inference_steps": 1000}, "num_inference_steps", 50),
        ({"guidance_scale": 99}, "guidance_scale", 20.0),
        ({"num_images": 10}, "num_images", 4),
        ({"seed": -1}, "seed", 0),
    ],
)
def test_out_of_bounds_is_422_naming_field_and_limit(client, scheduler, body, field, limit):
    r = post(client, **body)
    assert r.status_code == 422
    assert fields(r)[field]["limit"] == limit
    assert field in r.json()["error"]["message"]
    assert not scheduler.subs


def test_wrong_types_and_unknown_fields(client):
    r = post(client, width="wide")
    assert r.status_code == 422 and "width" in fields(r)
    r = post(client, steps=4)  # misspelt field: refused, not silently ignored
    assert r.status_code == 422 and fields(r)["steps"]["message"] == "unknown field"
    r = client.post("/v1/models/sd15-tiny/generate", json={"prompt": ""})
    assert r.status_code == 422 and "prompt" in fields(r)
    r = client.post("/v1/models/sd15-tiny/generate", json={})
    assert r.status_code == 422 and fields(r)["prompt"]["message"] == "field required"
    r = client.post("/v1/models/sd15-tiny/generate", json=["a list"])
    assert r.status_code == 422


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/models/sd15-tiny/generate",
        content=b'{"prompt": "a',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "malformed_json"


LIMIT = load_catalog().server.max_body_bytes


def test_body_over_limit_is_413(client):
    big = "x" * (LIMIT + 1)
    r = post(client, negative_prompt=big)
    assert r.status_code == 413
    assert fields(r)["body"]["limit"] == LIMIT


def test_chunked_body_over_limit_is_413(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(LIMIT // 4096 + 1):
            yield b"x" * 4096
        yield b'"}'

    r = client.post(
        "/v1/models/sd15-tiny/generate",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_file_paths_cannot_escape(client):
    assert client.get("/v1/files/../../etc/passwd").status_code in (400, 404)
    assert client.get("/v1/files/dev/%2e%2e/%2e%2e/x").status_code in (400, 404)
    assert client.get("/v1/files/dev/2026/none.png").status_code == 404


def test_scheduler_down_is_503(storage):
    r = post(make_client(FakeScheduler(storage, fail=ConnectionError("gone")), storage))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_health_readiness_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client, seed=1)
    assert client.get("/metrics").status_code == 403  # admin keys only: test_metrics_access.py
    assert client.get("/openapi.json").json()["info"]["title"] == "genmedia"
