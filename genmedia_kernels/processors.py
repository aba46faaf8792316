"""Attention processors that run the selected backend (and Flux's fused RoPE) inside diffusers.

Where this sits in a request's way: the patcher installs them at model load time through
diffusers' own ``set_attn_processor``; every attention layer of every denoising step then calls
``__call__``. They replace exactly the stock processors they mirror and keep their semantics:

- ``UNetAttnProcessor`` replaces ``AttnProcessor2_0`` / ``AttnProcessor`` in the ``Attention``
  modules of ``UNet2DConditionModel`` (self- and cross-attention of every transformer block).
- ``FluxAttnProcessor`` replaces diffusers' ``FluxAttnProcessor`` in ``FluxAttention`` modules;
  it also applies the rotary embedding through the ``rope`` op when that op is installed.

A layer whose backend cannot take a mask (CUDA flash) runs masked calls on torch SDPA instead.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_flux import FluxAttention, _get_qkv_projections

from genmedia.kernels.attention import get_impl, sdpa_attention
from genmedia.kernels.dispatch import OpRunner
from genmedia.kernels.reference import rope as reference_rope

logger = logging.getLogger("genmedia.kernels")


class _Attend:
    """The chosen backend of one layer, with its mask fallback."""

    def __init__(self, backend: str, mask_ok: bool) -> None:
        self.backend = backend
        self.fn = get_impl(backend)
        self.mask_ok = mask_ok
        self._warned = False

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mask is not None and not self.mask_ok:
            if not self._warned:
                self._warned = True
                logger.info("attention %s takes no mask: masked calls run on sdpa", self.backend)
            return sdpa_attention(q, k, v, mask)
        return self.fn(q, k, v, mask)


class UNetAttnProcessor:
    """``Attention`` processor of UNet families running the selected backend."""

    def __init__(self, backend: str, mask_ok: bool = True) -> None:
        self.attend = _Attend(backend, mask_ok)

    @property
    def backend(self) -> str:
        return self.attend.backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            b, c, h, w = image_shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, context_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Default 1/sqrt(head_dim) scale, as the AttnProcessor2_0 this replaces.
        out = self.attend(query, key, value, attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout

        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        scaled: torch.Tensor = out / attn.rescale_output_factor  # the nn.Module calls: Any
        return scaled


class FluxAttnProcessor:
    """``FluxAttention`` processor running the selected backend and, optionally, fused RoPE."""

    def __init__(self, backend: str, mask_ok: bool = True, ops: OpRunner | None = None) -> None:
        self.attend = _Attend(backend, mask_ok)
        self.ops = ops  # set when the rope op is installed

    @property
    def backend(self) -> str:
        return self.attend.backend

    def _rope(self, x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.rope(x, freqs)
        cos, sin = freqs
        return reference_rope(x, cos.to(x.device), sin.to(x.device))

    def __call__(
        self,
        attn: FluxAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        query, key, value, ctx_query, ctx_key, ctx_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        # (B, S, H, D) until the attention call
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            ctx_query = attn.norm_added_q(ctx_query.unflatten(-1, (-1, attn.head_dim)))
            ctx_key = attn.norm_added_k(ctx_key.unflatten(-1, (-1, attn.head_dim)))
            ctx_value = ctx_value.unflatten(-1, (-1, attn.head_dim))
            # text tokens first, then image tokens
            query = torch.cat([ctx_query, query], dim=1)
            key = torch.cat([ctx_key, key], dim=1)
            value = torch.cat([ctx_value, value], dim=1)
        if image_rotary_emb is not None:
            query = self._rope(query, image_rotary_emb)
            key = self._rope(key, image_rotary_emb)

        out = self.attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask
        )
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out
        text_len = encoder_hidden_states.shape[1]
        ctx_out, out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        ctx_out = attn.to_add_out(ctx_out.contiguous())
        return out, ctx_out
