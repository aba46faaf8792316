"""The HTTP layer without Ray: bad input gets a clear error, good input stored and described.

The worker client here returns fixed pixels; the real workers are exercised by the integration
tests on a real Ray Serve.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genmedia.deployments.api import build_api
from genmedia.deployments.batching import BatchInfo
from genmedia.deployments.service import GatewayService, WorkerResult, WorkerUnavailable
from genmedia.deployments.storage import LocalDirStorage
from genmedia.models.catalog import load_catalog


class PixelWorkers:
    """Returns a deterministic image per seed; records the jobs it saw."""

    def __init__(self, fail: Exception | None = None):
        self.jobs = []
        self.fail = fail

    async def generate(self, family, job):
        if self.fail:
            raise self.fail
        self.jobs.append(job)
        p = job.params
        images = [
            np.full((p.height, p.width, 3), (job.seed + i) % 256, np.uint8)
            for i in range(job.num_images)
        ]
        return WorkerResult(images, BatchInfo(1, job.num_images, 1, 0.01, 0.02), "r:1", "r", "cpu")

    async def ready(self, family):
        return {"loaded": ["x"]}


@pytest.fixture
def workers():
    return PixelWorkers()


@pytest.fixture
def client(tmp_path, workers):
    service = GatewayService(load_catalog(), workers, storage=LocalDirStorage(tmp_path))
    return TestClient(build_api(service))


def post(client, model="sd15-tiny", **body):
    return client.post(f"/v1/models/{model}/generate", json={"prompt": "a fox", **body})


def fields(resp) -> dict:
    return {f["field"]: f for f in resp.json()["error"]["fields"]}


def test_generate_stores_png_and_sidecar(client, workers):
    r = post(client, seed=41, num_images=2, return_base64=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 41 and body["status"] == "COMPLETED"
    assert [img["seed"] for img in body["images"]] == [41, 42]
    assert set(body["timings"]) == {"queue_s", "compute_s", "store_s", "total_s"}
    png = client.get(body["images"][0]["url"].replace("http://testserver", ""))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == base64.b64decode(body["images"][0]["base64"])
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    sidecar = client.get("/v1/files/" + body["images"][1]["path"].replace(".png", ".json"))
    assert sidecar.json()["seed"] == 42 and sidecar.json()["model"] == "sd15-tiny"
    assert sidecar.json()["parameters"]["prompt"] == "a fox"


def test_models_list_has_schema(client):
    models = client.get("/v1/models").json()["models"]
    by_id = {m["id"]: m for m in models}
    assert by_id["flux-tiny"]["parameters"]["width"]["multipleOf"] == 16
    assert client.get("/v1/models/sdxl-tiny").json()["family"] == "sdxl"


def test_unknown_model_is_404_naming_it(client, workers):
    r = post(client, model="nope")
    assert r.status_code == 404
    assert "nope" in r.json()["error"]["message"]
    assert client.get("/v1/models/nope").status_code == 404
    assert not workers.jobs


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
def test_out_of_bounds_is_422_naming_field_and_limit(client, workers, body, field, limit):
    r = post(client, **body)
    assert r.status_code == 422
    assert fields(r)[field]["limit"] == limit
    assert field in r.json()["error"]["message"]
    assert not workers.jobs


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


def test_body_over_limit_is_413(client):
    big = "x" * 2_000_000
    r = post(client, negative_prompt=big)
    assert r.status_code == 413
    assert fields(r)["body"]["limit"] == 1_048_576


def test_chunked_body_over_limit_is_413(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(300):
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
    assert client.get("/v1/files/a/%2e%2e/%2e%2e/x").status_code in (400, 404)
    assert client.get("/v1/files/2026/none.png").status_code == 404


def test_worker_failures_are_clear(tmp_path):
    for exc, status in ((WorkerUnavailable("down"), 503), (RuntimeError("oom"), 500)):
        service = GatewayService(
            load_catalog(), PixelWorkers(fail=exc), storage=LocalDirStorage(tmp_path)
        )
        r = post(TestClient(build_api(service)))
        assert r.status_code == status
        assert r.json()["error"]["message"]


def test_health_readiness_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client, seed=1)
    text = client.get("/metrics").text
    assert 'genmedia_requests_total{model="sd15-tiny",status="ok"} 1.0' in text
    assert "genmedia_batch_size_bucket" in text
    assert client.get("/openapi.json").json()["info"]["title"] == "genmedia"
