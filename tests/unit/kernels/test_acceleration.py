"""Acceleration options on the tiny Flux model, where they run on the CPU: torchao int8
quantization, diffusers First-Block-Cache, torch.compile; each is recorded when active."""

from __future__ import annotations

import json

import pytest
import torch

from genmedia.kernels.options import KernelOptions
from genmedia.kernels.patcher import apply_kernel_options, reset_step_cache
from genmedia.kernels.reference import tolerance

from .pipelines import generate, make_pipe
from .test_patcher import unpatched


def _close(out, expected, what):
    atol, rtol = tolerance(what, torch.float32)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kind", ["int8_weight_only", "int8_dynamic"])
def test_torchao_int8(kind):
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
    pipe = make_pipe("flux")
    record = apply_kernel_options(pipe, "flux", KernelOptions(quantization=kind), "cpu")
    assert record["quantization"] == kind
    assert record["quantized_linear_layers"] > 0
    proj = pipe.transformer.single_transformer_blocks[0].proj_mlp
    assert type(proj.weight).__module__.startswith("torchao")  # int8 tensor subclass
    out = generate(pipe, "flux")
    assert not torch.equal(out, unpatched("flux"))
    _close(out, unpatched("flux"), "pipeline_int8")


def _count_tail_compute(pipe) -> list[int]:
    # proj_mlp of the last block runs only when First-Block-Cache computes the remaining blocks
    calls = [0]
    block = pipe.transformer.single_transformer_blocks[-1]
    block.proj_mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_first_block_cache_skips_blocks_and_is_recorded():
    pipe = make_pipe("flux")
    record = apply_kernel_options(
        pipe, "flux", KernelOptions(cache={"kind": "first_block_cache", "threshold": 1.0}), "cpu"
    )
    assert record["cache"] == {"kind": "first_block_cache", "threshold": 1.0}
    json.dumps(record)
    calls = _count_tail_compute(pipe)
    out = generate(pipe, "flux", steps=3)
    assert calls[0] < 3  # some steps reused the cached residual of the remaining blocks
    assert torch.isfinite(out).all()
    reset_step_cache(pipe)


def test_first_block_cache_with_a_tiny_threshold_computes_every_step():
    pipe = make_pipe("flux")
    apply_kernel_options(pipe, "flux", KernelOptions(cache={"threshold": 1e-9}), "cpu")
    calls = _count_tail_compute(pipe)
    out = generate(pipe, "flux")
    assert calls[0] == 2
    _close(out, unpatched("flux"), "pipeline")


def test_torch_compile_on_cpu():
    pipe = make_pipe("flux")
    record = apply_kernel_options(pipe, "flux", KernelOptions(compile=True), "cpu")
    assert record["compile"] is True
    _close(generate(pipe, "flux"), unpatched("flux"), "pipeline_compiled")


def test_everything_together_on_flux(kernel_device):
    pytest.importorskip("torchao")
    pipe = make_pipe("flux")
    opts = KernelOptions(
        attention="sdpa_math",
        kernels=["rmsnorm", "rope", "adaln"],
        cache={"threshold": 1e-9},
        quantization="int8_weight_only",
    )
    record = apply_kernel_options(pipe, "flux", opts, kernel_device)
    assert record["attention"] == "sdpa_math"
    assert record["kernels"] == {"rmsnorm": 6, "rope": 2, "adaln": 4}
    assert record["cache"]["threshold"] == 1e-9 and record["quantization"] == "int8_weight_only"
    _close(generate(pipe, "flux"), unpatched("flux"), "pipeline_int8")
