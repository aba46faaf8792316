"""Stable Audio Open-style text-to-audio family: its spec, its duration rule, its tiny checkpoint
and its runner.

Where this sits in a request's way: the gateway checks each request against ``SPEC``
(text-to-audio only, no LoRA; ``duration_s`` within the catalog's bounds); at replica start the
family worker resolves the weights (``weights.resolve_source``) and calls ``load_pipeline``; for
every batch ``run`` calls ``run_text_to_audio`` with the batch's prompts, ``duration_s``
(checked against ``duration_bounds(pipe)``: the DiT's latent length times the VAE hop, over the
sample rate), ``steps``, one ``torch.Generator`` per waveform and a per-step callback. The
waveforms it returns go to ``media.encode_audio`` (WAV / FLAC / MP3) at ``sample_rate(pipe)``.

``build_tiny`` writes a deterministic random-weight checkpoint in the real classes: a
``StableAudioDiTModel`` (2 blocks), an ``AutoencoderOobleck`` (stereo, 16 kHz, hop 256), a T5
encoder with the offline T5 tokenizer, the ``StableAudioProjectionModel`` that conditions on the
prompt and on the start/end seconds, and the cosine DPM-Solver++ (SDE) scheduler of Stable Audio
Open. Its longest clip is ``256 * 256 / 16000 = 4.096`` seconds.

torch and diffusers are imported inside the functions that use them (``PIPELINE_CLASS`` and
``SCHEDULERS`` on first use): reading ``SPEC`` imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import (
    FamilySpec,
    StepCallback,
    diffusers_classes,
    per_job,
    seeded_batch,
)
from genmedia.models.family_io import load_checkpoint, save_tiny, swap_scheduler
from genmedia.models.tiny_tokenizers import build_t5_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, StableAudioPipeline

    from genmedia.models.params import GenerationJob
    from genmedia.models.runner import LoadedModel

FAMILY = "stable-audio"
TASK = "text-to-audio"
SCHEDULER_CLASSES: dict[str, str] = {  # request name -> diffusers scheduler class
    "cosine_dpmpp_2m_sde": "CosineDPMSolverMultistepScheduler",  # Stable Audio Open's own
    "edm_dpmpp_2m": "EDMDPMSolverMultistepScheduler",  # deterministic (ODE) DPM-Solver++
}
DEFAULT_SCHEDULER = "cosine_dpmpp_2m_sde"
SIZE_MULTIPLE = 1  # audio has no width/height; kept for the family interface
MIN_DURATION_S = 0.5
DEFAULT_DURATION_S = 2.0
TINY_VERSION = 1  # bump when build_tiny changes, so cached tiny checkpoints get rebuilt

# The scheduler config of Stable Audio Open 1.0 (EDM-style sigmas, v-prediction).
SCHEDULER_CONFIG: dict[str, Any] = {
    "sigma_min": 0.3,
    "sigma_max": 500.0,
    "sigma_data": 1.0,
    "sigma_schedule": "exponential",
    "prediction_type": "v_prediction",
    "rho": 7.0,
    "solver_order": 2,
    "num_train_timesteps": 1000,
}

_TEXT_HIDDEN = 32  # T5 d_model = conditioning dim (identity projection, as in the real model)
_LATENT_CHANNELS = 8
_LATENT_LENGTH = 256  # DiT sample_size: latent frames of the longest clip
_SAMPLE_RATE = 16_000
_DOWNSAMPLING = [2, 4, 4, 8]  # hop length 256 samples per latent frame
# The tiny checkpoint's audio format and longest clip (``duration_bounds`` reads any checkpoint's).
TINY_SAMPLE_RATE = _SAMPLE_RATE
TINY_MAX_DURATION_S = _LATENT_LENGTH * int(np.prod(_DOWNSAMPLING)) / _SAMPLE_RATE


def pipeline_class() -> type[StableAudioPipeline]:
    """The diffusers pipeline class of the family (imports diffusers)."""
    from diffusers import StableAudioPipeline

    return StableAudioPipeline


def scheduler_classes() -> dict[str, Any]:
    """Scheduler name -> diffusers class."""
    return diffusers_classes(SCHEDULER_CLASSES)


def __getattr__(name: str) -> Any:
    """``PIPELINE_CLASS`` and ``SCHEDULERS`` import diffusers, so they are built on first use."""
    if name == "PIPELINE_CLASS":
        return pipeline_class()
    if name == "SCHEDULERS":
        return scheduler_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tiny_transformer() -> Any:
    from diffusers import StableAudioDiTModel

    return StableAudioDiTModel(
        sample_size=_LATENT_LENGTH,
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        num_key_value_attention_heads=1,
        cross_attention_dim=_TEXT_HIDDEN,
        cross_attention_input_dim=_TEXT_HIDDEN,
        global_states_input_dim=2 * _TEXT_HIDDEN,  # start and end seconds, concatenated
        time_proj_dim=32,
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderOobleck

    return AutoencoderOobleck(
        encoder_hidden_size=8,
        downsampling_ratios=_DOWNSAMPLING,
        channel_multiples=[1, 2, 2, 4],
        decoder_channels=8,
        decoder_input_channels=_LATENT_CHANNELS,
        audio_channels=2,
        sampling_rate=_SAMPLE_RATE,
    )


def _tiny_t5(tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_HIDDEN,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="relu",  # T5 (v1.0) base, as Stable Audio Open's encoder
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]  # config kwarg
    )
    return T5EncoderModel(config)


def build_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline components, each initialized right after ``torch.manual_seed``."""
    import torch
    from diffusers import StableAudioProjectionModel

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = _tiny_transformer()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_t5(tokenizer)
    torch.manual_seed(seed + 3)
    projection_model = StableAudioProjectionModel(
        text_encoder_dim=_TEXT_HIDDEN,
        conditioning_dim=_TEXT_HIDDEN,
        min_value=0,
        max_value=512,  # seconds range of the number conditioners, as in Stable Audio Open
    )
    scheduler = scheduler_classes()[DEFAULT_SCHEDULER](**SCHEDULER_CONFIG)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "projection_model": projection_model,
        "scheduler": scheduler,
    }


def build_tiny(out_dir: Path, seed: int = 0) -> None:
    """Write a deterministic random-weight Stable Audio checkpoint to ``out_dir`` (atomically)."""
    pipe = pipeline_class()(**build_components(seed))
    save_tiny(pipe, out_dir, family=FAMILY, seed=seed, version=TINY_VERSION)


def load_pipeline(
    path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DiffusionPipeline:
    """Load a safetensors-only Stable Audio checkpoint directory, offline, onto ``device``."""
    return load_checkpoint(pipeline_class, path, dtype, device)


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by scheduler ``name`` built from the checkpoint's config."""
    swap_scheduler(pipe, FAMILY, scheduler_classes(), name)


def call_kwargs(*, guidance_scale: float, negative_prompts: list[str] | None) -> dict[str, Any]:
    """Family-specific ``__call__`` keyword arguments: classifier-free guidance.

    Without negative prompts the unconditional branch is all zeros (not the empty prompt), so
    requests with and without negative prompts should not share a batch.
    """
    kwargs: dict[str, Any] = {"guidance_scale": float(guidance_scale)}
    if negative_prompts is not None:
        kwargs["negative_prompt"] = list(negative_prompts)
    return kwargs


def sample_rate(pipe: DiffusionPipeline) -> int:
    """Samples per second of the waveforms the pipeline returns."""
    return int(pipe.vae.config.sampling_rate)  # type: ignore[attr-defined]


def _bounds(
    transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]
) -> tuple[float, float]:
    hop = int(np.prod(vae_config["downsampling_ratios"]))
    longest = transformer_config["sample_size"] * hop / vae_config["sampling_rate"]
    return MIN_DURATION_S, float(longest)


def duration_bounds(pipe: DiffusionPipeline) -> tuple[float, float]:
    """``(min, max)`` seconds a request may ask for: the model's longest clip is its latent
    length times the VAE hop, over the sample rate."""
    return _bounds(pipe.transformer.config, pipe.vae.config)  # type: ignore[attr-defined]


def checkpoint_duration_bounds(path: Path) -> tuple[float, float]:
    """``duration_bounds`` read from a checkpoint directory's config files, without loading it
    (for checking a catalog's ``duration_s`` bounds at deploy time)."""
    path = Path(path)
    try:
        transformer = json.loads((path / "transformer" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return _bounds(transformer, vae)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"cannot read the audio length limits of {path} (transformer/config.json "
            f"sample_size, vae/config.json downsampling_ratios and sampling_rate): {exc}"
        ) from exc


def check_duration(pipe: DiffusionPipeline, duration_s: float) -> float:
    """``duration_s`` as a float when within ``duration_bounds``, else a ValueError naming them."""
    low, high = duration_bounds(pipe)
    if (
        isinstance(duration_s, bool)
        or not isinstance(duration_s, int | float)
        or not low <= duration_s <= high
    ):
        raise ValueError(
            f"duration_s must be between {low:g} and {high:g} seconds for this model "
            f"(its longest clip), got {duration_s!r}"
        )
    return float(duration_s)


def run_text_to_audio(
    pipe: DiffusionPipeline,
    prompts: list[str],
    *,
    duration_s: float,
    steps: int,
    generators: list[torch.Generator],
    guidance_scale: float = 7.0,
    negative_prompts: list[str] | None = None,
    on_step: StepCallback | None = None,
) -> np.ndarray:
    """One pipeline call: a waveform per prompt, float32 ``[N, channels, samples]`` in [-1, 1].

    ``samples`` is ``int(duration_s * sample_rate(pipe))``. ``generators`` holds one generator
    per prompt (the latents and the SDE noise of a waveform come from its own seed, so the
    batch does not change it). ``on_step(done, total)`` runs after each denoising step and may
    raise to stop the call. Raises ValueError for a duration out of bounds before any compute.
    """
    import torch

    duration = check_duration(pipe, duration_s)
    if not prompts:
        raise ValueError("run_text_to_audio needs at least one prompt")
    if len(generators) != len(prompts):
        raise ValueError(f"got {len(generators)} generators for {len(prompts)} prompts")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    kwargs = call_kwargs(guidance_scale=guidance_scale, negative_prompts=negative_prompts)
    if on_step is not None:
        # StableAudioPipeline only has the legacy per-step callback (step index, t, latents).
        kwargs["callback"] = lambda step, _t, _latents: on_step(min(step + 1, steps), steps)
        kwargs["callback_steps"] = 1
    with torch.inference_mode():
        out = pipe(  # type: ignore[operator]
            prompt=list(prompts),
            audio_start_in_s=0.0,
            audio_end_in_s=duration,
            num_inference_steps=steps,
            generator=list(generators),
            output_type="np",
            **kwargs,
        )
    audio = np.asarray(out.audios, dtype=np.float32)
    return np.clip(audio, -1.0, 1.0)


def run(
    model: LoadedModel,
    jobs: list[GenerationJob],
    on_step: StepCallback | None = None,
    inputs: list[dict] | None = None,
) -> list[list[np.ndarray]]:
    """One ``run_text_to_audio`` call for the batch: each job's waveforms ``[channels,
    samples]`` float32 (``inputs``: none for text-to-audio)."""
    params = jobs[0].params
    if params.duration_s is None:
        raise ValueError("a text-to-audio batch needs duration_s")
    prompts, negatives, generators = seeded_batch(jobs)
    waves = run_text_to_audio(
        model.call_view(params.scheduler),
        prompts,
        duration_s=params.duration_s,
        steps=params.num_inference_steps,
        generators=generators,
        guidance_scale=params.guidance_scale,
        negative_prompts=negatives if jobs[0].negative_prompt is not None else None,
        on_step=on_step,
    )
    return per_job(jobs, waves)


SPEC = FamilySpec(
    name=FAMILY,
    title="Stable Audio Open-style audio (DiT + Oobleck VAE + T5)",
    tasks=(TASK,),
    schedulers=tuple(SCHEDULER_CLASSES),
    default_scheduler=DEFAULT_SCHEDULER,
    size_multiple=SIZE_MULTIPLE,
    build_tiny=build_tiny,
    load_pipeline=load_pipeline,
    scheduler_factories=scheduler_classes,
    run=run,
    tiny_version=TINY_VERSION,
)
