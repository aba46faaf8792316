"""The step engine (``models/step_engine.py``) on the tiny SD1.5-style model, 64x64, few steps.

Reproducibility: a request's images are the same alone in the engine, through the request-level
runner, and inside running sets that others join and leave at every step position, for
text-to-image and image-to-image (members at different timesteps of different schedules). On
the machines this was written on (x86-64 CPU, torch's CPU kernels) alone vs the runner is
bit-identical, and inside sets bit-identical in most compositions, one 8-bit level apart on a
few pixels in some (seen with image-to-image: another batch size, another kernel blocking). The
assertions allow one level, the bound the step engine promises on any device, and require that
almost every value is exactly equal.
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
from genmedia.models.step_engine import MemberState, Sd15StepEngine, engine_for, supports

MAX_LEVELS = 1  # 8-bit levels an output may move between set compositions
MAX_CHANGED = 0.01  # share of pixel values that may differ at all


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tmp_path_factory.mktemp("step-engine") / "sd15"
    registry.family_module("sd15").build_tiny(path, seed=0)
    bounds = {"default": 64, "min": 32, "max": 128}
    catalog = parse_catalog(
        {
            "models": [
                {
                    "id": "m",
                    "family": "sd15",
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
def engine(model: LoadedModel) -> Sd15StepEngine:
    eng = engine_for(model)
    assert isinstance(eng, Sd15StepEngine)
    return eng


def _job(model: LoadedModel, rid: str, **body: object) -> GenerationJob:
    body.setdefault("prompt", "a cat")
    job, errors = resolve_request(model.entry, GenerateRequest(**body), request_id=rid)  # type: ignore[arg-type]
    assert not errors and job is not None, errors
    return job


def _alone(
    engine: Sd15StepEngine, job: GenerationJob, source: dict | None = None
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
    engine: Sd15StepEngine,
    arrivals: list[tuple[int, GenerationJob]],
    cancel: dict[str, int],
    sources: dict[str, dict] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Run an engine loop: job j joins at step boundary k for (k, j) in ``arrivals``; a member
    named in ``cancel`` leaves at that boundary; finished members decode and leave."""
    pending = sorted(arrivals, key=lambda a: a[0])
    members: list[MemberState] = []
    out: dict[str, list[np.ndarray]] = {}
    src = sources or {}
    k = 0
    while members or pending:
        members += [engine.prepare(j, src.get(j.request_id)) for at, j in pending if at <= k]
        pending = [(at, j) for at, j in pending if at > k]
        members = [m for m in members if cancel.get(m.job.request_id) != k]
        engine.step(members)
        for m in [m for m in members if m.finished]:
            out[m.job.request_id] = engine.decode(m)
            members.remove(m)
        k += 1
    return out


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m", "pndm"])
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: Sd15StepEngine, scheduler: str
) -> None:
    job = _job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2)
    want = run_batch(model, [job])[0]
    got = _alone(engine, job)
    _assert_close(got, want)
    assert not np.array_equal(got[0], got[1])  # seed + i per output


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: Sd15StepEngine, join_at: int
) -> None:
    """A 4-step member runs from step 0; others with their own sampler, steps, guidance and
    negative prompt join at ``join_at`` and at the step after; each output is as alone."""
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
    third = _job(model, "third", seed=1, scheduler="dpmpp_2m", num_inference_steps=2, num_images=2)
    arrivals = [(0, first), (join_at, second), (join_at + 1, third)]
    got = _run_set(engine, arrivals, cancel={})
    for job in (first, second, third):
        _assert_close(got[job.request_id], _alone(engine, job))


def test_guidance_off_members(model: LoadedModel, engine: Sd15StepEngine) -> None:
    a = _job(model, "a", seed=2, guidance_scale=1.0, num_inference_steps=3)
    b = _job(model, "b", seed=3, guidance_scale=1.0, num_inference_steps=2)
    member = engine.prepare(a)
    assert not member.guidance and member.embeds.shape[0] == member.rows
    got = _run_set(engine, [(0, a), (1, b)], cancel={})
    _assert_close(got["a"], run_batch(model, [a])[0])
    _assert_close(got["b"], _alone(engine, b))


@pytest.mark.parametrize("cancel_at", [1, 2])
def test_cancel_leaves_the_others_unchanged(
    model: LoadedModel, engine: Sd15StepEngine, cancel_at: int
) -> None:
    keep = _job(model, "keep", seed=4, num_inference_steps=4)
    drop = _job(model, "drop", seed=6, num_inference_steps=4)
    got = _run_set(engine, [(0, keep), (0, drop)], cancel={"drop": cancel_at})
    assert set(got) == {"keep"}
    _assert_close(got["keep"], _alone(engine, keep))


def test_step_over_a_finished_member_is_an_error(
    model: LoadedModel, engine: Sd15StepEngine
) -> None:
    member = engine.prepare(_job(model, "a", num_inference_steps=1))
    engine.step([member])
    assert member.finished and member.total == 1
    with pytest.raises(ValueError, match="already finished"):
        engine.step([member])


def test_what_runs_step_level(model: LoadedModel, tmp_path: Path) -> None:
    job = _job(model, "a")
    assert supports(model, job)
    img2img = _img2img(model, "b", strength=0.5)
    assert supports(model, img2img)
    with pytest.raises(ValueError, match="has no input image"):
        Sd15StepEngine(model).prepare(img2img)
    params = replace(job.params, task="inpainting", strength=0.5)
    inpaint = GenerationJob("c", params, "x", None, 1, 1)
    assert not supports(model, inpaint)
    with pytest.raises(ValueError, match="does not run 'inpainting'"):
        Sd15StepEngine(model).prepare(inpaint)


# -- image-to-image: a member's schedule starts where its strength says -----------------------
def _img2img(model: LoadedModel, rid: str, *, strength: float, **body: object) -> GenerationJob:
    job = _job(model, rid, **body)
    params = replace(job.params, task="image-to-image", strength=strength)
    return replace(job, params=params)


def _source(seed: int) -> dict:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return {"image": Image.fromarray(pixels)}


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m"])
def test_img2img_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: Sd15StepEngine, scheduler: str
) -> None:
    job = _img2img(
        model, "a", strength=0.6, seed=3, scheduler=scheduler, num_inference_steps=5, num_images=2
    )
    source = _source(0)
    want = run_batch(model, [job], inputs=[source])[0]
    member = engine.prepare(job, source)
    assert member.total == 3  # int(5 * 0.6) steps: the tail of the schedule
    _assert_close(_alone(engine, job, source), want)


@pytest.mark.parametrize("join_at", [0, 1, 2])
def test_img2img_members_at_different_timesteps_share_a_forward(
    model: LoadedModel, engine: Sd15StepEngine, join_at: int
) -> None:
    """An image-to-image member starts at a later timestep of its own schedule; others with
    other strengths, samplers, seeds and images join at ``join_at`` and the step after, and a
    text-to-image member runs beside them; each output is as alone."""
    first = _img2img(model, "first", strength=0.8, seed=5, scheduler="euler", num_inference_steps=5)
    second = _img2img(
        model,
        "second",
        strength=0.5,
        seed=9,
        scheduler="ddim",
        num_inference_steps=6,
        guidance_scale=3.0,
        negative_prompt="blurry",
    )
    third = _job(model, "third", seed=1, scheduler="dpmpp_2m", num_inference_steps=2)
    sources = {"first": _source(1), "second": _source(2)}
    got = _run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)], {}, sources)
    for job in (first, second, third):
        _assert_close(got[job.request_id], _alone(engine, job, sources.get(job.request_id)))
