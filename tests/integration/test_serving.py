"""The serving path end to end on a real local Ray Serve, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def generate(http, model, **body):
    body.setdefault("prompt", "a lighthouse at dusk")
    return http.post(f"/v1/models/{model}/generate", json=body)


@pytest.mark.parametrize("model", ["sd15-tiny", "sd15-tiny-turbo", "sdxl-tiny", "flux-tiny"])
def test_every_family_generates(http, model):
    r = generate(
        http,
        model,
        seed=5,
        width=64,
        height=48 if model != "flux-tiny" else 32,
        num_images=2,
        return_base64=True,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and len(body["images"]) == 2
    for img in body["images"]:
        png = http.get(img["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert hashlib.sha256(png.content).hexdigest() == img["sha256"]
        im = Image.open(io.BytesIO(png.content))
        assert im.size == (64, 48 if model != "flux-tiny" else 32) and im.mode == "RGB"
    # the image URL is signed for the image's path; the sidecar is read with the key
    sidecar_url = body["images"][1]["url"].split("?", 1)[0].replace(".png", ".json")
    sidecar = http.get(sidecar_url).json()
    assert sidecar["model"] == model and sidecar["seed"] == 6
    assert body["timings"]["compute_s"] > 0


def test_same_seed_same_bytes_and_other_seed_differs(http):
    a = generate(http, "sdxl-tiny", seed=123).json()["images"][0]["sha256"]
    b = generate(http, "sdxl-tiny", seed=123).json()["images"][0]["sha256"]
    c = generate(http, "sdxl-tiny", seed=124).json()["images"][0]["sha256"]
    assert a == b != c


def test_models_listing(http):
    models = {m["id"]: m for m in http.get("/v1/models").json()["models"]}
    assert set(models) >= {"sd15-tiny", "sd15-tiny-turbo", "sdxl-tiny", "flux-tiny"}
    p = models["sd15-tiny"]["parameters"]
    assert p["width"]["minimum"] == 32 and p["width"]["multipleOf"] == 8


def fill_sd15_slots(http) -> list[str]:
    """Two long calls fill the sd15 worker's slots (one computing, one staged), so what is sent
    next waits in the scheduler's queue. Returns their ids (cancel them when done)."""
    blockers = [
        http.post(
            "/v1/queue/models/sd15-tiny",
            json={
                "prompt": "b",
                "num_inference_steps": 30,
                "width": 256,
                "height": 256,
                "priority": "interactive",
            },
        ).json()["request_id"]
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all(
        http.get(f"/v1/queue/requests/{b}/status").json()["status"] == "IN_PROGRESS"
        for b in blockers
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return blockers


def test_compatible_requests_share_one_pipeline_call(base_url, http):
    """Requests queued together leave the queue in batches of compatible ones only: 4 with the
    same parameters share one call, one with other steps runs in a call of its own."""
    blockers = fill_sd15_slots(http)

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=AUTH) as client:

            async def go(**body):
                r = await client.post("/v1/models/sd15-tiny/generate", json={"prompt": "x", **body})
                assert r.status_code == 200, r.text
                return r.json()

            odd = asyncio.create_task(go(num_inference_steps=3, seed=1))
            await asyncio.sleep(0.05)
            same = [asyncio.create_task(go(num_inference_steps=2, seed=s)) for s in range(4)]
            return await odd, [await t for t in same]

    odd, same = asyncio.run(main())
    for b in blockers:
        http.put(f"/v1/queue/requests/{b}/cancel")
    batch_ids = {r["batch"]["id"] for r in same}
    assert len(batch_ids) == 1, [r["batch"] for r in same]
    assert same[0]["batch"]["images"] == 4 and same[0]["batch"]["requests"] == 4
    assert odd["batch"]["id"] not in batch_ids and odd["batch"]["images"] == 1


def _pixels(http, result) -> np.ndarray:
    r = http.get(result["images"][0]["url"])
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)


def test_batched_output_equals_unbatched(base_url, http):
    """A request's image depends on its seed, not on the batch it shared. CPU matmul kernels
    are chosen by shape, so a batch of three may round differently in the last bit than a batch
    of one: the image may differ from the lone one by one 8-bit level, where another seed's
    image differs everywhere."""
    alone = generate(http, "sd15-tiny", seed=77, num_inference_steps=2).json()

    blockers = fill_sd15_slots(http)  # the three requests below then leave the queue together

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=AUTH) as client:
            reqs = [
                client.post(
                    "/v1/models/sd15-tiny/generate",
                    json={"prompt": "a lighthouse at dusk", "seed": s, "num_inference_steps": 2},
                )
                for s in (77, 78, 79)
            ]
            out = await asyncio.gather(*reqs)
            return [r.json() for r in out]

    together = asyncio.run(main())
    for b in blockers:
        http.put(f"/v1/queue/requests/{b}/cancel")
    assert together[0]["batch"]["images"] == 3
    lone, batched, other = (_pixels(http, r) for r in (alone, together[0], together[1]))
    assert np.abs(batched - lone).max() <= 1
    assert np.abs(other - lone).mean() > 10 * max(np.abs(batched - lone).mean(), 0.1)


def test_all_families_packed_on_one_logical_gpu(serve_app):
    from ray import serve

    from genmedia.deployments.serve.app import APP_NAME, plan_workers, worker_name

    _, catalog = serve_app
    plans = plan_workers(catalog)
    assert sum(p.num_gpus for p in plans) <= 1.0
    for plan in plans:
        info = serve.get_deployment_handle(worker_name(plan.family), APP_NAME).info.remote()
        info = info.result(timeout_s=30)
        assert info["gpu_ids"] == ["0"], info  # the one logical GPU
        assert info["resources"]["GPU"] == pytest.approx(plan.num_gpus)
        assert info["torch_threads"] == plan.torch_threads == 1
        assert set(info["loaded"]) == set(plan.model_ids)  # several models, one worker
    gateway = serve.get_deployment_handle("gateway", APP_NAME).info.remote().result(timeout_s=30)
    assert "GPU" not in gateway["resources"] and gateway["gpu_ids"] == []


def test_health_readiness_and_metrics(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    generate(http, "flux-tiny", seed=1)
    text = http.get("/metrics").text
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    key = (("model", "flux-tiny"), ("priority", "interactive"), ("status", "COMPLETED"))
    assert samples[("genmedia_requests_total", key)] >= 1
    assert samples[("genmedia_queue_depth", (("model", "flux-tiny"), ("priority", "batch")))] == 0
    # per-tenant series are summed under tenant "-" (server.metrics.tenant_labels is off)
    assert samples[("genmedia_tenant_images_total", (("model", "flux-tiny"), ("tenant", "-")))] >= 1
    assert 'tenant="dev"' not in text
    assert (
        samples[("genmedia_submitted_total", (("model", "flux-tiny"), ("priority", "interactive")))]
        >= 1
    )
    assert any(name == "genmedia_compute_seconds_count" for name, _ in samples)
    assert any(name == "genmedia_batch_size_bucket" for name, _ in samples)
    assert http.get("/docs").status_code == 200
    assert "/v1/models/{model_id}/generate" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"width": 2048}, 422, "width"),
        ({"width": 60}, 422, "width"),
        ({"num_inference_steps": 0}, 422, "num_inference_steps"),
        ({"guidance_scale": 1e9}, 422, "guidance_scale"),
        ({"num_images": 99}, 422, "num_images"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": 42}, 422, "prompt"),
        ({"seed": "abc"}, 422, "seed"),
        ({"sampler": "euler"}, 422, "sampler"),
    ],
)
def test_bad_input_over_real_http(http, body, status, field):
    r = generate(http, "sd15-tiny", **body)
    assert r.status_code == status, r.text
    assert field in {f["field"] for f in r.json()["error"]["fields"]}


def test_every_v1_call_needs_a_key(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as anon:
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/models/sd15-tiny/generate"),
            ("GET", "/v1/usage"),
            ("GET", "/v1/queue/requests/x/status"),
        ):
            r = anon.request(method, path, json={"prompt": "x"})
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = anon.get("/v1/models", headers={"Authorization": "Bearer gm_00000000_" + "x" * 40})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
        assert anon.get("/healthz").status_code == 200  # health and metrics stay open


def test_unknown_model_malformed_json_and_oversized_body(http, serve_app):
    r = generate(http, "no-such-model")
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]["message"]
    r = http.post(
        "/v1/models/sd15-tiny/generate",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "malformed_json"
    r = http.post(
        "/v1/models/sd15-tiny/generate",
        content=json.dumps({"prompt": "x" * (serve_app[1].server.max_body_bytes + 1)}).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert http.get("/v1/files/../../etc/passwd").status_code in (400, 404)


def test_status_command_shows_deployments(serve_app):
    import ray

    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address}
    out = subprocess.run(
        [sys.executable, "-m", "genmedia.deployments.cli.main", "status", "--address", address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    for name in ("gateway", "scheduler", "worker-sd15", "worker-sdxl", "worker-flux"):
        assert name in out.stdout
    assert "sd15-tiny-turbo" in out.stdout
