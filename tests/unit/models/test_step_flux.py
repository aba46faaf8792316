"""The Flux step engine (``models/step_flux.py``) on the tiny Flux-style model, 64x64, few steps.

Reproducibility, measured on x86-64 CPU (torch's CPU kernels): a member without a negative
prompt alone is bit-identical to the request-level runner (its rows are the pipeline's rows);
a member with a negative prompt runs its conditional and negative rows in one forward where the
pipeline runs two, one 8-bit level apart on a few values; inside running sets joined at every
step position (other guidance values, step counts, seeds, negative prompts, image-to-image
members at other timesteps) outputs stay within one level. The assertions allow one level on
at most 1 % of the values (the bound the engine promises) and require bit-identity where it
was measured.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from genmedia.models.runner import LoadedModel, run_batch
from genmedia.models.step_engine import engine_for, supports
from genmedia.models.step_flux import FluxMember, FluxStepEngine
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
    return tiny_model("flux", tmp_path_factory.mktemp("step-flux"), "f")


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> FluxStepEngine:
    eng = engine_for(model)
    assert isinstance(eng, FluxStepEngine)
    return eng


@pytest.mark.parametrize("guidance", [3.5, 1.0])
def test_alone_is_bit_identical_to_the_request_level_runner(
    model: LoadedModel, engine: FluxStepEngine, guidance: float
) -> None:
    job = make_job(model, "a", seed=5, num_inference_steps=3, num_images=2,
                   guidance_scale=guidance)  # fmt: skip
    member = engine.prepare(job)
    assert isinstance(member, FluxMember) and not member.guidance
    assert member.latents.shape[:2] == (2, 16)  # packed: (64 / 16) ** 2 patches
    assert member.added["guidance"].tolist() == [guidance, guidance]
    want = run_batch(model, [job])[0]
    got = alone(engine, job)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    assert not np.array_equal(got[0], got[1])  # seed + i per output


def test_negative_prompt_runs_true_cfg_rows(model: LoadedModel, engine: FluxStepEngine) -> None:
    job = make_job(model, "n", seed=2, negative_prompt="blurry", num_inference_steps=3)
    member = engine.prepare(job)
    assert member.guidance and member.embeds.shape[0] == 2 * member.rows
    assert member.added["pooled_projections"].shape[0] == 2 * member.rows
    assert_close(alone(engine, job), run_batch(model, [job])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: FluxStepEngine, join_at: int
) -> None:
    """A 4-step member runs from step 0; one with a negative prompt (true CFG rows), other
    guidance and steps joins at ``join_at``, a two-image one the step after."""
    first = make_job(model, "first", seed=5, num_inference_steps=4)
    second = make_job(model, "second", prompt="a dog", negative_prompt="blurry", seed=9,
                      num_inference_steps=3, guidance_scale=5.0)  # fmt: skip
    third = make_job(model, "third", seed=1, num_inference_steps=2, num_images=2,
                     guidance_scale=2.0)  # fmt: skip
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)])
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job))


@pytest.mark.parametrize("cancel_at", [1, 2])
def test_cancel_leaves_the_others_unchanged(
    model: LoadedModel, engine: FluxStepEngine, cancel_at: int
) -> None:
    keep = make_job(model, "keep", seed=4, num_inference_steps=4)
    drop = make_job(model, "drop", seed=6, num_inference_steps=4, negative_prompt="x")
    got = run_set(engine, [(0, keep), (0, drop)], cancel={"drop": cancel_at})
    assert set(got) == {"keep"}
    assert_close(got["keep"], alone(engine, keep))


def test_img2img_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: FluxStepEngine
) -> None:
    job = img2img_job(model, "a", strength=0.6, seed=3, num_inference_steps=5, num_images=2)
    source = source_image(0)
    assert engine.prepare(job, source).total == 3  # int(5 * 0.6): the tail of the schedule
    assert_close(alone(engine, job, source), run_batch(model, [job], inputs=[source])[0])


@pytest.mark.parametrize("join_at", [0, 1, 2])
def test_img2img_and_text_members_share_a_forward(
    model: LoadedModel, engine: FluxStepEngine, join_at: int
) -> None:
    """Image-to-image members at different sigmas of their own schedules and a text-to-image
    member, joined at different steps."""
    first = img2img_job(model, "first", strength=0.8, seed=5, num_inference_steps=5)
    second = img2img_job(model, "second", strength=0.5, seed=9, num_inference_steps=6,
                         negative_prompt="blurry")  # fmt: skip
    third = make_job(model, "third", seed=1, num_inference_steps=2)
    sources = {"first": source_image(1), "second": source_image(2)}
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)], sources=sources)
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job, sources.get(job.request_id)))


def test_what_runs_step_level(model: LoadedModel, engine: FluxStepEngine, tmp_path: Path) -> None:
    job = make_job(model, "a")
    assert supports(model, job)
    assert supports(model, img2img_job(model, "b", strength=0.5))
    with pytest.raises(ValueError, match="has no input image"):
        engine.prepare(img2img_job(model, "b", strength=0.5))
    inpaint = replace(job, params=replace(job.params, task="inpainting", strength=0.5))
    assert not supports(model, inpaint)  # Flux inpainting runs request-level
    with pytest.raises(ValueError, match="does not run 'inpainting'"):
        engine.prepare(inpaint)
    member = engine.prepare(make_job(model, "c", num_inference_steps=1))
    engine.step([member])
    with pytest.raises(ValueError, match="already finished"):
        engine.step([member])
