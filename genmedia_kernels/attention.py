"""Attention implementations named by ``genmedia.kernels.backends``; (B, H, S, D) in and out.

Where this sits in a request's way: the attention processors installed by the patcher at model
load time call one of these in every attention layer of every denoising step. Which one is
decided once per layer at load time (``backends.select_backend``); ``get_impl`` imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from genmedia.kernels.backends import BACKENDS
from genmedia.kernels.reference import math_attention

AttentionFn = Callable[..., torch.Tensor]

__all__ = [
    "get_impl",
    "math_attention",
    "sdpa_attention",
    "sdpa_efficient_attention",
    "sdpa_flash_attention",
    "sdpa_math_attention",
    "xformers_attention",
]


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """torch SDPA; torch chooses flash / efficient / cudnn / math itself."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _sdpa_only(backend: SDPBackend) -> AttentionFn:
    def run(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    run.__name__ = f"sdpa_{backend.name.lower()}"
    return run


sdpa_flash_attention = _sdpa_only(SDPBackend.FLASH_ATTENTION)
sdpa_efficient_attention = _sdpa_only(SDPBackend.EFFICIENT_ATTENTION)
sdpa_math_attention = _sdpa_only(SDPBackend.MATH)


def _xformers_bias(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """An additive (B, H, Sq, Sk) bias whose row stride is a multiple of 8, as xformers wants."""
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~mask, float("-inf")
        )
    padded = -(-sk // 8) * 8
    storage = torch.empty((b, h, sq, padded), dtype=q.dtype, device=q.device)
    bias = storage[..., :sk]
    bias.copy_(mask.to(q.dtype).expand(b, h, sq, sk))
    return bias


def xformers_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """xformers ``memory_efficient_attention`` (its layout is (B, S, H, D))."""
    import xformers.ops as xops

    bias = _xformers_bias(mask, q, k) if mask is not None else None
    out: torch.Tensor = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


@cache
def get_impl(name: str) -> AttentionFn:
    """The implementation of backend ``name`` (imported on first use)."""
    module, _, attr = BACKENDS[name].impl.partition(":")
    impl: AttentionFn = getattr(importlib.import_module(module), attr)
    return impl
