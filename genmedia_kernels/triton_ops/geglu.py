"""Fused GEGLU gate: ``a * gelu(g)`` with ``a, g = h.chunk(2, -1)`` (exact erf GELU).

Where this sits in a request's way: the ``GEGLU`` modules of a patched UNet call ``geglu`` on
the output of their projection in every transformer block of every denoising step.

h (M, 2N) contiguous -> (M, N): one read of each half and one write. The stock path writes
``gelu(g)`` to a temporary and reads it back for the multiply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _geglu(h_ptr, y_ptr, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    r = rows.to(tl.int64)[:, None]
    a = tl.load(h_ptr + r * (2 * n_cols) + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + r * (2 * n_cols) + n_cols + cols[None, :], mask=mask, other=0.0)
    g = g.to(tl.float32)
    gelu = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    tl.store(y_ptr + r * n_cols + cols[None, :], (a * gelu).to(y_ptr.dtype.element_ty), mask=mask)


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``a * gelu(g)`` for contiguous h (..., 2N) -> (..., N)."""
    n_cols = h.shape[-1] // 2
    n_rows = h.numel() // (2 * n_cols)
    y = torch.empty((*h.shape[:-1], n_cols), device=h.device, dtype=h.dtype)
    block_n = min(1024, triton.next_power_of_2(n_cols))
    block_m = max(1, min(16, 2048 // block_n))
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
    _geglu[grid](h, y, n_rows, n_cols, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    return y
