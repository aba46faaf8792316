"""Fused adaLN modulation (LayerNorm without affine, then shift/scale) and the gated residual.

Where this sits in a request's way: the ``AdaLayerNormZero`` / ``AdaLayerNormZeroSingle`` /
``AdaLayerNormContinuous`` modules of a patched Flux transformer call ``adaln_modulate`` in
every block of every denoising step. ``gated_residual`` (``x + gate * y``) is the other half of
adaLN-Zero; diffusers applies it inline in the block's forward, so it is benchmarked here but not
installed (see genmedia_kernels/README.md).

``adaln_modulate``: one program per row of D (3072 for Flux): one read of x, the (B, D)
shift/scale rows (cached, reused by S rows), one write. The stock path writes the normalized
tensor, then a scaled copy, then the shifted result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genmedia.kernels.triton_ops._common import total


@triton.jit
def _adaln_modulate(
    x_ptr,
    shift_ptr,
    scale_ptr,
    y_ptr,
    seq_len,
    dim,
    mod_stride,
    eps,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # b * S + s
    b = row // seq_len
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    base = row.to(tl.int64) * dim
    x = tl.load(x_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
    mean = total(x, 0) / dim
    centered = tl.where(mask, x - mean, 0.0)
    var = total(centered * centered, 0) / dim
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = tl.load(scale_ptr + b * mod_stride + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * mod_stride + cols, mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd * (1.0 + scale) + shift
    tl.store(y_ptr + base + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual(
    x_ptr, gate_ptr, y_ptr, out_ptr, seq_len, dim, gate_stride, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0)
    b = row // seq_len
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < dim
    base = row.to(tl.int64) * dim
    x = tl.load(x_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + b * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + cols, (x + g * y).to(out_ptr.dtype.element_ty), mask=mask)


def adaln_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """x contiguous (B, S, D); shift/scale (B, D) with unit column stride and equal row strides."""
    batch, seq_len, dim = x.shape
    y = torch.empty_like(x)
    block_d = triton.next_power_of_2(dim)
    _adaln_modulate[(batch * seq_len,)](
        x,
        shift,
        scale,
        y,
        seq_len,
        dim,
        shift.stride(0),
        eps,
        BLOCK_D=block_d,
        num_warps=8 if block_d >= 2048 else 4,
    )
    return y


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + gate[:, None] * y``; x, y contiguous (B, S, D), gate (B, D) with unit col stride."""
    batch, seq_len, dim = x.shape
    out = torch.empty_like(x)
    block_d = min(1024, triton.next_power_of_2(dim))
    grid = (batch * seq_len, triton.cdiv(dim, block_d))
    _gated_residual[grid](x, gate, y, out, seq_len, dim, gate.stride(0), BLOCK_D=block_d)
    return out
