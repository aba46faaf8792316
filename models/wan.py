"""Wan 2.1-style text-to-video family: its spec, its request rule, its tiny checkpoint and its
runner.

Where this sits in a request's way: the gateway checks each request against ``SPEC``
(text-to-video only, ``num_frames = 4k + 1``: the VAE compresses time by 4 and keeps the first
frame, sizes a multiple of ``SIZE_MULTIPLE``: the VAE downsamples by 8 and the transformer packs
2x2 latent patches; no LoRA); at replica start the family worker resolves the weights
(``weights.resolve_source``) and calls ``load_pipeline``; for every batch ``run`` calls
``run_text_to_video`` with the batch's prompts, ``num_frames`` (checked again by
``check_num_frames``), ``width``/``height``, one ``torch.Generator`` per video and a per-step
callback. The frames it returns go to ``media.encode_video`` (MP4).

``build_tiny`` writes a deterministic random-weight checkpoint in the real classes: a
``WanTransformer3DModel`` (2 blocks), an ``AutoencoderKLWan`` (causal 3D VAE, 8x spatial and
4x temporal compression, as in Wan 2.1), a UMT5 encoder with the offline T5 tokenizer, and the
flow-matching UniPC scheduler real Wan 2.1 checkpoints ship. A 17-frame 64x64 clip with 4 steps
takes well under a second on a CPU core.

torch and diffusers are imported inside the functions that use them (``PIPELINE_CLASS`` and
``SCHEDULERS`` on first use): reading ``SPEC`` imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import (
    FamilySpec,
    StepCallback,
    per_job,
    seeded_batch,
    to_uint8,
)
from genmedia.models.family_io import load_checkpoint, save_tiny, swap_scheduler
from genmedia.models.tiny_tokenizers import build_t5_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, WanPipeline

    from genmedia.models.params import GenerationJob
    from genmedia.models.runner import LoadedModel

FAMILY = "wan"
TASK = "text-to-video"
SIZE_MULTIPLE = 16  # VAE spatial factor (8) * transformer patch (2)
DEFAULT_SIZE = 64
TEMPORAL_FACTOR = 4  # the VAE keeps the first frame, then compresses time by 4
DEFAULT_NUM_FRAMES = 17
MAX_NUM_FRAMES = 81  # Wan 2.1's own default clip length (5 s at 16 fps)
DEFAULT_FPS = 16  # Wan 2.1 is trained on 16 fps clips
NUM_FRAMES_RULE = (
    f"num_frames must be 4k + 1 (1, 5, 9, ..., {MAX_NUM_FRAMES}): the Wan VAE keeps the first "
    f"frame and compresses the rest by {TEMPORAL_FACTOR}"
)
TINY_VERSION = 1  # bump when build_tiny changes, so cached tiny checkpoints get rebuilt
# Longest UMT5 prompt in tokens (Wan's own default); a checkpoint whose tokenizer is shorter
# (the tiny one: 64) uses its tokenizer's length, so prompts are not padded past it.
MAX_SEQUENCE_LENGTH = 512
FLOW_SHIFT = 3.0  # Wan 2.1's shift for 480p; the scheduler config carries it
SCHEDULER_CLASSES: dict[str, str] = {  # request name -> diffusers flow-matching scheduler
    "unipc": "UniPCMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
DEFAULT_SCHEDULER = "unipc"

_TEXT_HIDDEN = 32
_LATENT_CHANNELS = 16


@dataclass(frozen=True)
class FlowScheduler:
    """A flow-matching scheduler class built from any Wan scheduler config.

    UniPC and flow-matching Euler name the same shift differently (``flow_shift`` / ``shift``)
    and UniPC needs its flow mode switched on, so ``from_config`` maps the shared settings
    instead of passing one class's config to the other. ``cls`` is the class the built
    scheduler has.
    """

    cls: Any

    def from_config(self, config: Mapping[str, Any]) -> Any:
        from diffusers import UniPCMultistepScheduler

        shift = float(config.get("flow_shift", config.get("shift", FLOW_SHIFT)))
        steps = int(config.get("num_train_timesteps", 1000))
        if self.cls is UniPCMultistepScheduler:
            return UniPCMultistepScheduler(
                num_train_timesteps=steps,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=shift,
            )
        return self.cls(num_train_timesteps=steps, shift=shift)


def pipeline_class() -> type[WanPipeline]:
    """The diffusers pipeline class of the family (imports diffusers)."""
    from diffusers import WanPipeline

    return WanPipeline


def scheduler_classes() -> dict[str, FlowScheduler]:
    """Scheduler name -> factory building it with the checkpoint's flow shift."""
    import diffusers

    return {name: FlowScheduler(getattr(diffusers, cls)) for name, cls in SCHEDULER_CLASSES.items()}


def __getattr__(name: str) -> Any:
    """``PIPELINE_CLASS`` and ``SCHEDULERS`` import diffusers, so they are built on first use."""
    if name == "PIPELINE_CLASS":
        return pipeline_class()
    if name == "SCHEDULERS":
        return scheduler_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def valid_num_frames(n: int) -> bool:
    """True when the Wan VAE can encode a clip of ``n`` frames (``n = 4k + 1``, in bounds)."""
    if isinstance(n, bool) or not isinstance(n, int):
        return False
    return 1 <= n <= MAX_NUM_FRAMES and n % TEMPORAL_FACTOR == 1


def check_num_frames(n: int) -> int:
    """``n`` when valid, else a ValueError naming the rule and the nearest valid counts."""
    if valid_num_frames(n):
        return n
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"{NUM_FRAMES_RULE}; got {n!r}")
    if n < 1 or n > MAX_NUM_FRAMES:
        near = "1" if n < 1 else f"{MAX_NUM_FRAMES}"
    else:
        lower = (n - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
        near = f"{lower} or {lower + TEMPORAL_FACTOR}"
    raise ValueError(f"{NUM_FRAMES_RULE}; got {n} (nearest valid: {near})")


def _tiny_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=24,  # rope splits it 8 (time) / 8 (height) / 8 (width)
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        text_dim=_TEXT_HIDDEN,
        freq_dim=64,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )


def _tiny_umt5(tokenizer: Any) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_HIDDEN,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # as umt5-xxl
        tie_word_embeddings=False,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return UMT5EncoderModel(config)


def build_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline components, each initialized right after ``torch.manual_seed``."""
    import torch
    from diffusers import AutoencoderKLWan

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = _tiny_transformer()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=_LATENT_CHANNELS,
        dim_mult=[1, 1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_umt5(tokenizer)
    scheduler = scheduler_classes()[DEFAULT_SCHEDULER].from_config({"flow_shift": FLOW_SHIFT})
    return {
        "transformer": transformer,
        "transformer_2": None,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def build_tiny(out_dir: Path, seed: int = 0) -> None:
    """Write a deterministic random-weight Wan checkpoint to ``out_dir`` (atomically)."""
    pipe = pipeline_class()(**build_components(seed))
    save_tiny(pipe, out_dir, family=FAMILY, seed=seed, version=TINY_VERSION)


def load_pipeline(
    path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DiffusionPipeline:
    """Load a safetensors-only Wan checkpoint directory, offline, onto ``device``.

    The VAE stays in float32 whatever ``dtype`` is (Wan's own recommendation: its decoder loses
    detail in half precision).
    """
    import torch

    return load_checkpoint(
        pipeline_class, path, dtype, device, component_dtypes={"vae": torch.float32}
    )


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by scheduler ``name`` with the checkpoint's flow shift."""
    swap_scheduler(pipe, FAMILY, scheduler_classes(), name)


def call_kwargs(*, guidance_scale: float, negative_prompts: list[str] | None) -> dict[str, Any]:
    """Family-specific ``__call__`` keyword arguments: classifier-free guidance.

    A missing negative prompt is the empty prompt in Wan, so ``None`` and ``[""] * n`` give the
    same videos (requests with and without negative prompts can share a batch).
    """
    kwargs: dict[str, Any] = {"guidance_scale": float(guidance_scale)}
    if negative_prompts is not None:
        kwargs["negative_prompt"] = list(negative_prompts)
    return kwargs


def sequence_length(pipe: DiffusionPipeline) -> int:
    """Prompt tokens the pipeline encodes: the tokenizer's length, at most Wan's 512."""
    return min(MAX_SEQUENCE_LENGTH, int(pipe.tokenizer.model_max_length))  # type: ignore[attr-defined]


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
            raise ValueError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE} for {FAMILY}, got {value!r}"
            )


def run_text_to_video(
    pipe: DiffusionPipeline,
    prompts: list[str],
    *,
    num_frames: int,
    width: int,
    height: int,
    steps: int,
    generators: list[torch.Generator],
    guidance_scale: float = 5.0,
    negative_prompts: list[str] | None = None,
    on_step: StepCallback | None = None,
    on_latents: Callable[[int, Any], None] | None = None,
) -> np.ndarray:
    """One pipeline call: a video per prompt, as uint8 frames ``[N, F, H, W, 3]``.

    ``generators`` holds one generator per prompt (a video depends on its own seed, not on the
    batch). ``on_step(done, total)`` runs after each denoising step and may raise to stop the
    call; ``on_latents(done, latents)`` then gets the latents (live previews). Raises
    ValueError for a bad ``num_frames`` or size before any compute.
    """
    import torch

    check_num_frames(num_frames)
    _check_size(width, height)
    if not prompts:
        raise ValueError("run_text_to_video needs at least one prompt")
    if len(generators) != len(prompts):
        raise ValueError(f"got {len(generators)} generators for {len(prompts)} prompts")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    kwargs = call_kwargs(guidance_scale=guidance_scale, negative_prompts=negative_prompts)
    kwargs["max_sequence_length"] = sequence_length(pipe)
    if on_step is not None:

        def _callback(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict) -> dict:
            on_step(min(step + 1, steps), steps)
            latents = callback_kwargs.get("latents")
            if on_latents is not None and latents is not None:
                on_latents(min(step + 1, steps), latents)
            return callback_kwargs

        kwargs["callback_on_step_end"] = _callback
    with torch.inference_mode():
        out = pipe(  # type: ignore[operator]
            prompt=list(prompts),
            num_frames=num_frames,
            width=width,
            height=height,
            num_inference_steps=steps,
            generator=list(generators),
            output_type="np",
            **kwargs,
        )
    return to_uint8(np.asarray(out.frames))  # [N, F, H, W, 3] floats in [0, 1]


def run(
    model: LoadedModel,
    jobs: list[GenerationJob],
    on_step: StepCallback | None = None,
    inputs: list[dict] | None = None,
) -> list[list[np.ndarray]]:
    """One ``run_text_to_video`` call for the batch: each job's videos ``[F, H, W, 3]`` uint8
    (``inputs``: none for text-to-video)."""
    from genmedia.models.runner import latents_callback

    params = jobs[0].params
    if params.num_frames is None:
        raise ValueError("a text-to-video batch needs num_frames")
    prompts, negatives, generators = seeded_batch(jobs)
    frames = run_text_to_video(
        model.call_view(params.scheduler),
        prompts,
        num_frames=params.num_frames,
        width=params.width,
        height=params.height,
        steps=params.num_inference_steps,
        generators=generators,
        guidance_scale=params.guidance_scale,
        negative_prompts=negatives if jobs[0].negative_prompt is not None else None,
        on_step=on_step,
        on_latents=latents_callback(),
    )
    return per_job(jobs, frames)


SPEC = FamilySpec(
    name=FAMILY,
    title="Wan 2.1-style video (3D DiT + causal video VAE + UMT5)",
    tasks=(TASK,),
    schedulers=tuple(SCHEDULER_CLASSES),
    default_scheduler=DEFAULT_SCHEDULER,
    size_multiple=SIZE_MULTIPLE,
    build_tiny=build_tiny,
    load_pipeline=load_pipeline,
    scheduler_factories=scheduler_classes,
    run=run,
    tiny_version=TINY_VERSION,
    num_frames_step=TEMPORAL_FACTOR,
)
