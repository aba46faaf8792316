"""``KernelOptions`` schema and deploy-time validation: each bad input gives a clear error that
names its field; ``auto`` never errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError

from genmedia.kernels import options as options_mod
from genmedia.kernels.backends import ATTENTION_CHOICES
from genmedia.kernels.op_specs import OP_NAMES, OPS
from genmedia.kernels.options import (
    CacheOptions,
    KernelOptions,
    KernelOptionsError,
    check_options,
    raise_for_options,
)

FAMILIES = ("sd15", "sdxl", "flux")


def _fields(issues):
    return [f for f, _ in issues]


def test_importing_options_stays_light():
    code = (
        "import sys, genmedia.kernels.options as o; o.check_options('sd15', o.KernelOptions());"
        "print(sorted(m for m in ('torch', 'triton', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("model", [KernelOptions, CacheOptions])
def test_schema_describes_every_field_and_forbids_extras(model: type[BaseModel]):
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
    with pytest.raises(ValidationError):
        model(surprise=1)


def test_defaults_are_valid_everywhere():
    opts = KernelOptions()
    assert (opts.attention, opts.kernels, opts.compile, opts.cache, opts.quantization) == (
        "auto",
        [],
        False,
        None,
        "none",
    )
    for family in FAMILIES:
        for device in (None, "cpu", "cuda", "mps"):
            assert check_options(family, opts, device) == []


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_cache_threshold_bounds(threshold):
    with pytest.raises(ValidationError, match="threshold"):
        KernelOptions(cache={"threshold": threshold})


def test_quantization_choices():
    with pytest.raises(ValidationError, match="quantization"):
        KernelOptions(quantization="fp8")


def test_unknown_backend_names_field_and_known_ones():
    issues = check_options("sd15", KernelOptions(attention="flash3"))
    assert _fields(issues) == ["attention"]
    for name in ATTENTION_CHOICES:
        assert name in issues[0][1]


def test_unknown_op_names_field_and_known_ones():
    issues = check_options("flux", KernelOptions(kernels=["rope", "layernorm"]))
    assert _fields(issues) == ["kernels"]
    assert "'layernorm'" in issues[0][1]
    for name in OP_NAMES:
        assert name in issues[0][1]


def test_op_listed_twice():
    issues = check_options("flux", KernelOptions(kernels=["rope", "rope"]))
    assert issues == [("kernels", "op 'rope' is listed twice")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("op", OP_NAMES)
def test_op_needs_its_pattern_in_the_family(family, op):
    issues = check_options(family, KernelOptions(kernels=[op]))
    if family in OPS[op].families:
        assert issues == []
    else:
        assert _fields(issues) == ["kernels"]
        msg = issues[0][1]
        assert f"'{op}'" in msg and f"'{family}'" in msg and "no pattern" in msg


def test_family_patterns_are_what_the_issue_expects():
    assert {o for o in OP_NAMES if "flux" in OPS[o].families} == {"rmsnorm", "rope", "adaln"}
    for unet in ("sd15", "sdxl"):
        assert {o for o in OP_NAMES if unet in OPS[o].families} == {"groupnorm_silu", "geglu"}


def test_unknown_family():
    # nothing asked: a family without kernel patterns runs as diffusers ships it
    assert check_options("kandinsky", KernelOptions()) == []
    assert "family" in _fields(check_options("kandinsky", KernelOptions(attention="sdpa")))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_first_block_cache_needs_a_transformer_family(family):
    issues = check_options(family, KernelOptions(cache={"kind": "first_block_cache"}))
    assert _fields(issues) == ["cache.kind"]
    assert "flux" in issues[0][1]
    assert check_options("flux", KernelOptions(cache={"kind": "first_block_cache"})) == []


def test_teacache_is_explained_and_unknown_kind_listed():
    issues = check_options("flux", KernelOptions(cache={"kind": "teacache"}))
    assert _fields(issues) == ["cache.kind"] and "first_block_cache" in issues[0][1]
    issues = check_options("flux", KernelOptions(cache={"kind": "warp"}))
    assert _fields(issues) == ["cache.kind"] and "unknown cache kind 'warp'" in issues[0][1]


@pytest.mark.parametrize(
    ("attention", "device", "dtype", "needle"),
    [
        ("xformers", "cpu", None, "needs cuda"),
        ("sdpa_efficient", "cpu", None, "needs cuda"),
        ("sdpa_flash", "cuda", "float32", "dtypes"),
    ],
)
def test_backend_unavailable_on_device(attention, device, dtype, needle):
    issues = check_options("sdxl", KernelOptions(attention=attention), device, dtype)
    assert _fields(issues) == ["attention"]
    assert needle in issues[0][1] and "'auto'" in issues[0][1]
    # without a device nothing machine-dependent is checked
    assert check_options("sdxl", KernelOptions(attention=attention)) == []


def test_xformers_without_the_package(monkeypatch):
    monkeypatch.setattr("genmedia.kernels.backends.module_available", lambda name: False)
    issues = check_options("flux", KernelOptions(attention="xformers"), "cuda")
    assert _fields(issues) == ["attention"] and "not installed" in issues[0][1]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "mps"])
def test_auto_never_errors(device, monkeypatch):
    monkeypatch.setattr("genmedia.kernels.backends.module_available", lambda name: False)
    for dtype in (None, "float32", "float16", "bfloat16"):
        assert check_options("flux", KernelOptions(attention="auto"), device, dtype) == []


def test_quantization_needs_torchao(monkeypatch):
    monkeypatch.setattr(options_mod, "module_available", lambda name: name != "torchao")
    issues = check_options("flux", KernelOptions(quantization="int8_dynamic"), "cpu")
    assert _fields(issues) == ["quantization"] and "torchao" in issues[0][1]
    assert check_options("flux", KernelOptions(quantization="int8_dynamic")) == []


def test_compile_on_cpu_needs_a_compiler(monkeypatch):
    monkeypatch.setattr(options_mod, "_cxx_compiler", lambda: None)
    issues = check_options("sd15", KernelOptions(compile=True), "cpu")
    assert _fields(issues) == ["compile"] and "C++ compiler" in issues[0][1]


def test_triton_ops_on_cuda_need_triton(monkeypatch):
    monkeypatch.setattr(options_mod, "module_available", lambda name: name != "triton")
    issues = check_options("flux", KernelOptions(kernels=["rope"]), "cuda")
    assert _fields(issues) == ["kernels"]
    # on the CPU the ops fall back to their torch reference instead
    assert check_options("flux", KernelOptions(kernels=["rope"]), "cpu") == []


def test_raise_for_options_lists_every_issue():
    opts = KernelOptions(attention="flash3", kernels=["rope"], cache={"kind": "teacache"})
    with pytest.raises(KernelOptionsError) as e:
        raise_for_options("sd15", opts)
    assert _fields(e.value.issues) == ["attention", "kernels", "cache.kind"]
    assert str(e.value).startswith("attention: unknown attention backend 'flash3'")
    assert isinstance(e.value, ValueError)
