"""The Wan step engine (``models/step_wan.py``) on the tiny Wan-style model: 64x64, 5 frames,
few steps.

Reproducibility, measured on x86-64 CPU (torch's CPU kernels): a member without guidance alone
is bit-identical to the request-level runner (its rows are the pipeline's rows); with guidance
its conditional and unconditional rows share one forward where the pipeline runs two, one 8-bit
level apart on a few values; inside running sets joined at every step position (other samplers,
step counts, guidance, negative prompts) each video stays within one level. The assertions
allow one level on at most 1 % of the values (the bound the engine promises) and require
bit-identity where it was measured. ``decode`` returns what the request-level runner returns
per video (uint8 ``[F, H, W, 3]``), which the worker stores unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from genmedia.models.runner import LoadedModel, run_batch
from genmedia.models.step_engine import engine_for, supports
from genmedia.models.step_wan import WanStepEngine, plain
from tests.unit.models.step_helpers import (
    alone,
    assert_close,
    make_job,
    run_set,
    tiny_media_model,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return tiny_media_model("wan", tmp_path_factory.mktemp("step-wan"), "text-to-video", "w")


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> WanStepEngine:
    eng = engine_for(model)
    assert isinstance(eng, WanStepEngine)
    return eng


@pytest.mark.parametrize("scheduler", ["unipc", "flow_euler"])
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: WanStepEngine, scheduler: str
) -> None:
    job = make_job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2)
    member = engine.prepare(job)
    assert member.guidance and member.embeds.shape[0] == 2 * member.rows
    want = run_batch(model, [job])[0]
    got = alone(engine, job)
    assert [g.shape for g in got] == [(5, 64, 64, 3)] * 2 and got[0].dtype == np.uint8
    assert_close(got, want)
    assert not np.array_equal(got[0], got[1])  # seed + i per output


def test_without_guidance_alone_is_bit_identical(model: LoadedModel, engine: WanStepEngine) -> None:
    job = make_job(model, "o", seed=2, guidance_scale=1.0, num_inference_steps=3)
    assert not engine.prepare(job).guidance
    for g, w in zip(alone(engine, job), run_batch(model, [job])[0], strict=True):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: WanStepEngine, join_at: int
) -> None:
    """A 4-step UniPC member runs from step 0; an Euler member with a negative prompt and its
    own guidance joins at ``join_at``, a two-video one the step after."""
    first = make_job(model, "first", seed=5, num_inference_steps=4)
    second = make_job(model, "second", prompt="a dog", negative_prompt="blurry", seed=9,
                      scheduler="flow_euler", num_inference_steps=3,
                      guidance_scale=3.0)  # fmt: skip
    third = make_job(model, "third", seed=1, num_inference_steps=2, num_images=2)
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)])
    for job in (first, second, third):
        assert_close(got[job.request_id], alone(engine, job))


@pytest.mark.parametrize("cancel_at", [1, 2])
def test_cancel_leaves_the_others_unchanged(
    model: LoadedModel, engine: WanStepEngine, cancel_at: int
) -> None:
    keep = make_job(model, "keep", seed=4, num_inference_steps=4)
    drop = make_job(model, "drop", seed=6, num_inference_steps=4)
    got = run_set(engine, [(0, keep), (0, drop)], cancel={"drop": cancel_at})
    assert set(got) == {"keep"}
    assert_close(got["keep"], alone(engine, keep))


def test_what_runs_step_level(model: LoadedModel, engine: WanStepEngine) -> None:
    job = make_job(model, "a")
    assert supports(model, job) and plain(model.pipe)
    other = replace(job, params=replace(job.params, task="image-to-video"))
    assert not supports(model, other)
    with pytest.raises(ValueError, match="does not run 'image-to-video'"):
        engine.prepare(other)
    bad = replace(job, params=replace(job.params, num_frames=6))
    with pytest.raises(ValueError, match=r"num_frames must be 4k \+ 1"):
        engine.prepare(bad)
    member = engine.prepare(make_job(model, "c", num_inference_steps=1))
    engine.step([member])
    with pytest.raises(ValueError, match="already finished"):
        engine.step([member])


def test_wan22_style_pipelines_run_request_level(model: LoadedModel) -> None:
    """A second (low-noise) transformer or per-token timesteps: not step-level."""
    view = model.call_view("unipc")
    view.register_to_config(boundary_ratio=0.9)
    assert not plain(view)
    view = model.call_view("unipc")
    assert plain(view)
