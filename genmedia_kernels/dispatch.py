"""Run each fused op as a Triton kernel or as its torch reference, decided once per model.

Where this sits in a request's way: at model load time the patcher asks ``resolve_mode`` how the
ops can run on the worker's device and hands an ``OpRunner`` to every patched module; in every
denoising step those modules call the runner's methods.

Modes:
- ``triton``: compiled Triton kernels (CUDA).
- ``interpreter``: the same kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``);
  checks correctness on machines without a GPU, about 20x slower than eager torch.
- ``reference``: the torch references of ``genmedia.kernels.reference`` (no CUDA, no
  interpreter, or triton missing). The model still runs; the record says why.
Triton launches are hidden from torch.compile (``torch.compiler.disable``): a compiled model
with Triton ops breaks its graph around each op.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType

import torch

from genmedia.kernels import reference as ref
from genmedia.kernels.backends import device_type, module_available

TRITON_MODULES = ("groupnorm_silu", "rmsnorm", "rope", "adaln", "geglu")
Launcher = Callable[..., torch.Tensor]
# torch.compiler.disable carries no annotations; this is its type as used here.
_hide_from_compile: Callable[[Launcher], Launcher] = torch.compiler.disable
_KERNEL_DTYPES = {
    "triton": (torch.float32, torch.float16, torch.bfloat16),
    # numpy has no bfloat16: the interpreter checks float32 and float16 only
    "interpreter": (torch.float32, torch.float16),
}


def _import_triton_ops() -> dict[str, ModuleType]:
    return {
        name: importlib.import_module(f"genmedia.kernels.triton_ops.{name}")
        for name in TRITON_MODULES
    }


def _interpreted(mods: dict[str, ModuleType]) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(mods["rmsnorm"]._rms_norm, InterpretedFunction)


def resolve_mode(device: str) -> tuple[str, str]:
    """``(mode, reason)`` for running the Triton ops on ``device``."""
    dev = device_type(device)
    if not module_available("triton"):
        return "reference", "the 'triton' package is not installed: torch reference ops"
    interpret = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
    if dev == "cuda":
        if interpret or _interpreted(_import_triton_ops()):
            return (
                "reference",
                "the Triton ops were set up for the interpreter (TRITON_INTERPRET) on a CUDA "
                "device: torch reference ops",
            )
        return "triton", "compiled Triton kernels on CUDA"
    if dev == "cpu" and interpret:
        if not _interpreted(_import_triton_ops()):
            return (
                "reference",
                "the Triton ops were imported before TRITON_INTERPRET=1 was set: torch "
                "reference ops",
            )
        return (
            "interpreter",
            "no CUDA device; TRITON_INTERPRET=1: Triton kernels run in the interpreter on the "
            "CPU (correctness check, about 20x slower than eager)",
        )
    return (
        "reference",
        f"no CUDA device (device is {dev}) and TRITON_INTERPRET is not set: the torch "
        "reference of each op runs instead of its Triton kernel",
    )


def _launchers(mods: dict[str, ModuleType]) -> dict[str, Launcher]:
    """The launcher of each op, hidden from torch.compile."""
    fns: dict[str, Launcher] = {
        "groupnorm_silu": mods["groupnorm_silu"].groupnorm_silu,
        "rms_norm": mods["rmsnorm"].rms_norm,
        "rope": mods["rope"].rope,
        "adaln_modulate": mods["adaln"].adaln_modulate,
        "gated_residual": mods["adaln"].gated_residual,
        "geglu": mods["geglu"].geglu,
    }
    return {name: _hide_from_compile(fn) for name, fn in fns.items()}


class OpRunner:
    """The fused ops as patched modules call them; each falls back per call to its reference
    when an input is outside what the kernel handles (dtype, device, layout)."""

    def __init__(self, mode: str, device: str) -> None:
        self.mode = mode
        self.device_type = device_type(device)
        self._k = _launchers(_import_triton_ops()) if mode in _KERNEL_DTYPES else {}
        self.reference_calls = 0  # calls that took the reference path in a kernel mode

    def _kernel_ok(self, *tensors: torch.Tensor) -> bool:
        if not self._k:
            return False
        want = "cuda" if self.mode == "triton" else "cpu"
        dtypes = _KERNEL_DTYPES[self.mode]
        ok = all(t.device.type == want and t.dtype in dtypes for t in tensors)
        if not ok:
            self.reference_calls += 1
        return ok

    def groupnorm_silu(
        self,
        x: torch.Tensor,
        num_groups: int,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        if x.dim() >= 2 and self._kernel_ok(x):
            return self._k["groupnorm_silu"](x.contiguous(), num_groups, weight, bias, eps)
        return ref.groupnorm_silu(x, num_groups, weight, bias, eps)

    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        out_dtype = out_dtype or ref.rms_norm_out_dtype(x.dtype, weight)
        if self._kernel_ok(x):
            return self._k["rms_norm"](x.contiguous(), weight, bias, eps, out_dtype)
        return ref.rms_norm(x, weight, bias, eps, out_dtype)

    def rope(self, x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cos, sin = freqs
        if x.dim() == 4 and cos.shape == (x.shape[1], x.shape[3]) and self._kernel_ok(x):
            return self._k["rope"](
                x.contiguous(),
                cos.to(device=x.device, dtype=torch.float32).contiguous(),
                sin.to(device=x.device, dtype=torch.float32).contiguous(),
            )
        return ref.rope(x, cos.to(x.device), sin.to(x.device))

    def adaln_modulate(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
    ) -> torch.Tensor:
        shapes_ok = (
            x.dim() == 3
            and shift.shape == scale.shape == (x.shape[0], x.shape[2])
            and shift.stride() == scale.stride()
            and shift.stride(1) == 1
        )
        if shapes_ok and self._kernel_ok(x, shift, scale):
            return self._k["adaln_modulate"](x.contiguous(), shift, scale, eps)
        return ref.adaln_modulate(x, shift, scale, eps)

    def gated_residual(self, x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shapes_ok = x.dim() == 3 and x.shape == y.shape and gate.shape == (x.shape[0], x.shape[2])
        if shapes_ok and gate.stride(1) == 1 and self._kernel_ok(x, gate, y):
            return self._k["gated_residual"](x.contiguous(), gate, y.contiguous())
        return ref.gated_residual(x, gate, y)

    def geglu(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] % 2 == 0 and self._kernel_ok(h):
            return self._k["geglu"](h.contiguous())
        return ref.geglu(h)
