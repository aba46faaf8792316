"""Fused rotary embedding application, interleaved pairs (Flux q and k).

Where this sits in a request's way: the Flux attention processor installed by the patcher calls
``rope`` for q and for k in every attention call of every denoising step.

x (B, S, H, D) contiguous, cos/sin (S, D) float32. Each program takes one (b, s) position and a
block of heads, loads the even and odd elements of each pair, rotates them in float32 and stores
in x's dtype: one read and one write of x (the stock path builds a rotated copy with stack and
two float32 copies before the multiply-add).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_interleaved(
    x_ptr,
    cos_ptr,
    sin_ptr,
    y_ptr,
    seq_len,
    n_heads,
    half_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pos = tl.program_id(0)  # b * S + s
    s = pos % seq_len
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    pairs = tl.arange(0, BLOCK_P)
    pmask = pairs < half_dim
    mask = (heads < n_heads)[:, None] & pmask[None, :]
    dim = 2 * half_dim
    even = pos.to(tl.int64) * n_heads * dim + heads[:, None] * dim + 2 * pairs[None, :]
    x_even = tl.load(x_ptr + even, mask=mask, other=0.0).to(tl.float32)
    x_odd = tl.load(x_ptr + even + 1, mask=mask, other=0.0).to(tl.float32)
    freq = s * dim + 2 * pairs
    cos_even = tl.load(cos_ptr + freq, mask=pmask, other=0.0)[None, :]
    cos_odd = tl.load(cos_ptr + freq + 1, mask=pmask, other=0.0)[None, :]
    sin_even = tl.load(sin_ptr + freq, mask=pmask, other=0.0)[None, :]
    sin_odd = tl.load(sin_ptr + freq + 1, mask=pmask, other=0.0)[None, :]
    y_even = x_even * cos_even - x_odd * sin_even
    y_odd = x_odd * cos_odd + x_even * sin_odd
    out_ty = y_ptr.dtype.element_ty
    tl.store(y_ptr + even, y_even.to(out_ty), mask=mask)
    tl.store(y_ptr + even + 1, y_odd.to(out_ty), mask=mask)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate contiguous x (B, S, H, D) by float32 contiguous cos/sin (S, D)."""
    batch, seq_len, n_heads, dim = x.shape
    half_dim = dim // 2
    y = torch.empty_like(x)
    block_p = triton.next_power_of_2(half_dim)
    block_h = min(triton.next_power_of_2(n_heads), max(1, 2048 // block_p))
    grid = (batch * seq_len, triton.cdiv(n_heads, block_h))
    _rope_interleaved[grid](
        x, cos, sin, y, seq_len, n_heads, half_dim, BLOCK_H=block_h, BLOCK_P=block_p, num_warps=4
    )
    return y
