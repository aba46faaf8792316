"""Torch reference of every fused op, and the one tolerance table the tests and the bench use.

Where this sits in a request's way: a patched module calls the reference when its Triton kernel
cannot run (no CUDA and no interpreter), so on a CPU worker every denoising step goes through
these functions; the tests and ``bench.py`` compare each Triton kernel against them. Each
reference computes in float32 and rounds once to the output dtype, which is what the kernels do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (atol, rtol) per op and dtype: kernel vs reference. float32 differs only by summation order;
# float16 by the rounding of the stored result (one half-precision ulp near 1 is ~1e-3) and
# of inputs that the stock modules round between steps.
# bfloat16 (GPU only: the interpreter has no bfloat16) keeps 8 mantissa bits: ulp(1) = 7.8e-3.
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "groupnorm_silu": {"float32": (1e-5, 1e-5), "float16": (4e-3, 4e-3), "bfloat16": (3e-2, 2e-2)},
    "rmsnorm": {"float32": (1e-5, 1e-5), "float16": (4e-3, 4e-3), "bfloat16": (3e-2, 2e-2)},
    "rope": {"float32": (1e-6, 1e-6), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)},
    "adaln": {"float32": (1e-5, 1e-5), "float16": (4e-3, 4e-3), "bfloat16": (3e-2, 2e-2)},
    "gated_residual": {"float32": (1e-6, 1e-6), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)},
    # erf differs by a few ulps between numpy (interpreter), CUDA and torch
    "geglu": {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)},
    # attention backends vs math_attention
    "attention": {"float32": (2e-5, 2e-5), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)},
    # a whole tiny pipeline (2 steps, images in [0, 1]) patched vs unpatched
    "pipeline": {"float32": (2e-4, 0.0)},
    # torch.compile / int8 quantization change the arithmetic: outputs stay close, not equal
    "pipeline_compiled": {"float32": (2e-2, 0.0)},
    "pipeline_int8": {"float32": (0.15, 0.0)},
}


def tolerance(op: str, dtype: torch.dtype | str) -> tuple[float, float]:
    """``(atol, rtol)`` for ``op`` at ``dtype``."""
    return TOLERANCES[op][str(dtype).removeprefix("torch.")]


def groupnorm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``silu(group_norm(x))`` over (N, C, *spatial), computed in float32."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    y = F.group_norm(x.float(), num_groups, w, b, eps)
    return F.silu(y).to(x.dtype)


def rms_norm_out_dtype(x_dtype: torch.dtype, weight: torch.Tensor | None) -> torch.dtype:
    """The dtype diffusers' ``RMSNorm`` returns (half weights cast the result to their dtype)."""
    if weight is None:
        return x_dtype
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight.dtype
    return torch.promote_types(torch.float32, weight.dtype)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dim: ``x * rsqrt(mean(x^2) + eps) * weight (+ bias)``.

    ``out_dtype`` None: the dtype diffusers' ``RMSNorm`` returns (``torch.nn.RMSNorm`` returns
    x's dtype; pass it).
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
        if bias is not None:
            y = y + bias.float()
    return y.to(out_dtype or rms_norm_out_dtype(x.dtype, weight))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with interleaved pairs, x (B, S, H, D), cos/sin (S, D).

    ``out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i]``, ``out[2i+1] = x[2i+1] cos[2i+1] + x[2i]
    sin[2i+1]`` (diffusers ``apply_rotary_emb`` with ``use_real_unbind_dim=-1``,
    ``sequence_dim=1``, as in Flux).
    """
    xf = x.float()
    pairs = torch.unflatten(xf, -1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    c = cos.float()[None, :, None, :]
    s = sin.float()[None, :, None, :]
    return (xf * c + rotated * s).to(x.dtype)


def adaln_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """``layer_norm(x) * (1 + scale[:, None]) + shift[:, None]``.

    x (B, S, D), shift and scale (B, D).
    """
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    y = y * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]
    return y.to(x.dtype)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + gate[:, None] * y``; x, y (B, S, D), gate (B, D) (the adaLN-Zero gate)."""
    return (x.float() + gate.float()[:, None, :] * y.float()).to(x.dtype)


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``a * gelu(g)`` with ``a, g = h.chunk(2, -1)`` and the exact (erf) GELU."""
    a, g = h.float().chunk(2, dim=-1)
    return (a * F.gelu(g)).to(h.dtype)


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention by definition, (B, H, S, D) in and out: ``softmax(q k^T * scale + mask) v``.

    ``mask`` is boolean (True = attend) or additive, broadcastable to (B, H, Sq, Sk).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)
