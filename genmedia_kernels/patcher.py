"""Install a model's ``KernelOptions`` into its loaded pipeline, and record what is active.

Where this sits in a request's way: the family worker calls ``apply_kernel_options`` once, right
after loading a pipeline and before its first request; what it installs (attention processors,
fused ops, quantized weights, step cache, compiled forward) then runs in every denoising step,
and the record it returns goes into every result of that model.

Order: attention processors, fused ops, torchao quantization, step cache, torch.compile (last,
so it compiles what the others installed). Everything targets the denoiser (``pipe.unet`` or
``pipe.transformer``); the text encoders and the VAE run once per request and stay stock.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol, cast

from torch import nn

from genmedia.kernels.backends import (
    BackendUnavailable,
    check_backend,
    dtype_name,
    select_backend,
)
from genmedia.kernels.dispatch import OpRunner, resolve_mode
from genmedia.kernels.op_specs import DENOISERS, OPS
from genmedia.kernels.options import KernelOptions, KernelOptionsError, check_options

logger = logging.getLogger("genmedia.kernels")

RECORD_ATTR = "_genmedia_kernels"


def denoiser(pipe: Any) -> tuple[str, nn.Module]:
    """The per-step model of a pipeline: ``("unet" | "transformer", module)``."""
    for attr in ("transformer", "unet"):
        model = getattr(pipe, attr, None)
        if isinstance(model, nn.Module):
            return attr, model
    raise ValueError(f"{type(pipe).__name__} has neither a transformer nor a unet")


def reset_step_cache(pipe: Any) -> None:
    """Forget the step cache's state (diffusers resets it at the end of a completed call; call
    this after a call that stopped early, e.g. a cancelled request)."""
    _, model = denoiser(pipe)
    reset = getattr(model, "_reset_stateful_cache", None)
    if reset is not None and getattr(model, "is_cache_enabled", False):
        reset()


def _validate(family: str, opts: KernelOptions, device: str, dtype: str, strict: bool) -> None:
    checked = opts
    if not strict and family in DENOISERS:
        # ops without a pattern in this family are tried anyway and recorded as untouched
        keep = [k for k in opts.kernels if k not in OPS or family in OPS[k].families]
        checked = opts.model_copy(update={"kernels": keep})
    issues = check_options(family, checked, device, dtype)
    if issues:
        raise KernelOptionsError(issues)


class _AttentionHost(Protocol):
    """A denoiser with diffusers' attention-processor setter (``AttentionMixin`` or its own)."""

    def set_attn_processor(self, processor: dict[str, Any]) -> None: ...


def _mirrored_layer(module: nn.Module, proc: object) -> tuple[str, int] | None:
    """``(kind, head_dim)`` of a layer whose stock processor we mirror: ``"flux"`` or
    ``"unet"``; None for any other processor (IP-adapter, custom)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttention
    from diffusers.models.transformers.transformer_flux import (
        FluxAttnProcessor as StockFluxProcessor,
    )

    if isinstance(module, FluxAttention) and type(proc) is StockFluxProcessor:
        return "flux", module.head_dim
    if isinstance(module, Attention) and type(proc) in (AttnProcessor2_0, AttnProcessor):
        return "unet", module.inner_dim // module.heads
    return None


def _layer_backend(
    requested: str, device: str, dtype: Any, head_dim: int, layer: str, reasons: list[str]
) -> str:
    """The backend of one attention layer; a new fallback reason is logged and appended."""
    try:
        backend, reason = select_backend(requested, device, dtype, head_dim, has_mask=False)
    except BackendUnavailable as e:
        raise KernelOptionsError(
            [("attention", f"{e} (layer {layer}, head dim {head_dim})")]
        ) from None
    if reason and reason not in reasons:
        reasons.append(reason)
        logger.info("attention auto -> %s: %s", backend, reason)
    return backend


def _install_attention(
    model: nn.Module, requested: str, device: str, dtype: Any, rope_runner: OpRunner | None
) -> dict[str, Any]:
    from genmedia.kernels.processors import FluxAttnProcessor, UNetAttnProcessor

    current = getattr(model, "attn_processors", None)
    if not current:
        return {"attention": None, "attention_layers": {}, "attention_fallback_reason": None}
    new: dict[str, Any] = {}
    chosen: Counter[str] = Counter()
    reasons: list[str] = []
    kept = rope_layers = stock = 0
    for name, proc in current.items():
        layer = _mirrored_layer(model.get_submodule(name.removesuffix(".processor")), proc)
        if layer is None:
            new[name] = proc  # a processor we do not mirror (IP-adapter, custom): keep it
            kept += 1
            continue
        kind, head_dim = layer
        backend = _layer_backend(requested, device, dtype, head_dim, name, reasons)
        chosen[backend] += 1
        if backend == "sdpa" and (kind == "unet" or rope_runner is None):
            # the stock processor already runs torch SDPA: leave the diffusers path as it is
            new[name] = proc
            stock += 1
            continue
        mask_ok = check_backend(backend, device, dtype, head_dim, has_mask=True) is None
        if kind == "flux":
            new[name] = FluxAttnProcessor(backend, mask_ok, rope_runner)
            rope_layers += rope_runner is not None
        else:
            new[name] = UNetAttnProcessor(backend, mask_ok)
    if stock < len(current) - kept:
        cast(_AttentionHost, model).set_attn_processor(new)
    names = sorted(chosen)
    return {
        "attention": names[0] if len(names) == 1 else ("mixed" if names else None),
        "attention_layers": dict(sorted(chosen.items())),
        "attention_fallback_reason": "; ".join(reasons) or None,
        # layers on the selected backend whose stock diffusers SDPA processor was left in place
        "attention_stock_layers": stock,
        "attention_kept_layers": kept,
        "_rope_layers": rope_layers,
    }


def _install_ops(
    model: nn.Module, ops: list[str], runner: OpRunner, rope_layers: int
) -> tuple[dict[str, int], dict[str, str]]:
    from genmedia.kernels.modules import LOOKS_FOR, PATCHERS

    counts: dict[str, int] = {}
    untouched: dict[str, str] = {}
    for op in ops:
        if op == "rope":
            count, skipped = rope_layers, list[str]()
        else:
            count, skipped = PATCHERS[op](model, runner)
        counts[op] = count
        if skipped:
            logger.info("%s: left alone: %s", op, "; ".join(skipped))
        if count == 0:
            untouched[op] = f"no {LOOKS_FOR[op]} in {type(model).__name__}: left untouched"
            logger.warning("kernel %s: %s", op, untouched[op])
    return counts, untouched


def _quantize(model: nn.Module, kind: str) -> int:
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = {
        "int8_weight_only": Int8WeightOnlyConfig,
        "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
    }[kind]()
    linears = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    quantize_(model, config)
    return linears


def apply_kernel_options(
    pipe: Any, family: str, opts: KernelOptions, device: str, *, strict: bool = True
) -> dict[str, Any]:
    """Install ``opts`` into ``pipe``'s denoiser; return a JSON-able record of what is active.

    Raises ``KernelOptionsError`` (a ValueError naming each field) for options that cannot be
    installed here. ``strict=False`` tries ops that the family's table says have no pattern
    and records them as untouched instead of refusing them.
    """
    attr, model = denoiser(pipe)
    if getattr(model, RECORD_ATTR, None) is not None:
        raise ValueError(f"the {attr} of this pipeline already has kernel options installed")
    dtype = model.dtype
    _validate(family, opts, device, dtype_name(dtype), strict)

    record: dict[str, Any] = {
        "device": str(device),
        "denoiser": attr,
        "attention_requested": opts.attention,
    }
    runner = None
    if opts.kernels:
        mode, reason = resolve_mode(device)
        runner = OpRunner(mode, device)
        record["kernels_mode"] = mode
        record["kernels_reason"] = reason
        log = logger.warning if mode == "reference" else logger.info
        log("kernels %s run as %s: %s", ",".join(opts.kernels), mode, reason)

    rope_runner = runner if "rope" in opts.kernels else None
    attention = _install_attention(model, opts.attention, device, dtype, rope_runner)
    rope_layers = attention.pop("_rope_layers", 0)
    record.update(attention)

    counts, untouched = (
        _install_ops(model, list(opts.kernels), runner, rope_layers) if runner else ({}, {})
    )
    record["kernels"] = counts
    record["kernels_untouched"] = untouched

    record["quantization"] = opts.quantization
    if opts.quantization != "none":
        record["quantized_linear_layers"] = _quantize(model, opts.quantization)

    record["cache"] = None
    if opts.cache is not None:
        from diffusers.hooks import FirstBlockCacheConfig
        from diffusers.models.cache_utils import CacheMixin

        cast(CacheMixin, model).enable_cache(FirstBlockCacheConfig(threshold=opts.cache.threshold))
        record["cache"] = {"kind": opts.cache.kind, "threshold": opts.cache.threshold}

    record["compile"] = bool(opts.compile)
    if opts.compile:
        model.compile()  # in place; compiles on the first call
        if runner is not None and runner.mode != "reference":
            record["compile_note"] = "graph breaks around each Triton op"

    setattr(model, RECORD_ATTR, record)
    return record
