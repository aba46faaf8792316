"""The Stable Audio step engine (``models/step_audio.py``) on the tiny Stable Audio-style model:
1 s stereo clips at 16 kHz, few steps.

Reproducibility, measured on x86-64 CPU (torch's CPU kernels): waveforms are float32, so they
are compared as 8-bit levels of their [-1, 1] range, and by absolute difference. A member
alone vs the request-level runner is not bit-identical: the pipeline broadcasts one timestep
over its batch where the engine passes one per row, so the timestep projection rounds
differently (measured: at most ~5e-7 apart); inside running sets joined at every step position
(the SDE sampler and the deterministic one, negative prompts, guidance on and off) the same,
which moves a sample sitting on an 8-bit level boundary by one level now and then. The
assertions allow one level on at most 1 % of the values (the bound the engine promises) and at
most 1e-4 absolute.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from genmedia.models.runner import LoadedModel, run_batch
from genmedia.models.step_audio import AudioMember, AudioStepEngine
from genmedia.models.step_engine import engine_for, supports
from tests.unit.models.step_helpers import (
    alone,
    assert_close_audio,
    make_job,
    run_set,
    tiny_media_model,
)

# torchsde warns when the cosine schedule's sigmas step just outside its interval (it does the
# same for the request-level pipeline)
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

MAX_ABS = 1e-4  # float32 waveforms: how far a sample may move between set compositions


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return tiny_media_model("stable-audio", tmp_path_factory.mktemp("step-audio"),
                            "text-to-audio", "s")  # fmt: skip


@pytest.fixture(scope="module")
def engine(model: LoadedModel) -> AudioStepEngine:
    eng = engine_for(model)
    assert isinstance(eng, AudioStepEngine)
    return eng


def _close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert_close_audio(got, want)
    for g, w in zip(got, want, strict=True):
        assert float(np.abs(g - w).max()) <= MAX_ABS


@pytest.mark.parametrize(
    ("scheduler", "body"),
    [
        ("cosine_dpmpp_2m_sde", {}),
        ("cosine_dpmpp_2m_sde", {"negative_prompt": "noise"}),
        ("cosine_dpmpp_2m_sde", {"guidance_scale": 1.0}),
        ("edm_dpmpp_2m", {}),
    ],
)
def test_alone_matches_the_request_level_runner(
    model: LoadedModel, engine: AudioStepEngine, scheduler: str, body: dict
) -> None:
    job = make_job(model, "a", seed=5, scheduler=scheduler, num_inference_steps=3, num_images=2,
                   duration_s=0.75, **body)  # fmt: skip
    member = engine.prepare(job)
    assert isinstance(member, AudioMember) and member.span == (0, 12_000)
    assert member.embeds.shape[0] == (2 if member.guidance else 1) * member.rows
    got = alone(engine, job)
    assert [g.shape for g in got] == [(2, 12_000)] * 2
    _close(got, run_batch(model, [job])[0])
    assert not np.array_equal(got[0], got[1])  # seed + i per output


@pytest.mark.parametrize("join_at", [0, 1, 2, 3])
def test_joins_at_every_step_keep_each_output(
    model: LoadedModel, engine: AudioStepEngine, join_at: int
) -> None:
    """A 4-step SDE member runs from step 0; a deterministic-sampler member with a negative
    prompt and its own guidance joins at ``join_at``, a two-waveform one the step after (each
    keeps its own Brownian noise)."""
    first = make_job(model, "first", seed=5, num_inference_steps=4)
    second = make_job(model, "second", prompt="a dog", negative_prompt="noise", seed=9,
                      scheduler="edm_dpmpp_2m", num_inference_steps=3,
                      guidance_scale=3.0)  # fmt: skip
    third = make_job(model, "third", seed=1, num_inference_steps=2, num_images=2)
    got = run_set(engine, [(0, first), (join_at, second), (join_at + 1, third)])
    for job in (first, second, third):
        _close(got[job.request_id], alone(engine, job))


@pytest.mark.parametrize("cancel_at", [1, 2])
def test_cancel_leaves_the_others_unchanged(
    model: LoadedModel, engine: AudioStepEngine, cancel_at: int
) -> None:
    keep = make_job(model, "keep", seed=4, num_inference_steps=4)
    drop = make_job(model, "drop", seed=6, num_inference_steps=4)
    got = run_set(engine, [(0, keep), (0, drop)], cancel={"drop": cancel_at})
    assert set(got) == {"keep"}
    _close(got["keep"], alone(engine, keep))


def test_what_runs_step_level(model: LoadedModel, engine: AudioStepEngine) -> None:
    job = make_job(model, "a")
    assert supports(model, job)
    other = replace(job, params=replace(job.params, task="audio-to-audio"))
    assert not supports(model, other)
    with pytest.raises(ValueError, match="does not run 'audio-to-audio'"):
        engine.prepare(other)
    too_long = replace(job, params=replace(job.params, duration_s=9.0))
    with pytest.raises(ValueError, match="duration_s must be between"):
        engine.prepare(too_long)
    member = engine.prepare(make_job(model, "c", num_inference_steps=1))
    engine.step([member])
    with pytest.raises(ValueError, match="already finished"):
        engine.step([member])
