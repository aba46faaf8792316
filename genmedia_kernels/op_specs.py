"""Which fused op matches which model family, as light data (no torch, no triton).

Where this sits in a request's way: the catalog validator reads it at deploy time to reject an op
for a family whose denoiser has no such pattern; the patcher reads it at model load time to know
which diffusers modules to look for. Ops are installed into the denoiser only (the UNet or the
transformer: the part that runs on every denoising step); the VAE and the text encoders run once
per request and keep their stock modules.

The patterns were read from the diffusers 0.42 classes each family loads:

- sd15 / sdxl: ``UNet2DConditionModel``. ``ResnetBlock2D`` runs ``norm1`` (GroupNorm) then
  ``nonlinearity`` (SiLU), and again ``norm2`` then SiLU; ``conv_norm_out`` + ``conv_act`` closes
  the UNet. ``BasicTransformerBlock`` feed-forwards use ``GEGLU``. No RMSNorm, no rotary
  embedding, no adaLN (its blocks use plain LayerNorm).
- flux: ``FluxTransformer2DModel``. ``FluxAttention`` has RMSNorm QK-norm (``norm_q``,
  ``norm_k``, ``norm_added_q``, ``norm_added_k``) and applies rotary embeddings to q and k;
  ``AdaLayerNormZero`` / ``AdaLayerNormZeroSingle`` / ``AdaLayerNormContinuous`` modulate a
  LayerNorm with shift/scale (and hand the gate to the block). No GroupNorm, and its
  feed-forwards use tanh-GELU without a gate (no GEGLU).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    """One fused op: what it replaces and in which families' denoisers it is found."""

    name: str
    fuses: str
    families: tuple[str, ...]
    pattern: str  # the diffusers modules the patcher rewrites
    looks_for: str  # the pattern in words, for error messages


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            name="groupnorm_silu",
            fuses="GroupNorm (statistics + affine) followed by SiLU",
            families=("sd15", "sdxl"),
            pattern="ResnetBlock2D norm1/norm2 + SiLU, UNet conv_norm_out + conv_act",
            looks_for="GroupNorm followed by SiLU",
        ),
        OpSpec(
            name="rmsnorm",
            fuses="RMSNorm: float32 mean of squares, rsqrt, scale by weight",
            families=("flux",),
            pattern="RMSNorm modules of FluxAttention (norm_q, norm_k, norm_added_q/k)",
            looks_for="RMSNorm (QK-norm)",
        ),
        OpSpec(
            name="rope",
            fuses="rotary embedding application (interleaved pairs) to q and k",
            families=("flux",),
            pattern="FluxAttention rotary application (installed with the attention processor)",
            looks_for="rotary position embedding",
        ),
        OpSpec(
            name="adaln",
            fuses="LayerNorm without affine + shift/scale modulation (1 + scale)",
            families=("flux",),
            pattern="AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous",
            looks_for="adaLN shift/scale modulation",
        ),
        OpSpec(
            name="geglu",
            fuses="GEGLU gate: split, exact GELU of the gate half, multiply",
            families=("sd15", "sdxl"),
            pattern="GEGLU feed-forward activations of BasicTransformerBlock",
            looks_for="GEGLU feed-forward",
        ),
    )
}

OP_NAMES: tuple[str, ...] = tuple(OPS)

# The denoiser class each family loads (for messages).
DENOISERS: dict[str, str] = {
    "sd15": "UNet2DConditionModel",
    "sdxl": "UNet2DConditionModel",
    "flux": "FluxTransformer2DModel",
}

# Step caches (diffusers hooks) per family. First-Block-Cache needs a CacheMixin transformer
# whose blocks sit in ``transformer_blocks``-style ModuleLists; UNet2DConditionModel is neither.
CACHE_KINDS: dict[str, str] = {
    "first_block_cache": "diffusers First-Block-Cache: skip the remaining blocks when the first "
    "block's residual changed less than `threshold` (relative L1) since the last computed step",
}
CACHE_FAMILIES: dict[str, tuple[str, ...]] = {"first_block_cache": ("flux",)}
# Asked for often, not in diffusers 0.42 (its First-Block-Cache builds on the same idea).
CACHE_NOT_AVAILABLE: dict[str, str] = {
    "teacache": "TeaCache is not part of diffusers 0.42; use first_block_cache, which builds on "
    "the same idea (reuse the residual of the later blocks while the first block's output "
    "barely changes)",
}


def ops_for_family(family: str) -> tuple[str, ...]:
    """The op names whose pattern exists in ``family``'s denoiser."""
    return tuple(name for name, spec in OPS.items() if family in spec.families)
