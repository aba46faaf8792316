"""The SDXL step engine (``models/step_sdxl.py``) on the tiny SDXL-style model, 64x64, few steps.

Reproducibility as for SD1.5 (``test_step_engine.py``): a request's images alone in the engine
match the request-level runner, and stay the same inside running sets joined at every step
position, with set-mates that have or lack a negative prompt (SDXL encodes a missing one as
zeros), other samplers, step counts and guidance. Measured on x86-64 CPU: alone vs the runner
bit-identical; inside sets, bit-identical in most compositions and one 8-bit level apart on a
few pixels in some (a different batch size takes another blocking in torch's CPU kernels). The
assertions allow one level on at most 1 % of the values: the bound the engine promises.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from genmedia.models import registry
from genmedia.models.catalog import parse_catalog
from genmedia.models.params import GenerateRequest, GenerationJob, resolve_request
from genmedia.models.runner import LoadedModel, load_model, run_batch
from genmedia.models.step_engine import MemberState, engine_for, supports
from genmedia.models.step_sdxl import SdxlStepEngine

MAX_LEVELS = 1  # 8-bit levels an output may move between set compositions
MAX_CHANGED = 0.01  # share of pixel values that may differ at all


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tmp_path_factory.mktemp("step-sdxl") / "sdxl"
    registry.family_module("sdxl").build_tiny(path, seed=0)
    bounds = {"default": 64, "min": 32, "max": 128}
    catalog = parse_catalog(
        {
            "models": [
                {
                    "id": "x",
                    "family": "sdxl",
                    "weights": str(path),
                    "parameters": {
                        "width": bounds,
                        "height": bounds,
                        "steps": {"default": 3, "min": 1, "max": 10},
                        "num_images": {"default": 1, "min": 1, "max": 4},
                    },
                }
            ]
        }
    )
    return load_model(catalog.models[0], path, "cpu")


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> SdxlStepEngine:
    eng = engine_for(model)
    assert isinstance(eng, SdxlStepEngine)
    return eng


def _job(model: LoadedModel, rid: str, **body: object) -> GenerationJob:
    body.setdefault("prompt", "a cat")
    job, errors = resolve_request(model.entry, GenerateRequest(**body), request_id=rid)  # type: ignore[arg-type]
    assert not errors and job is not None, errors
    return job


def _alone(
    engine: SdxlStepEngine, job: GenerationJob, source: dict | None = None
) -> list[np.ndarray]:
    member = engine.prepare(job, source)
    while not member.finished:
        engine.step([member])
    return engine.decode(member)


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == np.uint8
        diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
        assert int(diff.max()) <= MAX_LEVELS
        assert float((diff > 0).mean()) <= MAX_CHANGED


def _run_set(
    engine: SdxlStepEngine,
    arrivals: list[tuple[int, GenerationJob]],
    sources: dict[str, dict] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Job j joins at step boundary k for (k, j) in ``arrivals``; finished members leave."""
    pending = sorted(arrivals, key=lambda a: a[0])
    members: list[MemberState] = []
    out: dict[str, list[np.ndarray]] = {}
    src = sources or {}
    k = 0
    while members or pending:
        members += [engine.prepare(j, src.get(j.request_id)) for at, j in pending if at <= k]
        pending = [(at, j) for at, j in pending if at > k]
        engine.step(members)
        for m in [m for m in members if m.finished]:
            out[m.job.request_id] = engine.decode(m)
            members.remove(m)
        k += 1
    return out


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m", "pndm"])
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: SdxlStepEngine, scheduler: str
) -> None:
    job = _job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2)
    want = run_batch(model, [job])[0]
    member = engine.prepare(job)
    assert set(member.added) == {"text_embeds", "time_ids"}
    assert member.added["time_ids"].shape[0] == member.embeds.shape[0] == 2 * member.rows
    got = _alone(engine, job)
    _assert_close(got, want)
    assert not np.array_equal(got[0], got[1])


def test_negative_prompt_and_guidance_off_alone(model: LoadedModel, engine: SdxlStepEngine) -> None:
    neg = _job(model, "n", seed=2, negative_prompt="blurry", num_inference_steps=3)
    _assert_close(_alone(engine, neg), run_batch(model, [neg])[0])
    off = _job(model, "o", seed=2, guidance_scale=1.0, num_inference_steps=3)
    member = engine.prepare(off)
    assert not member.guidance and member.added["text_embeds"].shape[0] == member.rows
    _assert_close(_alone(engine, off), run_batch(model, [off])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: SdxlStepEngine, join_at: int
) -> None:
    """A 4-step member without a negative prompt runs from step 0; one with a negative prompt,
    another sampler and guidance joins at ``join_at``, a two-image one the step after."""
    first = _job(model, "first", seed=5, scheduler="euler", num_inference_steps=4)
    second = _job(
        model,
        "second",
        prompt="a dog",
        negative_prompt="blurry",
        seed=9,
        scheduler="ddim",
        num_inference_steps=3,
        guidance_scale=3.0,
    )
    third = _job(model, "third", seed=1, scheduler="euler_a", num_inference_steps=2, num_images=2)
    got = _run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)])
    for job in (first, second, third):
        _assert_close(got[job.request_id], _alone(engine, job))


def _img2img(model: LoadedModel, rid: str, *, strength: float, **body: object) -> GenerationJob:
    job = _job(model, rid, **body)
    return replace(job, params=replace(job.params, task="image-to-image", strength=strength))


def _source(seed: int) -> dict:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return {"image": Image.fromarray(pixels)}


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m"])
def test_img2img_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: SdxlStepEngine, scheduler: str
) -> None:
    job = _img2img(model, "a", strength=0.6, seed=3, scheduler=scheduler,
                   num_inference_steps=5, num_images=2)  # fmt: skip
    source = _source(0)
    assert engine.prepare(job, source).total == 3  # int(5 * 0.6): the tail of the schedule
    _assert_close(_alone(engine, job, source), run_batch(model, [job], inputs=[source])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2])
def test_img2img_and_text_members_share_a_forward(
    model: LoadedModel, engine: SdxlStepEngine, join_at: int
) -> None:
    """Image-to-image members at different timesteps of their own schedules (other strengths,
    samplers, a negative prompt) and a text-to-image member, joined at different steps."""
    first = _img2img(model, "first", strength=0.8, seed=5, num_inference_steps=5)
    second = _img2img(model, "second", strength=0.5, seed=9, scheduler="ddim",
                      num_inference_steps=6, negative_prompt="blurry")  # fmt: skip
    third = _job(model, "third", seed=1, scheduler="euler_a", num_inference_steps=2)
    sources = {"first": _source(1), "second": _source(2)}
    got = _run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)], sources)
    for job in (first, second, third):
        _assert_close(got[job.request_id], _alone(engine, job, sources.get(job.request_id)))


def test_what_runs_step_level(model: LoadedModel, tmp_path: Path) -> None:
    job = _job(model, "a")
    assert supports(model, job)
    assert supports(model, _img2img(model, "b", strength=0.5))
    inpaint = replace(job, params=replace(job.params, task="inpainting", strength=0.5))
    assert not supports(model, inpaint)  # SDXL inpainting runs request-level
    with pytest.raises(ValueError, match="does not run 'inpainting'"):
        SdxlStepEngine(model).prepare(inpaint)
