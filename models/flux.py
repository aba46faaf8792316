"""FLUX.1 (dev-style, guidance-distilled) family: its spec, its tiny checkpoint and its pipeline
adapter.

Where this sits in a request's way: the gateway checks each request against ``SPEC`` (tasks, the
one flow-matching scheduler, sizes a multiple of ``SIZE_MULTIPLE``: the VAE downsamples by 8 and
the transformer packs 2x2 latent patches, so 16; LoRA on the transformer and the CLIP encoder);
at replica start the family worker resolves the weights (``weights.resolve_source``) and calls
``load_pipeline``; for every batch ``run`` makes one call of the batch's task pipeline
(``runner.run_images``) with ``prompt=[...]``, ``width``/``height``, ``num_inference_steps``,
one ``torch.Generator`` per image, ``output_type="np"``, ``callback_on_step_end`` and
``**call_kwargs(...)``.

``build_tiny`` writes a deterministic random-weight checkpoint in the real classes: a
``FluxTransformer2DModel`` with guidance embedding (1 double-stream + 1 single-stream block),
a 4-level VAE without quant convs (as in FLUX), a CLIP text encoder (pooled embedding) and a
T5 encoder (sequence embedding), and the flow-matching Euler scheduler with dynamic shifting.

torch and diffusers are imported inside the functions that use them (``PIPELINE_CLASS`` and
``SCHEDULERS`` on first use): reading ``SPEC`` imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.models.family import FamilySpec, diffusers_classes, image_runner
from genmedia.models.family_io import load_checkpoint, save_tiny, swap_scheduler
from genmedia.models.tiny_tokenizers import (
    CLIP_MAX_LENGTH,
    T5_MAX_LENGTH,
    build_clip_tokenizer,
    build_t5_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, FluxPipeline


FAMILY = "flux"
TASKS = ("text-to-image", "image-to-image", "inpainting")
SCHEDULER_CLASSES: dict[str, str] = {"flow_euler": "FlowMatchEulerDiscreteScheduler"}
DEFAULT_SCHEDULER = "flow_euler"
SIZE_MULTIPLE = 16  # vae_scale_factor (8) * 2x2 latent packing
DEFAULT_SIZE = 64
TINY_VERSION = 1  # bump when build_tiny changes, so cached tiny checkpoints get rebuilt
LORA_COMPONENTS = ("transformer", "text_encoder")  # prefixes of diffusers' saved LoRA keys
# Scale of true classifier-free guidance, used only when a batch has negative prompts (FLUX.1-dev
# is guidance-distilled: ``guidance_scale`` is an input of the model, not CFG).
DEFAULT_TRUE_CFG_SCALE = 4.0
# T5 sequence length passed to the pipeline (its own default, 512, would pad every prompt to 512
# tokens). Real FLUX.1-dev checkpoints allow up to 512.
MAX_SEQUENCE_LENGTH = T5_MAX_LENGTH

# The scheduler config of FLUX.1-dev (shift depends on the image token count).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

_LATENT_CHANNELS = 4
_TEXT_HIDDEN = 32


def pipeline_class() -> type[FluxPipeline]:
    """The diffusers pipeline class of the family (imports diffusers)."""
    from diffusers import FluxPipeline

    return FluxPipeline


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
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * _LATENT_CHANNELS,  # 2x2 packed latent patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,  # T5 d_model
        pooled_projection_dim=_TEXT_HIDDEN,  # CLIP pooled output
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
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
        latent_channels=_LATENT_CHANNELS,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def _tiny_clip(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=_TEXT_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
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
        feed_forward_proj="gated-gelu",  # T5 v1.1, as the FLUX T5-XXL encoder
        tie_word_embeddings=False,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def build_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline components, each initialized right after ``torch.manual_seed``."""
    import torch

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = _tiny_transformer()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_clip(tokenizer)
    torch.manual_seed(seed + 3)
    text_encoder_2 = _tiny_t5(tokenizer_2)
    scheduler = scheduler_classes()[DEFAULT_SCHEDULER](**SCHEDULER_CONFIG)
    return {
        "transformer": transformer,
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
    """Write a deterministic random-weight FLUX checkpoint to ``out_dir`` (atomically)."""
    pipe = pipeline_class()(**build_components(seed))
    save_tiny(pipe, out_dir, family=FAMILY, seed=seed, version=TINY_VERSION)


def load_pipeline(
    path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
) -> DiffusionPipeline:
    """Load a safetensors-only FLUX checkpoint directory, offline, onto ``device``."""
    return load_checkpoint(pipeline_class, path, dtype, device)


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by scheduler ``name`` built from the checkpoint's config."""
    swap_scheduler(pipe, FAMILY, scheduler_classes(), name)


def call_kwargs(
    *,
    guidance_scale: float,
    negative_prompts: list[str] | None,
    true_cfg_scale: float | None = None,
) -> dict[str, Any]:
    """Family-specific ``__call__`` keyword arguments.

    ``guidance_scale`` is FLUX's distilled guidance (a model input; no extra compute).
    Negative prompts only act through true CFG, so they are passed together with
    ``true_cfg_scale`` (``DEFAULT_TRUE_CFG_SCALE`` unless given, must be > 1), which doubles the
    transformer work of the batch. Requests with and without negative prompts should not share
    a batch: in a batch with negatives, the others would be guided against the empty prompt.
    """
    kwargs: dict[str, Any] = {
        "guidance_scale": float(guidance_scale),
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    }
    if negative_prompts is not None:
        scale = DEFAULT_TRUE_CFG_SCALE if true_cfg_scale is None else float(true_cfg_scale)
        if scale <= 1.0:
            raise ValueError(
                f"true_cfg_scale must be > 1 for negative prompts to have an effect, got {scale}"
            )
        kwargs["negative_prompt"] = list(negative_prompts)
        kwargs["true_cfg_scale"] = scale
    return kwargs


SPEC = FamilySpec(
    name=FAMILY,
    title="Flux-style (MMDiT transformer + CLIP + T5)",
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
    lora_denoiser="transformer",
)
