"""Storage bounds over HTTP: quotas, the upload rate, re-encoding, no bytes left by a refused
request, and a full disk (507 for uploads, 503 for submits, no job created)."""

from __future__ import annotations

import base64
import errno
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from genmedia.deployments.api.app import build_api
from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.protocol import Rejection
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.deployments.tenants.auth import Authenticator
from genmedia.deployments.tenants.keys import key_record
from genmedia.deployments.tenants.schema import parse_tenants
from genmedia.models.catalog import load_catalog
from tests.unit.deployments.fakes import FakeScheduler

KEY = "gm_0123abcd_" + "k" * 43


def png(w=16, h=16, text: int = 0) -> bytes:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("comment", "x" * text)
    buf = io.BytesIO()
    noise = np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def client_for(storage, scheduler=None, **quotas) -> tuple[TestClient, FakeScheduler]:
    scheduler = scheduler or FakeScheduler(storage)
    tenants = parse_tenants(
        {
            "tenants": [
                {
                    "id": "dev",
                    "api_keys": [key_record(KEY).model_dump(mode="json")],
                    "quotas": {"requests_per_minute": 1000, **quotas},
                }
            ]
        }
    )
    service = GatewayService(load_catalog(), scheduler, Authenticator(tenants), storage=storage)
    client = TestClient(build_api(service), headers={"Authorization": f"Bearer {KEY}"})
    return client, scheduler


def upload(client, data: bytes, ctype="image/png"):
    return client.post("/v1/files", content=data, headers={"Content-Type": ctype})


def submit(client, image: str, **body):
    return client.post("/v1/queue/models/sd15-tiny", json={"prompt": "x", "image": image, **body})


def error(r) -> tuple[str, dict]:
    e = r.json()["error"]
    return e["type"], e["fields"][0]


def stored(storage, cls: str) -> list[str]:
    return [o.key for o in storage.list_files("dev/") if f"/{cls}/" in o.key]


@pytest.fixture
def storage(tmp_path):
    return LocalDirStorage(tmp_path)


def test_a_png_with_a_15_mb_text_chunk_is_stored_tiny(storage):
    client, _ = client_for(storage)
    data = png(1, 1, text=15_000_000)
    assert len(data) > 15_000_000
    r = upload(client, data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["bytes"] < 1000 and body["content_type"] == "image/png"
    kept = storage.get(body["path"])
    assert kept is not None and len(kept) == body["bytes"]
    assert Image.open(io.BytesIO(kept)).info == {}


def test_inline_images_are_stored_rewritten_too(storage):
    client, _ = client_for(storage)
    r = submit(client, base64.b64encode(png(32, 32, text=100_000)).decode())
    assert r.status_code == 202, r.text
    (key,) = stored(storage, "inputs")
    assert len(storage.get(key)) < 10_000


def test_upload_files_quota_is_429_naming_it(storage):
    client, _ = client_for(storage, max_stored_files=1)
    assert upload(client, png()).status_code == 201
    r = upload(client, png())
    assert r.status_code == 429
    kind, field = error(r)
    assert kind == "storage_quota_exceeded"
    assert field["field"] == "quotas.max_stored_files" and field["limit"] == 1
    assert "quotas.max_stored_files is 1" in r.json()["error"]["message"]
    assert len(stored(storage, "uploads")) == 1


def test_upload_bytes_quota_is_429_naming_it(storage):
    client, _ = client_for(storage, max_stored_bytes=1024)
    r = upload(client, png(64, 64))  # noise: about 12 KB as PNG
    assert r.status_code == 429
    kind, field = error(r)
    assert (kind, field["field"], field["limit"]) == (
        "storage_quota_exceeded",
        "quotas.max_stored_bytes",
        1024,
    )
    assert stored(storage, "uploads") == []


def test_inline_image_counts_against_the_quota_at_submit(storage):
    client, scheduler = client_for(storage, max_stored_files=1)
    assert upload(client, png()).status_code == 201
    r = submit(client, base64.b64encode(png(32, 32)).decode())
    assert r.status_code == 429 and error(r)[1]["field"] == "quotas.max_stored_files"
    assert scheduler.subs == [] and stored(storage, "inputs") == []


def test_uploads_are_rate_limited_with_retry_after(storage):
    client, _ = client_for(storage, uploads_per_minute=2)
    assert [upload(client, png()).status_code for _ in range(2)] == [201, 201]
    r = upload(client, png())
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    kind, field = error(r)
    assert kind == "rate_limited" and field["field"] == "quotas.uploads_per_minute"
    assert field["limit"] == 2


def test_a_refused_submit_leaves_no_input_bytes(storage):
    scheduler = FakeScheduler(storage, reject=Rejection(429, "rate_limited", "slow down", 1.0))
    client, _ = client_for(storage, scheduler)
    image = base64.b64encode(png(32, 32)).decode()
    r = submit(client, image)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
    r = client.post("/v1/models/sd15-tiny/generate", json={"prompt": "x", "image": image})
    assert r.status_code == 429
    assert stored(storage, "inputs") == []
    scheduler.reject = None
    assert submit(client, image).status_code == 202
    assert len(stored(storage, "inputs")) == 1  # an accepted job keeps its input


def test_an_invalid_submit_leaves_no_input_bytes(storage):
    client, scheduler = client_for(storage)
    r = submit(client, base64.b64encode(png(32, 32)).decode(), num_inference_steps=100_000)
    assert r.status_code == 422
    assert stored(storage, "inputs") == [] and scheduler.subs == []


class FullDisk(LocalDirStorage):
    """Every write fails as a full volume does."""

    def put(self, key, data, content_type):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_507_for_uploads(tmp_path):
    client, _ = client_for(FullDisk(tmp_path))
    r = upload(client, png())
    assert r.status_code == 507
    assert r.json()["error"]["type"] == "insufficient_storage"
    assert "storage is full" in r.json()["error"]["message"]


def test_a_full_disk_is_503_for_submits_and_creates_no_job(tmp_path):
    client, scheduler = client_for(FullDisk(tmp_path))
    r = submit(client, base64.b64encode(png(32, 32)).decode())
    assert r.status_code == 503 and r.headers["Retry-After"] == "60"
    assert r.json()["error"]["type"] == "storage_full"
    assert scheduler.subs == []
