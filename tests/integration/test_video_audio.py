"""Text-to-video (MP4) and text-to-audio (WAV/FLAC) end to end on a real local Ray Serve over
real HTTP: the queue API (their default class is batch), step progress, decoded outputs, and the
bad inputs of these tasks."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
import soundfile

from tests.sse import stream_events

pytestmark = pytest.mark.integration


def finish(http, model, body) -> dict:
    r = http.post(f"/v1/queue/models/{model}", json={"prompt": "waves on a beach", **body})
    assert r.status_code == 202, r.text
    urls = r.json()
    for _ in range(1200):
        status = http.get(urls["status_url"]).json()
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            break
        time.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    assert status["priority"] == "batch"  # the catalog's default class for long jobs
    return http.get(urls["result_url"]).json()


def decoded(http, output: dict) -> np.ndarray:
    with av.open(io.BytesIO(http.get(output["url"]).content)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_text_to_video_mp4(http):
    result = finish(
        http, "wan-tiny", {"num_frames": 9, "fps": 8, "width": 64, "height": 48, "seed": 4}
    )
    assert result["task"] == "text-to-video" and "images" not in result
    out = result["outputs"][0]
    assert out["content_type"] == "video/mp4" and out["num_frames"] == 9 and out["fps"] == 8
    data = http.get(out["url"])
    assert data.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(data.content)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 48)
        assert stream.average_rate == 8
    again = finish(
        http, "wan-tiny", {"num_frames": 9, "fps": 8, "width": 64, "height": 48, "seed": 4}
    )
    # same seed, same frames; x264's bytes may differ in a few macroblocks (models/media.py)
    assert np.mean(decoded(http, again["outputs"][0]) != decoded(http, out)) < 0.01


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_text_to_audio(http, fmt):
    result = finish(http, "stable-audio-tiny", {"duration_s": 1.5, "output_format": fmt, "seed": 2})
    out = result["outputs"][0]
    assert out["content_type"] == f"audio/{fmt}" and out["duration_s"] == pytest.approx(1.5, 0.01)
    data = http.get(out["url"])
    wave, rate = soundfile.read(io.BytesIO(data.content))
    assert rate == out["sample_rate"] and wave.shape[0] == pytest.approx(1.5 * rate, abs=2)
    assert wave.ndim == 2 and wave.shape[1] == out["channels"]


def test_video_progress_streams_per_step(http):
    r = http.post(
        "/v1/queue/models/wan-tiny",
        json={"prompt": "x", "num_frames": 17, "num_inference_steps": 6},
    )
    events = stream_events(http, r.json()["stream_url"])
    assert events[-1]["status"] == "COMPLETED"
    steps = [e["progress"]["step"] for e in events if e["status"] == "IN_PROGRESS"]
    assert steps and steps[-1] == 6 and steps == sorted(steps)


def _error(r, field, words):
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert any(f["field"] == field for f in err.get("fields") or []), err
    assert words in err["message"], err


@pytest.mark.parametrize(
    ("model", "body", "field", "words"),
    [
        ("wan-tiny", {"num_frames": 10}, "num_frames", "4k + 1"),
        ("wan-tiny", {"num_frames": 37}, "num_frames", "<= 33"),
        ("wan-tiny", {"fps": 0}, "fps", ">= 1"),
        ("wan-tiny", {"output_format": "png"}, "output_format", "allowed: mp4"),
        ("wan-tiny", {"width": 72}, "width", "multiple of 16"),
        ("wan-tiny", {"duration_s": 2}, "duration_s", "text-to-audio only"),
        ("wan-tiny", {"image": "aGVsbG8="}, "image", "does not do image-to-image"),
        ("wan-tiny", {"loras": [{"id": "x"}]}, "loras", "takes no LoRA"),
        ("stable-audio-tiny", {"duration_s": 9}, "duration_s", "<= 4"),
        ("stable-audio-tiny", {"duration_s": 0.1}, "duration_s", ">= 0.5"),
        ("stable-audio-tiny", {"output_format": "mp4"}, "output_format", "allowed: wav, flac"),
        ("stable-audio-tiny", {"width": 64}, "width", "not used by text-to-audio"),
        ("stable-audio-tiny", {"num_frames": 9}, "num_frames", "text-to-video only"),
        ("sd15-tiny", {"output_format": "wav"}, "output_format", "allowed: png, jpeg, webp"),
    ],
)
def test_bad_video_and_audio_requests(http, model, body, field, words):
    r = http.post(f"/v1/queue/models/{model}", json={"prompt": "x", **body})
    _error(r, field, words)
