"""Attention backend registry: names, lazy implementation paths and constraint checks.

Where this sits in a request's way: the catalog validator (deploy time) asks whether an entry's
``attention`` name exists and can run on the target device; at model load time on the worker the
patcher calls ``select_backend`` once per attention module (device, dtype and head dim are known
then) and installs the chosen implementation, which runs in every attention call of every
denoising step. Pure data and pure functions: no torch import here, so the catalog stays light.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from dataclasses import dataclass, field

ALL_DTYPES = frozenset({"float32", "float16", "bfloat16"})
HALF_DTYPES = frozenset({"float16", "bfloat16"})


class BackendUnavailable(ValueError):
    """An explicitly requested backend cannot run with these inputs; the message says why."""


@dataclass(frozen=True)
class DeviceRule:
    """What one backend accepts on one device type."""

    dtypes: frozenset[str] = ALL_DTYPES
    max_head_dim: int | None = None
    # Head dim must be a multiple of this, per dtype (absent dtype: no rule).
    head_dim_multiple: dict[str, int] = field(default_factory=dict)
    supports_mask: bool = True


@dataclass(frozen=True)
class BackendSpec:
    """One attention backend: where its implementation lives and what it accepts."""

    name: str
    impl: str  # "module:function", imported on first use
    description: str
    rules: dict[str, DeviceRule]  # device type -> rule; a device type not listed is unsupported
    requires: tuple[str, ...] = ()  # Python modules that must be importable
    install_hint: str = ""


_ANY = DeviceRule()
_IMPL = "genmedia.kernels.attention"

BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="xformers",
            impl=f"{_IMPL}:xformers_attention",
            description="xformers memory_efficient_attention (cutlass / flash forward ops).",
            # xformers has no CPU forward op; masks go in as an additive attn_bias.
            rules={"cuda": DeviceRule(max_head_dim=256)},
            requires=("xformers",),
            install_hint="install the 'gpu' extra (pip install 'genmedia[gpu]')",
        ),
        BackendSpec(
            name="sdpa",
            impl=f"{_IMPL}:sdpa_attention",
            description="torch scaled_dot_product_attention; torch picks its fastest kernel.",
            rules={"cuda": _ANY, "cpu": _ANY, "mps": _ANY},
        ),
        BackendSpec(
            name="sdpa_flash",
            impl=f"{_IMPL}:sdpa_flash_attention",
            description="torch SDPA restricted to the FlashAttention-2 kernel.",
            rules={
                # CUDA flash: half precision, head dim <= 256, no arbitrary mask.
                "cuda": DeviceRule(dtypes=HALF_DTYPES, max_head_dim=256, supports_mask=False),
                # torch's CPU flash kernel takes every dtype, head dim and mask.
                "cpu": _ANY,
            },
        ),
        BackendSpec(
            name="sdpa_efficient",
            impl=f"{_IMPL}:sdpa_efficient_attention",
            description="torch SDPA restricted to the memory-efficient (cutlass) kernel.",
            rules={
                "cuda": DeviceRule(head_dim_multiple={"float16": 8, "bfloat16": 8, "float32": 4}),
            },
        ),
        BackendSpec(
            name="sdpa_math",
            impl=f"{_IMPL}:sdpa_math_attention",
            description="torch SDPA restricted to its math (unfused) kernel.",
            rules={"cuda": _ANY, "cpu": _ANY, "mps": _ANY},
        ),
        BackendSpec(
            name="math",
            impl=f"{_IMPL}:math_attention",
            description="Plain reference: softmax(q k^T * scale + mask) v in float32.",
            rules={"cuda": _ANY, "cpu": _ANY, "mps": _ANY},
        ),
    )
}

AUTO = "auto"
ATTENTION_CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)

# What ``auto`` tries, best first; the first that passes its checks on the device wins.
AUTO_ORDER: tuple[str, ...] = ("xformers", "sdpa", "math")


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda'."""
    return str(device).split(":", 1)[0]


def dtype_name(dtype: object) -> str:
    """A torch dtype or its name -> 'float16' (no torch import needed)."""
    return str(dtype).removeprefix("torch.")


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_backend(
    name: str,
    device: str,
    dtype: object | None = None,
    head_dim: int | None = None,
    has_mask: bool = False,
    *,
    modules: Collection[str] | None = None,
) -> str | None:
    """Why backend ``name`` cannot run with these inputs, or None when it can.

    ``dtype`` / ``head_dim`` None mean "not known yet" (deploy time) and are not checked.
    ``modules``: the importable optional modules (None: ask the import system).
    """
    spec = BACKENDS.get(name)
    if spec is None:
        return f"unknown attention backend {name!r}; known: {', '.join(ATTENTION_CHOICES)}"
    dev = device_type(device)
    rule = spec.rules.get(dev)
    if rule is None:
        return f"{name} needs {' or '.join(sorted(spec.rules))} (device is {dev})"
    for mod in spec.requires:
        present = (mod in modules) if modules is not None else module_available(mod)
        if not present:
            hint = f"; {spec.install_hint}" if spec.install_hint else ""
            return f"{name} needs the Python package {mod!r}, which is not installed{hint}"
    if dtype is not None:
        dt = dtype_name(dtype)
        if dt not in rule.dtypes:
            allowed = ", ".join(sorted(rule.dtypes))
            return f"{name} on {dev} supports dtypes {allowed}, not {dt}"
    if head_dim is not None:
        if rule.max_head_dim is not None and head_dim > rule.max_head_dim:
            return f"{name} on {dev} supports head dim <= {rule.max_head_dim}, not {head_dim}"
        if dtype is not None:
            multiple = rule.head_dim_multiple.get(dtype_name(dtype))
            if multiple and head_dim % multiple:
                return (
                    f"{name} on {dev} needs a head dim divisible by {multiple} for "
                    f"{dtype_name(dtype)}, not {head_dim}"
                )
    if has_mask and not rule.supports_mask:
        return f"{name} on {dev} does not take an attention mask"
    return None


def select_backend(
    requested: str,
    device: str,
    dtype: object,
    head_dim: int | None,
    has_mask: bool,
    *,
    modules: Collection[str] | None = None,
) -> tuple[str, str]:
    """Resolve a catalog ``attention`` value to a runnable backend: ``(name, reason)``.

    ``auto`` walks ``AUTO_ORDER`` for the device and returns the first backend whose checks pass;
    ``reason`` then says why each better one was skipped ("" when the first choice won).
    An explicit name is returned as is when it can run, else ``BackendUnavailable`` is raised
    (an operator who names a backend wants an error, not a silent substitute).
    """
    if requested == AUTO:
        skipped: list[str] = []
        for name in AUTO_ORDER:
            why = check_backend(name, device, dtype, head_dim, has_mask, modules=modules)
            if why is None:
                return name, "; ".join(skipped)
            skipped.append(why)
        raise BackendUnavailable(
            "no attention backend can run here: " + "; ".join(skipped)
        )  # pragma: no cover - math runs everywhere listed
    if requested not in BACKENDS:
        raise BackendUnavailable(
            f"unknown attention backend {requested!r}; known: {', '.join(ATTENTION_CHOICES)}"
        )
    why = check_backend(requested, device, dtype, head_dim, has_mask, modules=modules)
    if why is not None:
        raise BackendUnavailable(why)
    return requested, ""
