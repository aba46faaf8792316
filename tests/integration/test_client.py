"""``genmedia.client`` and ``genmedia run`` against the real local stack: sync and queue calls,
the async client, subscribe with progress, cancel, errors with fields and limits, upload and
image-to-image, the bulk route."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from typer.testing import CliRunner

from genmedia.client import (
    AsyncClient,
    AuthenticationError,
    BadRequest,
    Client,
    InvalidRequest,
    JobCancelled,
    NotFound,
    StreamEvent,
)
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture
def client(base_url):
    with Client(base_url, API_KEY, timeout=120) as c:
        yield c


def test_run_submit_status_result_and_download(client, tmp_path):
    result = client.run("sd15-tiny", {"prompt": "a lighthouse", "seed": 11, **SMALL})
    assert result.status == "COMPLETED" and result.seed == 11
    out = result.outputs[0]
    assert (out.width, out.height, out.content_type) == (64, 64, "image/png")
    assert client.download(out).startswith(PNG_MAGIC)
    assert result.timings is not None and result.timings.compute_s

    handle = client.submit("sd15-tiny", {"prompt": "a lighthouse", "seed": 11, **SMALL})
    assert handle.created and handle.request_id in (handle.status_url or "")
    again = client.wait(handle, timeout=300)
    assert client.status(handle).status == "COMPLETED"
    assert again.outputs[0].sha256 == out.sha256  # same model, parameters and seed
    paths = client.save_all(client.result(handle.request_id), tmp_path)
    assert paths[0].name == f"{handle.request_id}-0.png"
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_subscribe_sees_step_progress(client):
    events: list[StreamEvent] = []
    result = client.subscribe(
        "sd15-tiny",
        {"prompt": "a harbour", "num_inference_steps": 6, "width": 64, "height": 64},
        on_update=events.append,
        priority="interactive",
        timeout=300,
    )
    steps = [e.progress.step for e in events if e.progress and e.status.status == "IN_PROGRESS"]
    assert steps and steps == sorted(steps) and steps[-1] == 6
    assert events[-1].status.status == "COMPLETED" and len(result.outputs) == 1


def test_async_client_run_and_subscribe(base_url):
    async def main():
        async with AsyncClient(base_url, API_KEY, timeout=120) as c:
            sync_result, queued = await asyncio.gather(
                c.run("sd15-tiny", {"prompt": "a cat", "seed": 3, **SMALL}),
                c.subscribe("sd15-tiny", {"prompt": "a dog", "seed": 4, **SMALL}, timeout=300),
            )
            data = await c.download(queued.outputs[0])
            return sync_result, queued, data

    sync_result, queued, data = asyncio.run(main())
    assert sync_result.seed == 3 and queued.seed == 4 and data.startswith(PNG_MAGIC)


def test_cancel_a_long_job(client):
    slow = {"prompt": "a storm", "num_inference_steps": 50, "width": 256, "height": 256}
    handle = client.submit("sd15-tiny", slow, priority="batch")
    assert client.cancel(handle).status == "CANCELLATION_REQUESTED"
    with pytest.raises(JobCancelled) as e:
        client.wait(handle, timeout=300)
    assert e.value.request_id == handle.request_id
    with pytest.raises(BadRequest) as done:
        client.cancel(handle)
    assert done.value.type == "already_completed"


def test_errors_carry_type_field_and_limit(client, base_url):
    with pytest.raises(NotFound) as e:
        client.submit("no-such-model", {"prompt": "x"})
    assert e.value.type == "model_not_found" and e.value.field == "model_id"
    with pytest.raises(InvalidRequest) as bad:
        client.run("sd15-tiny", {"prompt": "x", "width": 4096})
    assert bad.value.field == "width" and bad.value.limit is not None
    with pytest.raises(NotFound):
        client.status("not-a-job")
    with Client(base_url, "gm_nope_" + "x" * 40) as stranger, pytest.raises(AuthenticationError):
        stranger.models()


def test_upload_and_image_to_image(client):
    base = client.run("sd15-tiny", {"prompt": "a field", "seed": 1, **SMALL})
    upload = client.upload(client.download(base.outputs[0]))
    assert (upload.width, upload.height) == (64, 64)
    edited = client.run(
        "sd15-tiny",
        {
            "prompt": "a field at night",
            "image": upload.id,
            "strength": 0.5,
            "seed": 1,
            "num_inference_steps": 2,
        },
    )
    assert edited.task == "image-to-image" and edited.outputs[0].width == 64


def test_submit_many(client, base_url):
    openapi = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    if "/v1/queue/models/{model_id}/batch" not in openapi.get("paths", {}):
        pytest.skip("POST /v1/queue/models/{model_id}/batch is not served yet")
    items = [
        {"prompt": "one", "seed": 1, **SMALL},
        {"prompt": "two", "width": 4096},
        {"prompt": "three", "seed": 3, **SMALL},
    ]
    bulk = client.submit_many("sd15-tiny", items, priority="batch")
    assert (bulk.accepted, bulk.refused) == (2, 1)
    refused = bulk.items[1]
    assert isinstance(refused.error, InvalidRequest) and refused.error.field == "width"
    results = [client.wait(h, timeout=300) for h in bulk.handles]
    assert [r.seed for r in results] == [1, 3]


def test_genmedia_run_cli_saves_a_png(base_url, tmp_path):
    from genmedia.deployments.cli.main import app

    args = [
        "run",
        "sd15-tiny",
        "--prompt",
        "a boat",
        "-P",
        "seed=9",
        "-P",
        "num_inference_steps=2",
        "--out",
        str(tmp_path),
        "--url",
        base_url,
        "--key",
        API_KEY,
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes().startswith(PNG_MAGIC)
    assert str(saved[0]) in r.stdout
    r = CliRunner().invoke(app, ["run", "nope", "-p", "x", "--url", base_url, "--key", API_KEY])
    assert r.exit_code == 1 and "model_not_found" in r.output and "Traceback" not in r.output
