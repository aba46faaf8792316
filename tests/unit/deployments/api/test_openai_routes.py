"""The OpenAI-compatible images routes, driven by the official ``openai`` package over FastAPI's
test transport, with the fake scheduler: answers and errors in OpenAI's shapes, parameters mapped
onto genmedia's request, masks converted to genmedia's convention."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from genmedia.deployments.protocol import Rejection
from genmedia.deployments.store.storage import LocalDirStorage
from tests.unit.deployments.api.test_api import KEY, OTHER_KEY, make_client
from tests.unit.deployments.fakes import FakeScheduler


@pytest.fixture
def storage(tmp_path):
    return LocalDirStorage(tmp_path)


@pytest.fixture
def scheduler(storage):
    return FakeScheduler(storage)


@pytest.fixture
def http(scheduler, storage):
    return make_client(scheduler, storage)


def oai(http, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=http, max_retries=0
    )


@pytest.fixture
def client(http):
    return oai(http)


def png(w: int = 48, h: int = 64, mode: str = "RGB", color: object = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def alpha_mask(w: int = 48, h: int = 64) -> bytes:
    """OpenAI's convention: the transparent left half is the area to edit."""
    m = Image.new("RGBA", (w, h), (0, 0, 0, 255))
    m.paste((0, 0, 0, 0), (0, 0, w // 2, h))
    buf = io.BytesIO()
    m.save(buf, format="PNG")
    return buf.getvalue()


def error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return err


def test_generations_b64_json_by_default(client, scheduler):
    r = client.images.generate(model="sd15-tiny", prompt="a fox", size="48x64")
    assert r.created > 0 and r.size == "48x64" and r.output_format == "png"
    (item,) = r.data or []
    assert item.url is None
    img = Image.open(io.BytesIO(base64.b64decode(item.b64_json or "")))
    assert img.format == "PNG" and img.size == (48, 64)
    sub = scheduler.subs[0]
    assert sub.priority == "interactive"  # as the sync route
    assert (sub.job.params.width, sub.job.params.height) == (48, 64)


def test_generations_url(client, http):
    r = client.images.generate(model="sd15-tiny", prompt="a fox", response_format="url")
    (item,) = r.data or []
    assert item.b64_json is None and item.url
    got = http.get(item.url.replace("http://testserver", ""))
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (64, 64)


def test_n_and_genmedia_extensions(client, scheduler):
    r = client.images.generate(
        model="sd15-tiny",
        prompt="a fox",
        n=3,
        extra_body={"seed": 7, "num_inference_steps": 2, "negative_prompt": "blur"},
    )
    assert len(r.data or []) == 3
    job = scheduler.subs[0].job
    assert (job.num_images, job.seed, job.params.num_inference_steps) == (3, 7, 2)
    assert job.negative_prompt == "blur"


@pytest.mark.parametrize(
    ("kwargs", "param", "code", "text"),
    [
        ({"size": "big"}, "size", "invalid_value", "WIDTHxHEIGHT"),
        ({"size": "1024x1024"}, "size", "invalid_value", "width must be <= 512"),
        ({"size": "60x64"}, "size", "invalid_value", "multiple of 8"),
        ({"n": 9}, "n", "invalid_value", "n: must be <= 4"),
        ({"style": "vivid"}, "style", "unsupported_parameter", "prompt"),
        ({"quality": "ultra"}, "quality", "unsupported_value", "low"),
        ({"stream": True}, "stream", "unsupported_value", "queue API"),
        ({"background": "transparent"}, "background", "invalid_value", "opaque"),
        ({"extra_body": {"foo": 1}}, "foo", "unknown_parameter", "Unknown parameter"),
        ({"partial_images": 2}, "partial_images", "unsupported_parameter", "not supported"),
        ({"model": "wan-tiny"}, "model", "unsupported_model", "text-to-video"),
        ({"extra_body": {"seed": -1}}, "seed", "invalid_value", "seed"),
    ],
)
def test_refused_parameters_answer_400_naming_them(client, scheduler, kwargs, param, code, text):
    args = {"model": "sd15-tiny", "prompt": "a fox", **kwargs}
    err = error_of(lambda: client.images.generate(**args))
    assert isinstance(err, openai.BadRequestError)
    body = err.response.json()["error"]
    assert body["type"] == "invalid_request_error"
    assert (body["param"], body["code"]) == (param, code), body
    assert text in body["message"]
    assert scheduler.subs == []


@pytest.mark.parametrize(
    ("quality", "steps"), [("low", 2), ("auto", 4), ("standard", 4), ("hd", 8), ("high", 8)]
)
def test_quality_scales_the_default_steps(client, scheduler, quality, steps):
    client.images.generate(model="sd15-tiny", prompt="a fox", quality=quality)
    assert scheduler.subs[0].job.params.num_inference_steps == steps


def test_quality_and_steps_together_are_refused(client):
    err = error_of(
        lambda: client.images.generate(
            model="sd15-tiny", prompt="a fox", quality="hd", extra_body={"num_inference_steps": 3}
        )
    )
    assert err.response.json()["error"]["param"] == "quality"


def test_output_format_and_compression_map(client, scheduler):
    r = client.images.generate(
        model="sd15-tiny", prompt="a fox", output_format="jpeg", output_compression=70
    )
    assert r.output_format is not None
    assert scheduler.subs[0].job.extra["output"] == {"format": "jpeg", "quality": 70}


def test_unknown_model_is_404_model_not_found(client):
    err = error_of(lambda: client.images.generate(model="nope", prompt="a fox"))
    assert isinstance(err, openai.NotFoundError)
    body = err.response.json()["error"]
    assert (body["param"], body["code"]) == ("model", "model_not_found")


def test_body_errors_in_openai_shape(http):
    r = http.post("/v1/images/generations", json={"model": "sd15-tiny"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_required_parameter"
    assert r.json()["error"]["param"] == "prompt"
    r = http.post(
        "/v1/images/generations", content=b"{no", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_bad_key_is_401_in_openai_shape_only_on_these_routes(http):
    err = error_of(lambda: oai(http, key="nope").images.generate(model="sd15-tiny", prompt="x"))
    assert isinstance(err, openai.AuthenticationError)
    body = err.response.json()["error"]
    assert body["code"] == "invalid_api_key" and body["type"] == "invalid_request_error"
    assert err.response.headers["www-authenticate"].startswith("Bearer")
    # genmedia's own routes keep genmedia's shape
    r = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"type", "message", "fields"}


def test_priority_and_model_permissions(http, scheduler):
    other = oai(http, key=OTHER_KEY)  # batch class only, sdxl-tiny only
    err = error_of(lambda: other.images.generate(model="sdxl-tiny", prompt="x"))
    assert isinstance(err, openai.PermissionDeniedError)
    assert err.response.json()["error"]["type"] == "permission_error"
    other.images.generate(model="sdxl-tiny", prompt="x", extra_body={"priority": "batch"})
    assert scheduler.subs[0].priority == "batch"


def test_admission_refusal_is_429_with_retry_after(storage):
    reject = Rejection(429, "tenant_queue_full", "too many queued jobs", 2.0)
    client = oai(make_client(FakeScheduler(storage, reject=reject), storage))
    err = error_of(lambda: client.images.generate(model="sd15-tiny", prompt="x"))
    assert isinstance(err, openai.RateLimitError)
    assert err.response.headers["retry-after"] == "2"
    body = err.response.json()["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "tenant_queue_full")


def test_edit_without_mask_is_image_to_image(client, scheduler, storage):
    src = png(48, 64)
    r = client.images.edit(
        model="sd15-tiny",
        prompt="a watercolour",
        image=("in.png", src, "image/png"),
        n=2,
        extra_body={"strength": 0.5},
    )
    assert r.size == "48x64" and len(r.data or []) == 2
    job = scheduler.subs[0].job
    assert job.params.task == "image-to-image" and job.params.strength == 0.5
    assert storage.get(job.extra["inputs"]["image"]) == src
    assert "mask" not in job.extra["inputs"]


def test_edit_with_alpha_mask_is_inpainting_with_white_repaint(client, scheduler, storage):
    r = client.images.edit(
        model="sd15-tiny",
        prompt="a door",
        image=("in.png", png(48, 64), "image/png"),
        mask=("mask.png", alpha_mask(48, 64), "image/png"),
        response_format="url",
    )
    assert (r.data or [])[0].url
    job = scheduler.subs[0].job
    assert job.params.task == "inpainting"
    mask = Image.open(io.BytesIO(storage.get(job.extra["inputs"]["mask"]) or b""))
    assert mask.mode == "L" and mask.size == (48, 64)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((47, 0)) == 0  # transparent = repaint


def test_edit_size_resizes_image_and_mask(client, scheduler, storage):
    client.images.edit(
        model="sd15-tiny",
        prompt="a door",
        image=("in.png", png(32, 32), "image/png"),
        mask=("mask.png", alpha_mask(32, 32), "image/png"),
        size="64x64",
    )
    inputs = scheduler.subs[0].job.extra["inputs"]
    for name in ("image", "mask"):
        assert Image.open(io.BytesIO(storage.get(inputs[name]) or b"")).size == (64, 64)
    assert scheduler.subs[0].job.params.width == 64


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (png(48, 64, mode="L", color=255), "alpha channel"),
        (alpha_mask(32, 32), "the image's size"),
        (b"not an image", "not an image"),
    ],
)
def test_bad_masks_are_400_naming_mask(client, scheduler, mask, text):
    err = error_of(
        lambda: client.images.edit(
            model="sd15-tiny",
            prompt="a door",
            image=("in.png", png(48, 64), "image/png"),
            mask=("mask.png", mask, "image/png"),
        )
    )
    body = err.response.json()["error"]
    assert err.status_code == 400 and body["param"] == "mask", body
    assert text in body["message"]
    assert scheduler.subs == []


def test_edit_form_errors(http, client):
    err = error_of(
        lambda: client.images.edit(
            model="wan-tiny", prompt="x", image=("a.png", png(), "image/png")
        )
    )
    assert err.response.json()["error"]["param"] == "model"
    r = http.post("/v1/images/edits", data={"model": "sd15-tiny", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    r = http.post(
        "/v1/images/edits",
        data={"model": "sd15-tiny", "prompt": "x", "colour": "red"},
        files={"image": ("a.png", png(), "image/png")},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    r = http.post(
        "/v1/images/edits",
        data={"model": "sd15-tiny", "prompt": "x", "n": "many"},
        files={"image": ("a.png", png(), "image/png")},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_models_list_serves_both_shapes(client, http):
    body = http.get("/v1/models").json()
    ids = [m["id"] for m in body["models"]]  # genmedia's shape, unchanged
    assert "sd15-tiny" in ids and body["models"][0]["parameters"]
    assert body["object"] == "list"
    assert [m.id for m in client.models.list()] == ids
    assert {m.object for m in client.models.list()} == {"model"}
    one = client.models.retrieve("sd15-tiny")
    assert (one.id, one.object, one.owned_by) == ("sd15-tiny", "model", "genmedia")


def test_openapi_documents_the_routes_with_openai_errors(http):
    spec = http.get("/openapi.json").json()
    gen = spec["paths"]["/v1/images/generations"]["post"]
    assert gen["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OpenAIErrorBody"
    )
    assert "422" not in gen["responses"]
    edit = spec["paths"]["/v1/images/edits"]["post"]
    assert "multipart/form-data" in edit["requestBody"]["content"]
