"""Request resolution against a catalog entry: defaults, bounds, errors naming field and limit."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genmedia.models.catalog import load_catalog
from genmedia.models.params import MAX_SEED, GenerateRequest, parameter_schema, resolve_request


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def resolve(catalog, model="sd15-tiny", **body):
    return resolve_request(
        catalog.model(model), GenerateRequest(prompt="a fox", **body), request_id="r1"
    )


def test_defaults_filled(catalog):
    job, errors = resolve(catalog, seed=7)
    assert not errors
    entry = catalog.model("sd15-tiny")
    assert job.params.width == entry.parameters.width.default
    assert job.params.num_inference_steps == entry.parameters.steps.default
    assert job.params.scheduler == entry.scheduler_default()
    assert job.seed == 7 and job.num_images == 1


def test_random_seed_when_unset(catalog):
    seeds = {resolve(catalog)[0].seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"width": 1024}, "width", 512),
        ({"width": 16}, "width", 32),
        ({"height": 68}, "height", 8),
        ({"num_inference_steps": 0}, "num_inference_steps", 1),
        ({"num_inference_steps": 51}, "num_inference_steps", 50),
        ({"guidance_scale": 20.5}, "guidance_scale", 20.0),
        ({"guidance_scale": -1}, "guidance_scale", 0.0),
        ({"num_images": 5}, "num_images", 4),
        ({"scheduler": "warp"}, "scheduler", None),
        ({"seed": MAX_SEED, "num_images": 2}, "seed", MAX_SEED),
    ],
)
def test_bounds_name_field_and_limit(catalog, body, field, limit):
    job, errors = resolve(catalog, **body)
    assert job is None
    err = next(e for e in errors if e.field == field)
    if limit is not None:
        assert err.limit == limit
    else:
        assert "euler" in err.message


def test_all_errors_at_once(catalog):
    _, errors = resolve(catalog, width=1000, num_inference_steps=99, num_images=9)
    assert {e.field for e in errors} >= {"width", "num_inference_steps", "num_images"}


def test_flux_needs_multiple_of_16(catalog):
    _, errors = resolve(catalog, model="flux-tiny", width=72)
    assert errors[0].field == "width" and errors[0].limit == 16


def test_blank_and_overlong_prompt(catalog):
    entry = catalog.model("sd15-tiny")
    _, errors = resolve_request(entry, GenerateRequest(prompt="   "), request_id="x")
    assert errors[0].field == "prompt"
    long = "x" * (entry.parameters.max_prompt_chars + 1)
    _, errors = resolve_request(entry, GenerateRequest(prompt=long), request_id="x")
    assert errors[0].field == "prompt" and errors[0].limit == entry.parameters.max_prompt_chars
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="")
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="a", colour="red")  # unknown fields are refused, not dropped


def test_batch_key_separates_incompatible(catalog):
    a, _ = resolve(catalog, seed=1)
    b, _ = resolve(catalog, seed=2, num_images=2)
    c, _ = resolve(catalog, seed=1, num_inference_steps=5)
    d, _ = resolve(catalog, model="sd15-tiny-turbo", seed=1)
    assert a.params.batch_key == b.params.batch_key
    assert a.params.batch_key != c.params.batch_key
    assert a.params.batch_key != d.params.batch_key
    e, _ = resolve(catalog, seed=1, negative_prompt="blurry")
    f, _ = resolve(catalog, seed=1, negative_prompt="")
    assert a.batch_key != e.batch_key  # negative prompt set or not never share a call
    assert a.batch_key == f.batch_key  # an empty negative prompt is no negative prompt


def test_parameter_schema(catalog):
    s = parameter_schema(catalog.model("flux-tiny"))
    assert s["width"]["multipleOf"] == 16
    assert s["num_inference_steps"]["maximum"] == 50
    assert s["scheduler"]["enum"] == ["flow_euler"]


def _fields(errors):
    return {e.field: e for e in errors}


def test_task_follows_the_inputs(catalog):
    assert resolve(catalog)[0].params.task == "text-to-image"
    job, errors = resolve(catalog, image="x")
    assert not errors and job.params.task == "image-to-image" and job.params.strength == 0.8
    job, errors = resolve(catalog, image="x", mask_image="m", strength=0.5)
    assert not errors and job.params.task == "inpainting" and job.params.strength == 0.5
    a = resolve(catalog, image="x", strength=0.5)[0]
    b = resolve(catalog, image="x", strength=0.6)[0]
    assert a.batch_key != b.batch_key  # one strength per pipeline call


def test_input_image_sets_the_size(catalog):
    entry = catalog.model("sd15-tiny")
    req = GenerateRequest(prompt="x", image="x")
    job, errors = resolve_request(entry, req, request_id="r", image_size=(48, 40))
    assert not errors and (job.params.width, job.params.height) == (48, 40)
    req = GenerateRequest(prompt="x", image="x", width=64)
    _, errors = resolve_request(entry, req, request_id="r", image_size=(48, 40))
    assert "set by the input image" in _fields(errors)["width"].message
    _, errors = resolve_request(entry, req, request_id="r", image_size=(4096, 40))
    assert _fields(errors)["width"].limit == 512


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"mask_image": "m"}, "image", "inpainting needs the image"),
        ({"strength": 0.5}, "strength", "needs an input image"),
        ({"image": "x", "strength": 0.0}, "strength", ">= 0.01"),
        ({"image": "x", "strength": 1.5}, "strength", "<= 1"),
        ({"image": "x", "strength": 0.1, "num_inference_steps": 4}, "strength", "at least one"),
        ({"output_format": "gif"}, "output_format", "not an output of text-to-image"),
        ({"output_format": "mp4"}, "output_format", "allowed: png, jpeg, webp"),
        ({"output_quality": 80}, "output_quality", "jpeg and webp only"),
        ({"loras": [{"id": "a", "scale": 3}]}, "loras[0].scale", "<= 2"),
        ({"loras": [{"id": "a"}, {"id": "a"}]}, "loras[1].id", "listed twice"),
        ({"loras": [{"id": f"a{i}"} for i in range(4)]}, "loras", "at most 3"),
    ],
)
def test_bad_task_and_adapter_fields(catalog, body, field, words):
    _, errors = resolve(catalog, **body)
    assert words in _fields(errors)[field].message, errors


def test_adapters_are_part_of_the_batch_key_and_recorded(catalog):
    a = resolve(catalog, loras=[{"id": "s", "scale": 0.5}])[0]
    b = resolve(catalog, loras=[{"id": "s", "scale": 0.6}])[0]
    c = resolve(catalog)[0]
    assert len({a.batch_key, b.batch_key, c.batch_key}) == 3
    assert a.params.adapter_set == "s" and c.params.adapter_set == ""
    assert a.describe()["loras"] == [{"id": "s", "scale": 0.5}]
    job, _ = resolve(catalog, output_format="webp", output_quality=70)
    assert job.extra["output"] == {"format": "webp", "quality": 70}


def test_adapters_survive_a_json_round_trip(catalog):
    from dataclasses import asdict

    from genmedia.models.params import GenerationParams

    p = resolve(catalog, loras=[{"id": "s", "scale": 0.5}])[0].params
    again = GenerationParams(**{**asdict(p), "adapters": [list(x) for x in p.adapters]})
    assert again.batch_key == p.batch_key and hash(again.batch_key)


@pytest.mark.parametrize("model", ["wan-tiny", "stable-audio-tiny"])
def test_strength_belongs_to_image_inputs_only(catalog, model):
    job, errors = resolve(catalog, model=model)
    assert not errors and job.params.strength is None
    _, errors = resolve(catalog, model=model, strength=0.5)
    assert "needs an input image" in _fields(errors)["strength"].message
