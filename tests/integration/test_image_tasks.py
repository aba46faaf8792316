"""Image-to-image, inpainting, uploads and output formats end to end on a real local Ray Serve,
over real HTTP, with the bad inputs a client can send."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import OTHER_KEY

pytestmark = pytest.mark.integration


def picture(w=64, h=64, seed=0, fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = (rng.random((h, w, channels)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze() if channels == 1 else arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def mask(w=64, h=64) -> bytes:
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[:, w // 2 :] = 255
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes, data_url: bool = False) -> str:
    text = base64.b64encode(data).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def upload(http, data: bytes, ctype="image/png"):
    return http.post("/v1/files", content=data, headers={"Content-Type": ctype})


def fetch(http, body) -> Image.Image:
    r = http.get(body["images"][0]["url"])
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


@pytest.mark.parametrize("model", ["sd15-tiny", "sdxl-tiny", "flux-tiny"])
def test_image_to_image_from_base64_sets_size(http, model):
    src = picture(64, 48 if model != "flux-tiny" else 32)
    r = http.post(
        f"/v1/models/{model}/generate",
        json={
            "prompt": "a watercolour",
            "image": b64(src, data_url=True),
            "strength": 0.6,
            "num_inference_steps": 4,
            "seed": 3,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "image-to-image"
    assert body["parameters"]["strength"] == 0.6
    assert fetch(http, body).size == Image.open(io.BytesIO(src)).size


def test_inpainting_with_uploads_and_progress(http):
    img = upload(http, picture(seed=4))
    m = upload(http, mask())
    assert img.status_code == 201 and m.status_code == 201, img.text
    up = img.json()
    assert up["id"].startswith("upl_") and (up["width"], up["height"]) == (64, 64)
    r = http.post(
        "/v1/queue/models/sd15-tiny",
        json={
            "prompt": "a door",
            "image": up["id"],
            "mask_image": m.json()["url"],
            "strength": 1.0,
            "num_inference_steps": 4,
            "seed": 1,
        },
    )
    assert r.status_code == 202, r.text
    for _ in range(600):
        status = http.get(r.json()["status_url"]).json()
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            break
        time.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    result = http.get(r.json()["result_url"]).json()
    assert result["task"] == "inpainting"
    out = np.asarray(fetch(http, result), dtype=np.float32)
    src = np.asarray(Image.open(io.BytesIO(picture(seed=4))), dtype=np.float32)
    # black half of the mask kept (up to the VAE round trip), white half repainted
    assert np.abs(out[:, :24] - src[:, :24]).mean() < np.abs(out[:, 40:] - src[:, 40:]).mean()


def test_image_from_own_output_url(http):
    first = http.post("/v1/models/sd15-tiny/generate", json={"prompt": "a cat", "seed": 2})
    url = first.json()["images"][0]["url"]
    again = http.post(
        "/v1/models/sd15-tiny/generate",
        json={"prompt": "a cat, sharper", "image": url, "strength": 0.5},
    )
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    ("fmt", "ctype", "pil"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
def test_output_formats(http, fmt, ctype, pil):
    r = http.post(
        "/v1/models/sd15-tiny/generate",
        json={"prompt": "a boat", "output_format": fmt, "output_quality": 70},
    )
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert img["content_type"] == ctype
    got = http.get(img["url"])
    assert got.headers["content-type"] == ctype
    assert Image.open(io.BytesIO(got.content)).format == pil


def _error(r, status, field):
    assert r.status_code == status, r.text
    fields = [f["field"] for f in r.json()["error"].get("fields") or []]
    assert field in fields, r.json()
    return r.json()["error"]["message"]


def test_bad_inputs_name_field_and_rule(http, base_url):
    gen = "/v1/models/sd15-tiny/generate"
    not_image = b64(b"this is not an image")
    assert "not an image" in _error(
        http.post(gen, json={"prompt": "x", "image": not_image}), 422, "image"
    )
    garbage = "%%% not base64 %%%"
    assert "base64" in _error(http.post(gen, json={"prompt": "x", "image": garbage}), 422, "image")
    big = b64(picture(600, 600))
    assert "pixel limit" in _error(http.post(gen, json={"prompt": "x", "image": big}), 422, "image")
    odd = b64(picture(60, 64))
    assert "multiple of 8" in _error(
        http.post(gen, json={"prompt": "x", "image": odd}), 422, "width"
    )
    r = http.post(
        gen, json={"prompt": "x", "image": b64(picture()), "mask_image": b64(mask(32, 32))}
    )
    assert "must be the image's size 64x64" in _error(r, 422, "mask_image")
    r = http.post(gen, json={"prompt": "x", "mask_image": b64(mask())})
    _error(r, 422, "image")
    r = http.post(gen, json={"prompt": "x", "image": b64(picture()), "width": 128})
    assert "set by the input image" in _error(r, 422, "width")
    r = http.post(gen, json={"prompt": "x", "strength": 0.5})
    _error(r, 422, "strength")
    r = http.post(gen, json={"prompt": "x", "image": b64(picture()), "strength": 1.5})
    _error(r, 422, "strength")
    r = http.post(gen, json={"prompt": "x", "output_format": "mp4"})
    assert "not an output of text-to-image" in _error(r, 422, "output_format")
    r = http.post(gen, json={"prompt": "x", "output_quality": 50})
    _error(r, 422, "output_quality")
    r = http.post(gen, json={"prompt": "x", "image": "upl_" + "0" * 32})
    _error(r, 404, "image")


def test_uploads_are_per_tenant_and_checked(http, base_url):
    import httpx

    up = upload(http, picture()).json()
    other = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    with other:
        r = other.post("/v1/models/sd15-tiny/generate", json={"prompt": "x", "image": up["id"]})
        assert r.status_code == 404  # another tenant's upload is as unknown as none
        r = other.post("/v1/models/sd15-tiny/generate", json={"prompt": "x", "image": up["url"]})
        assert r.status_code == 404
    _error(upload(http, b"GIF89a", ctype="image/gif"), 415, "Content-Type")
    _error(upload(http, b"not really a png"), 422, "body")
    too_big = http.post(
        "/v1/files", content=b"\0" * (17 << 20), headers={"Content-Type": "image/png"}
    )
    assert too_big.status_code == 413
