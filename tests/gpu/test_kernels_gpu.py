"""The kernels on a real GPU: compiled Triton ops at the 1024^2 shapes against their references,
every attention backend that runs on the device against the math reference, the patcher on the
tiny pipelines, and the benchmark writing its rows. Skipped without CUDA."""

from __future__ import annotations

import csv
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "") not in ("", "0"),
        reason="TRITON_INTERPRET is set: run tests/gpu in its own pytest session",
    ),
]

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_ops_at_real_shapes(dtype):
    from genmedia.kernels import bench

    for case in bench._op_cases(list(bench.OPS), dtype):
        bench._check(case, dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_backends_match_math(dtype, with_mask):
    from genmedia.kernels.attention import get_impl
    from genmedia.kernels.backends import BACKENDS, check_backend
    from genmedia.kernels.reference import math_attention, tolerance

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 77, 64, device="cuda", generator=g, dtype=dtype) for _ in "qkv")
    mask = None
    if with_mask:
        mask = torch.rand(2, 1, 77, 77, device="cuda", generator=g) > 0.2
        mask[..., 0] = True
    ran = []
    for name in BACKENDS:
        if check_backend(name, "cuda", dtype, 64, with_mask) is not None:
            continue
        out = get_impl(name)(q, k, v, mask)
        atol, rtol = tolerance("attention", dtype)
        torch.testing.assert_close(
            out.float(), math_attention(q, k, v, mask).float(), atol=atol, rtol=rtol, msg=name
        )
        ran.append(name)
    assert "sdpa" in ran


@pytest.mark.parametrize(
    ("family", "ops"),
    [("sd15", ["groupnorm_silu", "geglu"]), ("flux", ["rmsnorm", "rope", "adaln"])],
)
def test_patcher_on_cuda(family, ops):
    from genmedia.kernels.options import KernelOptions
    from genmedia.kernels.patcher import apply_kernel_options
    from tests.unit.kernels.pipelines import generate, make_pipe

    expected = generate(make_pipe(family).to("cuda"), family)
    pipe = make_pipe(family).to("cuda")
    record = apply_kernel_options(pipe, family, KernelOptions(kernels=ops), "cuda")
    assert record["kernels_mode"] == "triton"
    assert all(record["kernels"][op] > 0 for op in ops)
    torch.testing.assert_close(generate(pipe, family), expected, atol=1e-3, rtol=1e-3)


def test_bench_appends_rows(tmp_path):
    from genmedia.kernels import bench

    assert bench.main(["--rounds", "1", "--ops", "rope", "--out", str(tmp_path)]) == 0
    with (tmp_path / "ops.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["impl"] for r in rows} == {"eager", "triton"}
    assert all(r["gpu"] and r["commit"] for r in rows)
