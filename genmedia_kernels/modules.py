"""Patched forwards that route diffusers modules through the fused ops.

Where this sits in a request's way: the patcher calls ``PATCHERS[op](denoiser, runner)`` at model
load time; each replaces the ``forward`` of the matching module instances (the instance
attribute only: the class, the weights and the state dict stay as they were), and the new
forwards run in every denoising step. Each patched forward keeps the stock module's semantics
for the configurations it accepts; instances in other configurations are left alone and
reported. Finding no instance at all is not an error: the count is 0 and the reason says so.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    RMSNorm,
)
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from genmedia.kernels.dispatch import OpRunner

PATCHED_ATTR = "_genmedia_op"  # the op name, on every patched instance
RUNNER_ATTR = "_genmedia_ops"  # the OpRunner its forward calls

# (count of patched instances, reasons for instances left alone)
PatchResult = tuple[int, list[str]]


def _install(module: nn.Module, op: str, forward: Callable[..., object], runner: OpRunner) -> None:
    setattr(module, RUNNER_ATTR, runner)
    module.forward = types.MethodType(forward, module)
    setattr(module, PATCHED_ATTR, op)


def _ops(module: nn.Module) -> OpRunner:
    """The runner ``_install`` left on a patched instance."""
    runner: OpRunner = getattr(module, RUNNER_ATTR)
    return runner


def _plain_layer_norm(norm: nn.Module) -> bool:
    return type(norm) is nn.LayerNorm and not norm.elementwise_affine


# --- groupnorm_silu -------------------------------------------------------------------------


def _gn_silu(runner: OpRunner, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return runner.groupnorm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def _resnet_forward(
    self: ResnetBlock2D,
    input_tensor: torch.Tensor,
    temb: torch.Tensor | None,
    *args: object,
    **kwargs: object,
) -> torch.Tensor:
    # ResnetBlock2D with time_embedding_norm="default": both GroupNorm -> SiLU pairs fused.
    runner = _ops(self)
    hidden = _gn_silu(runner, self.norm1, input_tensor)
    if self.upsample is not None:
        if hidden.shape[0] >= 64:
            input_tensor = input_tensor.contiguous()
            hidden = hidden.contiguous()
        input_tensor = self.upsample(input_tensor)
        hidden = self.upsample(hidden)
    elif self.downsample is not None:
        input_tensor = self.downsample(input_tensor)
        hidden = self.downsample(hidden)
    hidden = self.conv1(hidden)
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if temb is not None:
        hidden = hidden + temb
    hidden = _gn_silu(runner, self.norm2, hidden)
    hidden = self.conv2(self.dropout(hidden))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    out: torch.Tensor = (input_tensor + hidden) / self.output_scale_factor  # nn.Module calls: Any
    return out


def _groupnorm_silu_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    # a GroupNorm whose following SiLU was replaced by Identity
    return _gn_silu(_ops(self), self, x)


def patch_groupnorm_silu(model: nn.Module, runner: OpRunner) -> PatchResult:
    count, skipped = 0, list[str]()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, ResnetBlock2D):
            fusable = (
                mod.time_embedding_norm == "default"
                and type(mod.norm1) is nn.GroupNorm
                and type(mod.norm2) is nn.GroupNorm
                and type(mod.nonlinearity) is nn.SiLU
            )
            if not fusable:
                skipped.append(f"{name}: not GroupNorm -> SiLU with default time embedding")
                continue
            _install(mod, "groupnorm_silu", _resnet_forward, runner)
            count += 1
        norm_out = getattr(mod, "conv_norm_out", None)
        act = getattr(mod, "conv_act", None)
        if type(norm_out) is nn.GroupNorm and type(act) is nn.SiLU:
            # UNet2DConditionModel.forward: conv_norm_out then conv_act
            _install(norm_out, "groupnorm_silu", _groupnorm_silu_forward, runner)
            mod.conv_act = nn.Identity()
            count += 1
    return count, skipped


# --- rmsnorm --------------------------------------------------------------------------------


def _rms_norm_forward(self: RMSNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    # diffusers RMSNorm: half weights decide the output dtype
    return _ops(self).rms_norm(hidden_states, self.weight, self.bias, self.eps)


def _torch_rms_norm_forward(self: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    # torch.nn.RMSNorm (Flux QK-norm): output in x's dtype, eps None = finfo(x.dtype).eps
    eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
    return _ops(self).rms_norm(x, self.weight, None, eps, x.dtype)


def patch_rmsnorm(model: nn.Module, runner: OpRunner) -> PatchResult:
    count, skipped = 0, list[str]()
    for name, mod in model.named_modules():
        if type(mod) is RMSNorm:
            _install(mod, "rmsnorm", _rms_norm_forward, runner)
            count += 1
        elif type(mod) is nn.RMSNorm:
            if len(mod.normalized_shape) != 1:
                skipped.append(f"{name}: normalizes over more than the last dim")
                continue
            _install(mod, "rmsnorm", _torch_rms_norm_forward, runner)
            count += 1
    return count, skipped


# --- adaln ----------------------------------------------------------------------------------


def _ada_zero_forward(
    self: AdaLayerNormZero,
    x: torch.Tensor,
    timestep: torch.Tensor | None = None,
    class_labels: torch.LongTensor | None = None,
    hidden_dtype: torch.dtype | None = None,
    emb: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    if self.emb is not None:
        emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
    x = _ops(self).adaln_modulate(x, shift_msa, scale_msa, self.norm.eps)
    return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


def _ada_zero_single_forward(
    self: AdaLayerNormZeroSingle, x: torch.Tensor, emb: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa = emb.chunk(3, dim=1)
    return _ops(self).adaln_modulate(x, shift_msa, scale_msa, self.norm.eps), gate_msa


def _ada_continuous_forward(
    self: AdaLayerNormContinuous, x: torch.Tensor, conditioning_embedding: torch.Tensor
) -> torch.Tensor:
    emb = self.linear(self.silu(conditioning_embedding).to(x.dtype))
    scale, shift = torch.chunk(emb, 2, dim=1)  # scale first in this module
    return _ops(self).adaln_modulate(x, shift, scale, self.norm.eps)


_ADALN_FORWARDS: dict[type[nn.Module], Callable[..., Any]] = {
    AdaLayerNormZero: _ada_zero_forward,
    AdaLayerNormZeroSingle: _ada_zero_single_forward,
    AdaLayerNormContinuous: _ada_continuous_forward,
}


def patch_adaln(model: nn.Module, runner: OpRunner) -> PatchResult:
    count, skipped = 0, list[str]()
    for name, mod in model.named_modules():
        forward = _ADALN_FORWARDS.get(type(mod))
        if forward is None:
            continue
        if not _plain_layer_norm(mod.norm):
            skipped.append(f"{name}: its norm is not a LayerNorm without affine")
            continue
        _install(mod, "adaln", forward, runner)
        count += 1
    return count, skipped


# --- geglu ----------------------------------------------------------------------------------


def _geglu_forward(
    self: GEGLU, hidden_states: torch.Tensor, *args: object, **kwargs: object
) -> torch.Tensor:
    return _ops(self).geglu(self.proj(hidden_states))


def patch_geglu(model: nn.Module, runner: OpRunner) -> PatchResult:
    count = 0
    for mod in model.modules():
        if type(mod) is GEGLU:
            _install(mod, "geglu", _geglu_forward, runner)
            count += 1
    return count, []


PATCHERS: dict[str, Callable[[nn.Module, OpRunner], PatchResult]] = {
    "groupnorm_silu": patch_groupnorm_silu,
    "rmsnorm": patch_rmsnorm,
    "adaln": patch_adaln,
    "geglu": patch_geglu,
}

# What each patcher looks for, for the "left untouched" reason.
LOOKS_FOR: dict[str, str] = {
    "groupnorm_silu": "ResnetBlock2D or conv_norm_out/conv_act GroupNorm -> SiLU",
    "rmsnorm": "RMSNorm (torch.nn or diffusers)",
    "adaln": "AdaLayerNormZero / AdaLayerNormZeroSingle / AdaLayerNormContinuous",
    "geglu": "GEGLU",
    "rope": "FluxAttention with the stock Flux attention processor",
}
