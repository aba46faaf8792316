"""Small device helpers shared by the kernels.

Where this sits in a request's way: called inside the Triton kernels of every fused op, in every
denoising step. They stand in for ``tl.sum`` and ``tl.sigmoid``: those are ``@triton.jit``
functions of Triton's standard library, created when ``triton`` is imported, and the CPU
interpreter can only call them when ``TRITON_INTERPRET=1`` was set before that import (torch and
diffusers import triton early). Helpers defined here are decorated together with the kernels,
so the interpreter works whenever the variable is set before ``genmedia.kernels.triton_ops``
is imported. ``tl.reduce``, ``tl.exp`` and the other builtins have no such constraint.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def total(x, axis: tl.constexpr):
    """Sum of ``x`` along ``axis`` (``tl.sum`` for float32 inputs)."""
    return tl.reduce(x, axis, _add)


@triton.jit
def silu(y):
    """``y * sigmoid(y)``."""
    return y / (1.0 + tl.exp(-y))
