"""Each Triton op against its torch reference (interpreter on the CPU, real kernels on CUDA),
over odd shapes, float32 and float16, with the tolerances of ``reference.TOLERANCES``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genmedia.kernels import reference as ref
from genmedia.kernels.dispatch import OpRunner, resolve_mode
from genmedia.kernels.reference import tolerance

from .conftest import DEVICE, seeded

DTYPES = [torch.float32, torch.float16]


def _randn(*shape, dtype, seed=0, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=seeded(seed)) * scale + shift).to(DEVICE, dtype)


def _close(op, out, expected, dtype):
    assert out.shape == expected.shape and out.dtype == expected.dtype
    atol, rtol = tolerance(op, dtype)
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def ops(kernel_device):
    from genmedia.kernels import triton_ops  # noqa: F401  (imported after TRITON_INTERPRET)
    from genmedia.kernels.triton_ops import adaln, geglu, groupnorm_silu, rmsnorm, rope

    return {
        "groupnorm_silu": groupnorm_silu,
        "rmsnorm": rmsnorm,
        "rope": rope,
        "adaln": adaln,
        "geglu": geglu,
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((2, 12, 5, 7), 4),  # odd spatial
        ((1, 6, 3, 3, 3), 3),  # 5-D (video-style)
        ((3, 8, 1), 2),  # 3-D, one position
        ((1, 4, 67, 67), 2),  # a group spans 3 chunks: the chunk statistics are merged
    ],
)
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_silu(ops, shape, groups, dtype, affine):
    x = _randn(*shape, dtype=dtype, scale=3.0, shift=2.0)  # a mean far from 0
    c = shape[1]
    w = _randn(c, dtype=dtype, seed=1) if affine else None
    b = _randn(c, dtype=dtype, seed=2) if affine else None
    out = ops["groupnorm_silu"].groupnorm_silu(x, groups, w, b, 1e-5)
    _close("groupnorm_silu", out, ref.groupnorm_silu(x, groups, w, b, 1e-5), dtype)


def test_groupnorm_silu_reference_is_the_stock_pair():
    x = torch.randn(2, 6, 4, 5)
    gn = torch.nn.GroupNorm(3, 6)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    with torch.no_grad():
        expected = F.silu(gn(x))
        out = ref.groupnorm_silu(x, 3, gn.weight, gn.bias, gn.eps)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 7, 2, 20), (5, 128), (1, 1, 3)])
@pytest.mark.parametrize("affine", ["none", "weight", "weight+bias"])
def test_rmsnorm(ops, shape, dtype, affine):
    x = _randn(*shape, dtype=dtype, scale=2.0)
    d = shape[-1]
    w = _randn(d, dtype=dtype, seed=1) if affine != "none" else None
    b = _randn(d, dtype=dtype, seed=2) if affine == "weight+bias" else None
    out = ops["rmsnorm"].rms_norm(x, w, b, 1e-6, ref.rms_norm_out_dtype(dtype, w))
    _close("rmsnorm", out, ref.rms_norm(x, w, b, 1e-6), dtype)


def test_rmsnorm_reference_matches_torch_module():
    norm = torch.nn.RMSNorm(12, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(4, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(ref.rms_norm(x, norm.weight, None, 1e-6, x.dtype), norm(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7, 3, 10), (1, 5, 2, 6), (1, 3, 5, 34)])
def test_rope(ops, shape, dtype):
    _, s, _, d = shape
    x = _randn(*shape, dtype=dtype)
    cos = _randn(s, d, dtype=torch.float32, seed=1)
    sin = _randn(s, d, dtype=torch.float32, seed=2)
    _close("rope", ops["rope"].rope(x, cos, sin), ref.rope(x, cos, sin), dtype)


def test_rope_reference_matches_diffusers():
    from diffusers.models.embeddings import apply_rotary_emb

    x = torch.randn(2, 5, 3, 8)
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)
    expected = apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=-1, sequence_dim=1)
    torch.testing.assert_close(ref.rope(x, cos, sin), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 33), (1, 3, 130), (3, 1, 7)])
def test_adaln_modulate(ops, shape, dtype):
    b, _, d = shape
    x = _randn(*shape, dtype=dtype, scale=2.0, shift=1.0)
    emb = _randn(b, 3 * d, dtype=dtype, seed=1)
    shift, scale, _ = emb.chunk(3, dim=1)  # strided views, as in AdaLayerNormZero
    out = ops["adaln"].adaln_modulate(x, shift, scale, 1e-6)
    _close("adaln", out, ref.adaln_modulate(x, shift, scale, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 33), (1, 3, 1030)])
def test_gated_residual(ops, shape, dtype):
    b, _, d = shape
    x = _randn(*shape, dtype=dtype)
    y = _randn(*shape, dtype=dtype, seed=1)
    gate = _randn(b, 2 * d, dtype=dtype, seed=2).chunk(2, dim=1)[1]
    out = ops["adaln"].gated_residual(x, gate, y)
    _close("gated_residual", out, ref.gated_residual(x, gate, y), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 26), (7, 66), (1, 2100)])
def test_geglu(ops, shape, dtype):
    h = _randn(*shape, dtype=dtype, scale=2.0)
    _close("geglu", ops["geglu"].geglu(h), ref.geglu(h), dtype)


def test_geglu_reference_matches_diffusers():
    from diffusers.models.activations import GEGLU

    mod = GEGLU(8, 6).eval()
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(ref.geglu(mod.proj(x)), mod(x))


def test_runner_falls_back_per_call_outside_the_kernel_dtypes(kernel_device):
    mode, _ = resolve_mode(kernel_device)
    runner = OpRunner(mode, kernel_device)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=kernel_device)
    out = runner.groupnorm_silu(x, 2, None, None, 1e-5)
    torch.testing.assert_close(out, ref.groupnorm_silu(x, 2, None, None, 1e-5))
    assert runner.reference_calls == 1
    runner.groupnorm_silu(x.float(), 2, None, None, 1e-5)
    assert runner.reference_calls == 1


def test_reference_mode_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mode, reason = resolve_mode("cpu")
    assert mode == "reference"
    assert "TRITON_INTERPRET is not set" in reason
    runner = OpRunner(mode, "cpu")
    h = torch.randn(3, 8)
    torch.testing.assert_close(runner.geglu(h), ref.geglu(h))
