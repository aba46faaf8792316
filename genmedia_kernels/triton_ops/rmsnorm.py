"""Fused RMSNorm over the last dim (Flux QK-norm: rows of head_dim = 128).

Where this sits in a request's way: the ``norm_q`` / ``norm_k`` / ``norm_added_q`` /
``norm_added_k`` modules of every Flux attention call it in every denoising step.

One read of x and one write of y; the stock module makes a float32 copy, squares it, reduces it,
multiplies, casts and multiplies again (about 8 passes). Rows are short, so each program takes a
(BLOCK_M, BLOCK_N) tile of several rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genmedia.kernels.triton_ops._common import total

TILE = 4096  # elements per program


@triton.jit
def _rms_norm(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    n_rows,
    n_cols,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < n_cols
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean_sq = total(x * x, 1) / n_cols
    y = x * (1.0 / tl.sqrt(mean_sq + eps))[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = y * w[None, :]
        if HAS_BIAS:
            b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            y = y + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """RMSNorm of contiguous ``x`` over its last dim, stored as ``out_dtype``."""
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, min(64, TILE // block_n))
    has_weight = weight is not None
    _rms_norm[(triton.cdiv(n_rows, block_m),)](
        x,
        weight if has_weight else x,
        bias if (has_weight and bias is not None) else x,
        y,
        n_rows,
        n_cols,
        eps,
        HAS_WEIGHT=has_weight,
        HAS_BIAS=has_weight and bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return y
