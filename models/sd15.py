"""Stable Diffusion 1.5 family: its spec, its tiny checkpoint and its pipeline adapter.

Where this sits in a request's way: the gateway checks each request against ``SPEC`` (tasks,
schedulers, sizes a multiple of ``SIZE_MULTIPLE``, LoRA on the UNet and the text encoder); at
replica start the family worker resolves the weights (``weights.resolve_source``) and calls
``load_pipeline``; for every batch ``run`` makes one call of the batch's task pipeline
(``runner.run_images``) with a scheduler from ``SCHEDULERS``, ``prompt=[...]``,
``width``/``height``, ``num_inference_steps``, one ``torch.Generator`` per image,
``output_type="np"``, ``callback_on_step_end`` and ``**call_kwargs(...)``.

``build_tiny`` writes a deterministic random-weight checkpoint in the real diffusers /
transformers classes (a real 2-level cross-attention UNet, a 4-level VAE so the latent is 1/8
of the image as in SD1.5, a 2-layer CLIP text encoder) for tests and CPU-only clusters.

torch and diffusers are imported inside the functions that use them (``PIPELINE_CLASS`` and
``SCHEDULERS`` on first use): reading ``SPEC`` imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.models.family import FamilySpec, diffusers_classes, image_runner
from genmedia.models.family_io import load_checkpoint, save_tiny, swap_scheduler
from genmedia.models.tiny_tokenizers import CLIP_MAX_LENGTH, build_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionPipeline
    from transformers import CLIPTextConfig


FAMILY = "sd15"
TASKS = ("text-to-image", "image-to-image", "inpainting")
SCHEDULER_CLASSES: dict[str, str] = {  # request name -> diffusers scheduler class
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DEFAULT_SCHEDULER = "euler"
SIZE_MULTIPLE = 8  # VAE downsamples by 8; the UNet needs nothing more at 2 levels
DEFAULT_SIZE = 64  # default width/height of the tiny checkpoint (unet sample_size * 8)
TINY_VERSION = 1  # bump when build_tiny changes, so cached tiny checkpoints get rebuilt
LORA_COMPONENTS = ("unet", "text_encoder")  # prefixes of diffusers' saved LoRA keys

# The noise schedule of SD1.5 (scheduler_config.json of the original checkpoint).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,  # DDIM
    "set_alpha_to_one": False,  # DDIM / PNDM
    "skip_prk_steps": True,  # PNDM: PLMS only (also makes 1-3 step runs work)
}


def pipeline_class() -> type[StableDiffusionPipeline]:
    """The diffusers pipeline class of the family (imports diffusers)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


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


def _tiny_clip_text_config(vocab_size: int, tokenizer: Any) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline components, each initialized right after ``torch.manual_seed``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_clip_tokenizer()

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=32,
        attention_head_dim=4,  # number of heads per block in UNet2DConditionModel's naming
    )

    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    )

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_tiny_clip_text_config(len(tokenizer), tokenizer))

    scheduler = scheduler_classes()[DEFAULT_SCHEDULER].from_config(SCHEDULER_CONFIG)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def build_tiny(out_dir: Path, seed: int = 0) -> None:
    """Write a deterministic random-weight SD1.5 checkpoint to ``out_dir`` (atomically)."""
    pipe = pipeline_class()(**build_components(seed), requires_safety_checker=False)
    save_tiny(pipe, out_dir, family=FAMILY, seed=seed, version=TINY_VERSION)


def load_pipeline(
    path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DiffusionPipeline:
    """Load a safetensors-only SD1.5 checkpoint directory, offline, onto ``device``."""
    return load_checkpoint(
        pipeline_class,
        path,
        dtype,
        device,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by scheduler ``name`` built from the checkpoint's config."""
    swap_scheduler(pipe, FAMILY, scheduler_classes(), name)


def call_kwargs(*, guidance_scale: float, negative_prompts: list[str] | None) -> dict[str, Any]:
    """Family-specific ``__call__`` keyword arguments: classifier-free guidance.

    A missing negative prompt is the empty prompt in SD1.5, so ``None`` and ``[""] * n`` give
    the same images (requests with and without negative prompts can share a batch).
    """
    kwargs: dict[str, Any] = {"guidance_scale": float(guidance_scale)}
    if negative_prompts is not None:
        kwargs["negative_prompt"] = list(negative_prompts)
    return kwargs


SPEC = FamilySpec(
    name=FAMILY,
    title="Stable Diffusion 1.5-style (UNet + CLIP)",
    tasks=TASKS,
    schedulers=tuple(SCHEDULER_CLASSES),
    default_scheduler=DEFAULT_SCHEDULER,
    size_multiple=SIZE_MULTIPLE,
    build_tiny=build_tiny,
    load_pipeline=load_pipeline,
    scheduler_factories=scheduler_classes,
    run=image_runner(call_kwargs),
    tiny_version=TINY_VERSION,
    lora_components=LORA_COMPONENTS,
    lora_denoiser="unet",
)
