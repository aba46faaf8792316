"""Live previews, logs and signed output URLs on a real local Ray Serve (tiny SD1.5, 64x64,
50 steps): previews arrive on the stream as PNGs before the result, ``?logs=1`` shows the job's
log lines, and an output URL is read without the API key."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.sse import stream_events

pytestmark = pytest.mark.integration


def _streamed(http, seed: int) -> tuple[str, list[dict]]:
    """A 50-step job with previews, and the events of its stream opened right after."""
    r = http.post(
        "/v1/queue/models/sd15-tiny",
        json={"prompt": "a lighthouse", "num_inference_steps": 50, "seed": seed, "preview": True},
    )
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    return rid, stream_events(http, f"/v1/queue/requests/{rid}/stream?logs=1")


def test_previews_arrive_before_the_result_and_logs_are_kept(http, base_url):
    """A stream open while the job runs gets previews (the latest one at once when it opens
    mid-job). A job can end before its stream opens on a busy machine (its first event is then
    the result): that one is submitted again, at most three times."""
    for seed in range(5, 8):
        rid, events = _streamed(http, seed)
        if events[0]["status"] != "COMPLETED":
            break
    assert events[-1]["status"] == "COMPLETED"
    previews = [e["preview"] for e in events if "preview" in e]
    assert previews, [e.get("progress") for e in events]
    for p in previews:
        with Image.open(io.BytesIO(base64.b64decode(p["png_base64"]))) as img:
            assert img.format == "PNG" and img.size == (p["width"], p["height"])
            assert max(img.size) <= 64 and 1 <= p["step"] <= 50
    assert "logs" in events[-1]

    status = http.get(f"/v1/queue/requests/{rid}/status?logs=1").json()
    messages = [line["message"] for line in status["logs"]]
    assert messages[0].startswith("queued") and messages[-1] == "finished"
    assert any(m.startswith("started") for m in messages)
    assert all(isinstance(line["t"], float) for line in status["logs"])
    assert "logs" not in http.get(f"/v1/queue/requests/{rid}/status").json()

    url = http.get(f"/v1/queue/requests/{rid}").json()["images"][0]["url"]
    assert "sig=" in url
    bare = httpx.get(url, timeout=30)  # no Authorization header
    assert bare.status_code == 200 and bare.content.startswith(b"\x89PNG")
    assert httpx.get(url.replace("sig=", "sig=0"), timeout=30).status_code == 403
