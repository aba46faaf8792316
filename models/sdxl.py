"""Stable Diffusion XL family: its spec, its tiny checkpoint and its pipeline adapter.

Where this sits in a request's way: the gateway checks each request against ``SPEC`` (tasks,
schedulers, sizes a multiple of ``SIZE_MULTIPLE``, LoRA on the UNet and both text encoders); at
replica start the family worker resolves the weights (``weights.resolve_source``) and calls
``load_pipeline``; for every batch ``run`` makes one call of the batch's task pipeline
(``runner.run_images``) with a scheduler from ``SCHEDULERS``, ``prompt=[...]``,
``width``/``height``, ``num_inference_steps``, one ``torch.Generator`` per image,
``output_type="np"``, ``callback_on_step_end`` and ``**call_kwargs(...)``.

``build_tiny`` writes a deterministic random-weight checkpoint in the real classes: a 2-level
UNet with SDXL's ``text_time`` added conditioning (pooled text embeds + size/crop ids), two CLIP
text encoders (the second with projection) whose hidden states are concatenated for
cross-attention, and a 4-level VAE (latent = image / 8).

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
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig


FAMILY = "sdxl"
TASKS = ("text-to-image", "image-to-image", "inpainting")
SCHEDULER_CLASSES: dict[str, str] = {  # request name -> diffusers scheduler class
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DEFAULT_SCHEDULER = "euler"
SIZE_MULTIPLE = 8
DEFAULT_SIZE = 64
TINY_VERSION = 1  # bump when build_tiny changes, so cached tiny checkpoints get rebuilt
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # prefixes of saved LoRA keys

# The noise schedule of SDXL base (scheduler_config.json of the original checkpoint).
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
    "interpolation_type": "linear",
}

_TEXT_HIDDEN = 32  # hidden size of each text encoder; the UNet attends to both: 2 * 32
_POOLED_DIM = 32  # projection_dim of text_encoder_2 (pooled text embeds)
_TIME_EMBED_DIM = 8  # addition_time_embed_dim; 6 size/crop ids are embedded with it


def pipeline_class() -> type[StableDiffusionXLPipeline]:
    """The diffusers pipeline class of the family (imports diffusers)."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline


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
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        projection_dim=_POOLED_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=16,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * _TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _POOLED_DIM,
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def build_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline components, each initialized right after ``torch.manual_seed``."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet = _tiny_unet()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_tiny_clip_text_config(len(tokenizer), tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(
        _tiny_clip_text_config(len(tokenizer_2), tokenizer_2)
    )
    scheduler = scheduler_classes()[DEFAULT_SCHEDULER].from_config(SCHEDULER_CONFIG)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_tiny(out_dir: Path, seed: int = 0) -> None:
    """Write a deterministic random-weight SDXL checkpoint to ``out_dir`` (atomically)."""
    pipe = pipeline_class()(**build_components(seed), add_watermarker=False)
    save_tiny(pipe, out_dir, family=FAMILY, seed=seed, version=TINY_VERSION)


def load_pipeline(
    path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DiffusionPipeline:
    """Load a safetensors-only SDXL checkpoint directory, offline, onto ``device``."""
    # add_watermarker=False: don't depend on whether invisible-watermark is installed
    return load_checkpoint(pipeline_class, path, dtype, device, add_watermarker=False)


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by scheduler ``name`` built from the checkpoint's config."""
    swap_scheduler(pipe, FAMILY, scheduler_classes(), name)


def call_kwargs(*, guidance_scale: float, negative_prompts: list[str] | None) -> dict[str, Any]:
    """Family-specific ``__call__`` keyword arguments: classifier-free guidance.

    Careful when batching: SDXL checkpoints have ``force_zeros_for_empty_prompt``, so with
    ``negative_prompts=None`` the unconditional branch uses zero embeddings, while ``[""]``
    encodes the empty prompt. Requests without a negative prompt therefore give different
    images when batched with requests that have one; batch them separately.
    """
    kwargs: dict[str, Any] = {"guidance_scale": float(guidance_scale)}
    if negative_prompts is not None:
        kwargs["negative_prompt"] = list(negative_prompts)
    return kwargs


SPEC = FamilySpec(
    name=FAMILY,
    title="Stable Diffusion XL-style (UNet + two CLIP encoders)",
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
