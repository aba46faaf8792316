"""Per-model kernel and acceleration options (the ``kernels:`` block of a catalog entry).

Where this sits in a request's way: the catalog validator parses ``KernelOptions`` and calls
``check_options`` at deploy time (light: no torch, triton or diffusers import); the worker passes
the same options to ``genmedia.kernels.patcher.apply_kernel_options`` when it loads the model,
which validates again against the real device and dtype and installs what was asked.
"""

from __future__ import annotations

import os
import shutil
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genmedia.kernels.backends import (
    ATTENTION_CHOICES,
    AUTO,
    BACKENDS,
    check_backend,
    device_type,
    module_available,
)
from genmedia.kernels.op_specs import (
    CACHE_FAMILIES,
    CACHE_KINDS,
    CACHE_NOT_AVAILABLE,
    DENOISERS,
    OP_NAMES,
    OPS,
    ops_for_family,
)

Quantization = Literal["none", "int8_weight_only", "int8_dynamic"]
QUANTIZATION_CHOICES: tuple[str, ...] = ("none", "int8_weight_only", "int8_dynamic")


class CacheOptions(BaseModel):
    """Step caching: reuse work of the previous denoising step when the model barely changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(
        default="first_block_cache",
        description=f"Caching technique; one of: {', '.join(CACHE_KINDS)} (families: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in CACHE_FAMILIES.items())
        + ").",
    )
    threshold: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="Relative change of the first block's residual under which the remaining "
        "blocks are skipped; higher is faster with more drift (diffusers default 0.05; "
        "0.05-0.2 are common for Flux).",
    )


class KernelOptions(BaseModel):
    """Attention backend, fused Triton ops and acceleration options of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attention: str = Field(
        default=AUTO,
        description="Attention backend of the denoiser; one of: "
        f"{', '.join(ATTENTION_CHOICES)}. 'auto' picks the best one that runs on the device "
        "(xformers, then torch SDPA) and logs why it fell back; an explicit name that cannot "
        "run is an error.",
    )
    kernels: list[str] = Field(
        default_factory=list,
        description=f"Fused Triton ops installed into the denoiser; subset of: "
        f"{', '.join(OP_NAMES)}. "
        + "; ".join(f"{n}: {', '.join(s.families)}" for n, s in OPS.items())
        + ". Without CUDA they run their torch reference (or the Triton interpreter when "
        "TRITON_INTERPRET=1).",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the denoiser at load time (the first request pays the "
        "compilation). Off by default; on the CPU it needs a C++ compiler.",
    )
    cache: CacheOptions | None = Field(
        default=None, description="Step caching between denoising steps; null: none."
    )
    quantization: Quantization = Field(
        default="none",
        description="torchao quantization of the denoiser's Linear layers: int8_weight_only "
        "(weights int8, activations in model dtype) or int8_dynamic (int8 activations "
        "quantized per call and int8 weights); needs the torchao package.",
    )


class KernelOptionsError(ValueError):
    """Options that cannot be installed; ``issues`` holds (field, message) pairs."""

    def __init__(self, issues: list[tuple[str, str]]):
        self.issues = issues
        super().__init__("; ".join(f"{f}: {m}" for f, m in issues))


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


Issues = list[tuple[str, str]]  # (field, message)


def check_options(
    family: str,
    opts: KernelOptions,
    device: str | None = None,
    dtype: str | None = None,
) -> Issues:
    """Deploy-time validation: every problem as a ``(field, message)`` pair, [] when fine.

    ``device`` None skips the checks that depend on the machine (is xformers installed, is there
    a compiler, ...); ``dtype`` None skips the dtype rules of the attention backend. Pure and
    light: nothing heavy is imported.
    """
    issues: Issues = []
    if family not in DENOISERS and opts != KernelOptions():  # defaults: nothing to install
        issues.append(
            (
                "family",
                f"no kernel patterns known for family {family!r}; known: {', '.join(DENOISERS)}",
            )
        )
    return [
        *issues,
        *_attention_issues(opts, device, dtype),
        *_kernel_issues(family, opts, device),
        *_compile_issues(opts, device),
        *_cache_issues(family, opts),
        *_quantization_issues(opts, device),
    ]


def _attention_issues(opts: KernelOptions, device: str | None, dtype: str | None) -> Issues:
    if opts.attention != AUTO and opts.attention not in BACKENDS:
        return [
            (
                "attention",
                f"unknown attention backend {opts.attention!r}; known: "
                f"{', '.join(ATTENTION_CHOICES)}",
            )
        ]
    if opts.attention != AUTO and device is not None:
        why = check_backend(opts.attention, device, dtype)
        if why is not None:
            return [("attention", f"{why} (use 'auto' to fall back with a log line)")]
    return []


def _kernel_issues(family: str, opts: KernelOptions, device: str | None) -> Issues:
    issues: Issues = []
    seen: set[str] = set()
    for name in opts.kernels:
        if name in seen:
            issues.append(("kernels", f"op {name!r} is listed twice"))
            continue
        seen.add(name)
        spec = OPS.get(name)
        if spec is None:
            issues.append(("kernels", f"unknown op {name!r}; known: {', '.join(OP_NAMES)}"))
        elif family in DENOISERS and family not in spec.families:
            usable = ", ".join(ops_for_family(family)) or "none"
            issues.append(
                (
                    "kernels",
                    f"op {name!r} has no pattern in family {family!r}: {DENOISERS[family]} has "
                    f"no {spec.looks_for}; ops for {family}: {usable}",
                )
            )
    on_cuda = device is not None and device_type(device) == "cuda"
    if opts.kernels and on_cuda and not module_available("triton"):
        issues.append(("kernels", "the Triton ops need the 'triton' package on CUDA"))
    return issues


def _compile_issues(opts: KernelOptions, device: str | None) -> Issues:
    if not opts.compile or device is None:
        return []
    dev = device_type(device)
    if dev == "cpu" and _cxx_compiler() is None:
        return [("compile", "torch.compile on the CPU needs a C++ compiler (c++/g++), none found")]
    if dev == "cuda" and not module_available("triton"):
        return [("compile", "torch.compile on CUDA needs the 'triton' package")]
    return []


def _cache_issues(family: str, opts: KernelOptions) -> Issues:
    if opts.cache is None:
        return []
    kind = opts.cache.kind
    if kind in CACHE_NOT_AVAILABLE:
        return [("cache.kind", CACHE_NOT_AVAILABLE[kind])]
    if kind not in CACHE_KINDS:
        return [("cache.kind", f"unknown cache kind {kind!r}; known: {', '.join(CACHE_KINDS)}")]
    if family in DENOISERS and family not in CACHE_FAMILIES[kind]:
        return [
            (
                "cache.kind",
                f"{kind} is not supported for family {family!r}: {DENOISERS[family]} is not a "
                f"diffusers CacheMixin transformer; supported: "
                f"{', '.join(CACHE_FAMILIES[kind])}",
            )
        ]
    return []


def _quantization_issues(opts: KernelOptions, device: str | None) -> Issues:
    if opts.quantization == "none" or device is None or module_available("torchao"):
        return []
    return [
        (
            "quantization",
            f"{opts.quantization} needs the 'torchao' package, which is not installed "
            "(pip install torchao)",
        )
    ]


def raise_for_options(
    family: str, opts: KernelOptions, device: str | None = None, dtype: str | None = None
) -> None:
    """``check_options`` that raises ``KernelOptionsError`` listing every issue."""
    issues = check_options(family, opts, device, dtype)
    if issues:
        raise KernelOptionsError(issues)
