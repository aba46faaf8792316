"""Storing a batch's outputs: images, video and audio encoded per the job's format, sidecars."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import soundfile
from PIL import Image

from genmedia.deployments.store.outputs import store_outputs
from genmedia.deployments.store.storage import LocalDirStorage
from genmedia.models.catalog import load_catalog
from genmedia.models.params import GenerateRequest, resolve_request

CATALOG = load_catalog()


def job(model, **body):
    j, errors = resolve_request(
        CATALOG.model(model), GenerateRequest(prompt="x", seed=5, **body), request_id="r1"
    )
    assert not errors, errors
    return j


def test_images_in_the_requested_format(tmp_path):
    storage = LocalDirStorage(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out = store_outputs(
        storage, job("sd15-tiny", output_format="webp"), [pixels], prefix="t/", extra={}, now=0
    )
    assert out[0].key.endswith("/0.webp") and out[0].content_type == "image/webp"
    img = Image.open(io.BytesIO(storage.get(out[0].key)))
    assert img.format == "WEBP" and img.size == (48, 32)
    sidecar = json.loads(storage.get(out[0].key.replace(".webp", ".json")))
    assert sidecar["seed"] == 5 and sidecar["task"] == "text-to-image"


def test_video_as_mp4(tmp_path):
    storage = LocalDirStorage(tmp_path)
    frames = np.random.default_rng(1).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    j = job("wan-tiny", num_frames=9, fps=12, width=48, height=32)
    out = store_outputs(storage, j, [frames], prefix="t/", extra={}, now=0)[0]
    rec = out.as_record()
    assert rec["num_frames"] == 9 and rec["fps"] == 12 and rec["duration_s"] == 0.75
    with av.open(io.BytesIO(storage.get(out.key))) as c:
        assert len(list(c.decode(video=0))) == 9


def test_audio_as_flac_with_its_sample_rate(tmp_path):
    storage = LocalDirStorage(tmp_path)
    wave = (np.sin(np.linspace(0, 400, 16000)) * 0.5).astype(np.float32)[None].repeat(2, 0)
    j = job("stable-audio-tiny", duration_s=1.0, output_format="flac")
    out = store_outputs(storage, j, [wave], prefix="t/", extra={}, now=0, sample_rate=16000)[0]
    rec = out.as_record()
    assert rec["channels"] == 2 and rec["sample_rate"] == 16000 and "num_frames" not in rec
    data, rate = soundfile.read(io.BytesIO(storage.get(out.key)))
    assert rate == 16000 and data.shape == (16000, 2)
