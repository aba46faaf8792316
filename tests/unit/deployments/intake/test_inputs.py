"""Input images at the gateway: the three forms a request may send, and every bad one."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from genmedia.deployments.intake.inputs import (
    InputError,
    check_image,
    check_mask,
    load_input,
    new_upload_id,
)


def png(w=16, h=16, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def load(value, store=None, max_pixels=10_000):
    store = store or {}
    return load_input(value, "image", tenant="dev", read=store.get, max_pixels=max_pixels)


@pytest.mark.parametrize("data_url", [False, True])
def test_base64_forms(data_url):
    text = base64.b64encode(png(fmt="JPEG")).decode()
    img, key = load(f"data:image/jpeg;base64,{text}" if data_url else text)
    assert (img.width, img.height, key) == (16, 16, None)


def test_upload_id_and_own_file_url():
    uid = new_upload_id()
    store = {f"dev/uploads/{uid}.webp": png(8, 8, fmt="WEBP"), "dev/2026/a/0.png": png(24, 8)}
    img, key = load(uid, store)
    assert key == f"dev/uploads/{uid}.webp" and img.width == 8
    img, key = load("http://host:8000/v1/files/dev/2026/a/0.png", store)
    assert key == "dev/2026/a/0.png" and (img.width, img.height) == (24, 8)


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ("upl_" + "1" * 32, 404, "no uploaded file"),
        ("http://h/v1/files/other/2026/a/0.png", 404, "no file"),  # another tenant's
        ("http://h/v1/files/dev/../other/0.png", 422, "not a valid file path"),
        ("http://h/v1/files/dev/a\\b.png", 422, "not a valid file path"),
        ("http://h/v1/files/dev/a\x00b.png", 422, "not a valid file path"),
        ("http://h/v1/files/dev/missing.png", 404, "no file"),
        ("%%%", 422, "base64"),
        (base64.b64encode(b"plain text").decode(), 422, "not an image"),
        ("", 422, "is empty"),
    ],
)
def test_bad_values_name_the_field(value, status, words):
    with pytest.raises(InputError) as e:
        load(value)
    assert e.value.field == "image" and e.value.status == status and words in str(e.value)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(InputError, match="over the pixel limit of 100 pixels") as e:
        check_image(png(16, 16), "image", max_pixels=100)
    assert e.value.limit == 100


def test_truncated_image_is_refused():
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG")
    with pytest.raises(InputError, match="not an image"):
        check_image(buf.getvalue()[: len(buf.getvalue()) // 2], "image", max_pixels=10_000)


def test_mask_must_match_the_image():
    image = check_image(png(16, 16), "image", 10_000)
    check_mask(check_image(png(16, 16), "mask_image", 10_000), image)
    with pytest.raises(InputError, match="must be the image's size 16x16") as e:
        check_mask(check_image(png(8, 16), "mask_image", 10_000), image)
    assert e.value.field == "mask_image" and e.value.limit == [16, 16]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_inline_images_of_every_usual_format_pass_the_signature_check(fmt):
    img, _ = load(base64.b64encode(png(fmt=fmt)).decode())
    assert (img.width, img.height) == (16, 16)


def test_megabytes_of_base64_that_is_no_image_are_refused_before_decoding(monkeypatch):
    """The first bytes carry no image signature: refused without decoding the rest."""
    import genmedia.deployments.intake.inputs as inputs

    decoded: list[int] = []
    real = inputs.base64.b64decode

    def counting(payload, validate=False):
        decoded.append(len(payload))
        return real(payload, validate=validate)

    monkeypatch.setattr(inputs.base64, "b64decode", counting)
    with pytest.raises(InputError, match="not an image"):
        load("A" * 8_000_000)
    assert decoded == [inputs.SIGNATURE_CHARS]  # the head only
