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

from genmedia.models.family import per_job
from genmedia.models.params import GenerationJob
from genmedia.models.runner import LoadedModel, run_batch
from genmedia.models.step_engine import Sd15StepEngine, engine_for, supports
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
    return tiny_model("sd15", tmp_path_factory.mktemp("step-engine"), "m")


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> Sd15StepEngine:
    eng = engine_for(model)
    assert isinstance(eng, Sd15StepEngine)
    return eng


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m", "pndm"])
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: Sd15StepEngine, scheduler: str
) -> None:
    job = make_job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2)
    want = run_batch(model, [job])[0]
    got = alone(engine, job)
    assert_close(got, want)
    assert not np.array_equal(got[0], got[1])  # seed + i per output


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: Sd15StepEngine, join_at: int
) -> None:
    """A 4-step member runs from step 0; others with their own sampler, steps, guidance and
    negative prompt join at ``join_at`` and at the step after; each output is as alone."""
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
        model, "third", seed=1, scheduler="dpmpp_2m", num_inference_steps=2, num_images=2
    )
    arrivals = [(0, first), (join_at, second), (join_at + 1, third)]
    got = run_set(engine, arrivals, cancel={})
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job))


def test_guidance_off_members(model: LoadedModel, engine: Sd15StepEngine) -> None:
    a = make_job(model, "a", seed=2, guidance_scale=1.0, num_inference_steps=3)
    b = make_job(model, "b", seed=3, guidance_scale=1.0, num_inference_steps=2)
    member = engine.prepare(a)
    assert not member.guidance and member.embeds.shape[0] == member.rows
    got = run_set(engine, [(0, a), (1, b)], cancel={})
    assert_close(got["a"], run_batch(model, [a])[0])
    assert_close(got["b"], alone(engine, b))


@pytest.mark.parametrize("cancel_at", [1, 2])
def test_cancel_leaves_the_others_unchanged(
    model: LoadedModel, engine: Sd15StepEngine, cancel_at: int
) -> None:
    keep = make_job(model, "keep", seed=4, num_inference_steps=4)
    drop = make_job(model, "drop", seed=6, num_inference_steps=4)
    got = run_set(engine, [(0, keep), (0, drop)], cancel={"drop": cancel_at})
    assert set(got) == {"keep"}
    assert_close(got["keep"], alone(engine, keep))


def test_step_over_a_finished_member_is_an_error(
    model: LoadedModel, engine: Sd15StepEngine
) -> None:
    member = engine.prepare(make_job(model, "a", num_inference_steps=1))
    engine.step([member])
    assert member.finished and member.total == 1
    with pytest.raises(ValueError, match="already finished"):
        engine.step([member])


def test_what_runs_step_level(model: LoadedModel, tmp_path: Path) -> None:
    job = make_job(model, "a")
    assert supports(model, job)
    img2img = img2img_job(model, "b", strength=0.5)
    assert supports(model, img2img)
    with pytest.raises(ValueError, match="has no input image"):
        Sd15StepEngine(model).prepare(img2img)
    params = replace(job.params, task="inpainting", strength=0.5)
    inpaint = GenerationJob("c", params, "x", None, 1, 1)
    assert not supports(model, inpaint)
    with pytest.raises(ValueError, match="does not run 'inpainting'"):
        Sd15StepEngine(model).prepare(inpaint)


# -- image-to-image: a member's schedule starts where its strength says -----------------------
@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a", "dpmpp_2m"])
def test_img2img_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: Sd15StepEngine, scheduler: str
) -> None:
    job = img2img_job(
        model, "a", strength=0.6, seed=3, scheduler=scheduler, num_inference_steps=5, num_images=2
    )
    source = source_image(0)
    want = run_batch(model, [job], inputs=[source])[0]
    member = engine.prepare(job, source)
    assert member.total == 3  # int(5 * 0.6) steps: the tail of the schedule
    assert_close(alone(engine, job, source), want)


@pytest.mark.parametrize("join_at", [0, 1, 2])
def test_img2img_members_at_different_timesteps_share_a_forward(
    model: LoadedModel, engine: Sd15StepEngine, join_at: int
) -> None:
    """An image-to-image member starts at a later timestep of its own schedule; others with
    other strengths, samplers, seeds and images join at ``join_at`` and the step after, and a
    text-to-image member runs beside them; each output is as alone."""
    first = img2img_job(
        model, "first", strength=0.8, seed=5, scheduler="euler", num_inference_steps=5
    )
    second = img2img_job(
        model,
        "second",
        strength=0.5,
        seed=9,
        scheduler="ddim",
        num_inference_steps=6,
        guidance_scale=3.0,
        negative_prompt="blurry",
    )
    third = make_job(model, "third", seed=1, scheduler="dpmpp_2m", num_inference_steps=2)
    sources = {"first": source_image(1), "second": source_image(2)}
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)], {}, sources)
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job, sources.get(job.request_id)))


def test_members_that_finish_together_decode_in_one_batch(
    model: LoadedModel, engine: Sd15StepEngine
) -> None:
    """Members finishing on the same step decode in one VAE forward (``decode_many``): each
    gets its own rows, in order, as its decode alone gives them."""
    jobs = [
        make_job(model, "a", seed=1, num_inference_steps=2),
        make_job(model, "b", seed=2, num_inference_steps=2, num_images=2),
        make_job(model, "c", prompt="a dog", seed=3, num_inference_steps=2),
    ]
    members = [engine.prepare(j) for j in jobs]
    while not members[0].finished:
        engine.step(members)
    together = engine.decode_many(members)
    assert [len(images) for images in together] == [1, 2, 1]
    for member, images in zip(members, together, strict=True):
        assert_close(images, engine.decode(member))
    assert engine.decode_many([]) == []
    with pytest.raises(ValueError, match="3 outputs for jobs of 2 images"):
        per_job(jobs[:1] + jobs[2:], np.zeros((3, 2, 2, 3), np.uint8))


def test_members_that_join_together_prepare_in_one_batch(
    model: LoadedModel, engine: Sd15StepEngine
) -> None:
    """Members joining at one boundary encode their prompts in one forward (``prepare_many``):
    with and without guidance, with and without a negative prompt, several outputs, each
    member's rows are its own and its images are as alone."""
    jobs = [
        make_job(model, "a", seed=1, num_inference_steps=2, guidance_scale=1.0),
        make_job(model, "b", prompt="a dog", negative_prompt="blurry", seed=2, num_images=2),
        make_job(model, "c", prompt="a boat", seed=3, num_inference_steps=3),
    ]
    members = engine.prepare_many(jobs, [None] * 3)
    assert [m.embeds.shape[0] for m in members] == [1, 4, 2]
    assert [m.guidance for m in members] == [False, True, True]
    for job, member in zip(jobs, members, strict=True):
        single = engine.prepare(job)
        assert member.total == single.total
        assert float((member.embeds - single.embeds).abs().max()) <= 1e-5
    got = run_set(engine, [(0, j) for j in jobs])
    for job in jobs:
        assert_close(got[job.request_id], alone(engine, job))
    assert engine.prepare_many([], []) == []
