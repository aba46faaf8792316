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

from genmedia.models.runner import LoadedModel, run_batch
from genmedia.models.step_engine import engine_for, supports
from genmedia.models.step_sdxl import SdxlStepEngine
from tests.unit.models.step_helpers import (
    alone,
    assert_close,
    img2img_job,
    make_job,
    run_set,
    source_image,
    tiny_model,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return tiny_model("sdxl", tmp_path_factory.mktemp("step-sdxl"), "x")


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> SdxlStepEngine:
    eng = engine_for(model)
    assert isinstance(eng, SdxlStepEngine)
    return eng


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m", "pndm"])
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: SdxlStepEngine, scheduler: str
) -> None:
    job = make_job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2)
    want = run_batch(model, [job])[0]
    member = engine.prepare(job)
    assert set(member.added) == {"text_embeds", "time_ids"}
    assert member.added["time_ids"].shape[0] == member.embeds.shape[0] == 2 * member.rows
    got = alone(engine, job)
    assert_close(got, want)
    assert not np.array_equal(got[0], got[1])


def test_negative_prompt_and_guidance_offalone(model: LoadedModel, engine: SdxlStepEngine) -> None:
    neg = make_job(model, "n", seed=2, negative_prompt="blurry", num_inference_steps=3)
    assert_close(alone(engine, neg), run_batch(model, [neg])[0])
    off = make_job(model, "o", seed=2, guidance_scale=1.0, num_inference_steps=3)
    member = engine.prepare(off)
    assert not member.guidance and member.added["text_embeds"].shape[0] == member.rows
    assert_close(alone(engine, off), run_batch(model, [off])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: SdxlStepEngine, join_at: int
) -> None:
    """A 4-step member without a negative prompt runs from step 0; one with a negative prompt,
    another sampler and guidance joins at ``join_at``, a two-image one the step after."""
    first = make_job(model, "first", seed=5, scheduler="euler", num_inference_steps=4)
    second = make_job(
        model,
        "second",
        prompt="a dog",
        negative_prompt="blurry",
        seed=9,
        scheduler="ddim",
        num_inference_steps=3,
        guidance_scale=3.0,
    )
    third = make_job(
        model, "third", seed=1, scheduler="euler_a", num_inference_steps=2, num_images=2
    )
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)])
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job))


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m"])
def test_img2img_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: SdxlStepEngine, scheduler: str
) -> None:
    job = img2img_job(model, "a", strength=0.6, seed=3, scheduler=scheduler,
                   num_inference_steps=5, num_images=2)  # fmt: skip
    source = source_image(0)
    assert engine.prepare(job, source).total == 3  # int(5 * 0.6): the tail of the schedule
    assert_close(alone(engine, job, source), run_batch(model, [job], inputs=[source])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2])
def test_img2img_and_text_members_share_a_forward(
    model: LoadedModel, engine: SdxlStepEngine, join_at: int
) -> None:
    """Image-to-image members at different timesteps of their own schedules (other strengths,
    samplers, a negative prompt) and a text-to-image member, joined at different steps."""
    first = img2img_job(model, "first", strength=0.8, seed=5, num_inference_steps=5)
    second = img2img_job(model, "second", strength=0.5, seed=9, scheduler="ddim",
                      num_inference_steps=6, negative_prompt="blurry")  # fmt: skip
    third = make_job(model, "third", seed=1, scheduler="euler_a", num_inference_steps=2)
    sources = {"first": source_image(1), "second": source_image(2)}
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)], sources=sources)
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job, sources.get(job.request_id)))


def test_what_runs_step_level(model: LoadedModel, tmp_path: Path) -> None:
    job = make_job(model, "a")
    assert supports(model, job)
    assert supports(model, img2img_job(model, "b", strength=0.5))
    inpaint = replace(job, params=replace(job.params, task="inpainting", strength=0.5))
    assert not supports(model, inpaint)  # SDXL inpainting runs request-level
    with pytest.raises(ValueError, match="does not run 'inpainting'"):
        SdxlStepEngine(model).prepare(inpaint)


def test_members_that_join_together_prepare_in_one_batch(
    model: LoadedModel, engine: SdxlStepEngine
) -> None:
    """Members joining at one boundary encode in one forward per group (with and without a
    negative prompt); each member's rows are its own and its images are as alone."""
    jobs = [
        make_job(model, "a", seed=1, num_inference_steps=2),
        make_job(model, "b", prompt="a dog", negative_prompt="blurry", seed=2, num_images=2),
        make_job(model, "c", prompt="a boat", seed=3, guidance_scale=1.0),
    ]
    members = engine.prepare_many(jobs, [None] * 3)
    assert [m.job.request_id for m in members] == ["a", "b", "c"]
    assert [m.embeds.shape[0] for m in members] == [2, 4, 1]
    for job, member in zip(jobs, members, strict=True):
        single = engine.prepare(job)
        assert float((member.embeds - single.embeds).abs().max()) <= 1e-5
        for k, v in single.added.items():
            assert float((member.added[k] - v).abs().max()) <= 1e-5
    got = run_set(engine, [(0, j) for j in jobs])
    for job in jobs:
        assert_close(got[job.request_id], alone(engine, job))
