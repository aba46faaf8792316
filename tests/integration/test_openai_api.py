"""The official ``openai`` package against the OpenAI-compatible routes of a real local Ray Serve
stack: generations (url, b64_json, n > 1), edits with and without a mask on the tiny models,
errors in OpenAI's shape, and ``models.list()``. Cheap: 64x64, two steps."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration

FEW_STEPS = {"num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(
        api_key=API_KEY, base_url=f"{base_url.rstrip('/')}/v1", max_retries=0, timeout=120
    ) as c:
        yield c


def decoded(item) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    assert img.format == "PNG"
    return img


def picture(w: int = 64, h: int = 64) -> bytes:
    arr = (np.random.default_rng(1).random((h, w, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def alpha_mask(w: int = 64, h: int = 64) -> bytes:
    m = Image.new("RGBA", (w, h), (0, 0, 0, 255))
    m.paste((0, 0, 0, 0), (0, 0, w // 2, h))  # transparent left half: repainted
    buf = io.BytesIO()
    m.save(buf, format="PNG")
    return buf.getvalue()


def test_generations_b64_json(client):
    r = client.images.generate(
        model="sd15-tiny",
        prompt="a red fox",
        size="64x48",
        response_format="b64_json",
        extra_body=FEW_STEPS,
    )
    (item,) = r.data or []
    assert decoded(item).size == (64, 48) and r.size == "64x48"


def test_generations_url_with_two_images(client, http):
    r = client.images.generate(
        model="sd15-tiny", prompt="a red fox", n=2, response_format="url", extra_body=FEW_STEPS
    )
    urls = [d.url for d in r.data or []]
    assert len(urls) == 2 and len(set(urls)) == 2
    for url in urls:
        got = http.get(url)  # local storage: the Bearer key reads it
        assert got.status_code == 200
        assert Image.open(io.BytesIO(got.content)).size == (64, 64)


def test_errors_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="sd15-tiny", prompt="x", size="4096x4096")
    assert bad.value.body == {
        "message": "size: width must be <= 512; size: height must be <= 512",
        "type": "invalid_request_error",
        "param": "size",
        "code": "invalid_value",
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="x")
    assert isinstance(missing.value.body, dict) and missing.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("with_mask", [False, True])
def test_edits(client, with_mask):
    extra = {**FEW_STEPS, "strength": 0.6}
    kwargs = {"mask": ("mask.png", alpha_mask(), "image/png")} if with_mask else {}
    r = client.images.edit(
        model="sd15-tiny",
        prompt="a wooden door",
        image=("in.png", picture(), "image/png"),
        response_format="b64_json",
        extra_body=extra,
        **kwargs,
    )
    (item,) = r.data or []
    assert decoded(item).size == (64, 64)


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"sd15-tiny", "sdxl-tiny", "flux-tiny"} <= ids
