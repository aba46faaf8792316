"""Every attention backend that runs here agrees with the math reference; the processors keep
the stock diffusers semantics (including masks)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from genmedia.kernels.attention import get_impl
from genmedia.kernels.backends import BACKENDS, check_backend
from genmedia.kernels.processors import UNetAttnProcessor
from genmedia.kernels.reference import math_attention, tolerance

from .conftest import DEVICE, seeded

RUNNABLE = [name for name in BACKENDS if check_backend(name, DEVICE) is None]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (batch, heads, query len, key len, head dim): odd sizes, self- and cross-attention
SHAPES = [(2, 3, 7, 7, 12), (1, 2, 9, 5, 8), (2, 1, 1, 17, 20)]


def _qkv(shape, dtype, seed=0):
    b, h, sq, sk, d = shape
    g = seeded(seed)
    q = torch.randn(b, h, sq, d, generator=g)
    k = torch.randn(b, h, sk, d, generator=g)
    v = torch.randn(b, h, sk, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


def _masks(shape, dtype):
    b, _, sq, sk, _ = shape
    g = seeded(1)
    keep = torch.rand(b, 1, sq, sk, generator=g) > 0.3
    keep[..., 0] = True  # every query attends to something
    additive = torch.zeros(b, 1, sq, sk).masked_fill(~keep, -1e4)
    return {"bool": keep.to(DEVICE), "additive": additive.to(DEVICE, dtype)}


def test_the_cpu_backends_are_runnable_here():
    if DEVICE == "cpu":
        assert set(RUNNABLE) == {"sdpa", "sdpa_flash", "sdpa_math", "math"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
@pytest.mark.parametrize("backend", RUNNABLE)
def test_backend_matches_math_reference(backend, mask_kind, dtype, shape):
    head_dim = shape[-1]
    if check_backend(backend, DEVICE, dtype, head_dim, mask_kind is not None) is not None:
        pytest.skip("backend rules exclude this combination")
    q, k, v = _qkv(shape, dtype)
    mask = _masks(shape, dtype)[mask_kind] if mask_kind else None
    out = get_impl(backend)(q, k, v, mask)
    expected = math_attention(q, k, v, mask)
    assert out.shape == expected.shape and out.dtype == dtype
    atol, rtol = tolerance("attention", dtype)
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol)


def test_explicit_scale_is_honoured():
    q, k, v = _qkv(SHAPES[0], torch.float32)
    out = get_impl("sdpa")(q, k, v, None, 0.3)
    torch.testing.assert_close(out, math_attention(q, k, v, None, 0.3), atol=2e-5, rtol=2e-5)


def test_backends_import_lazily():
    # the xformers implementation is importable without xformers; it fails only when called
    fn = get_impl("xformers")
    assert callable(fn)


def _attention_module(cross: bool) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=12 if cross else None)


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_unet_processor_matches_stock(backend, cross, with_mask):
    attn = _attention_module(cross).to(DEVICE).eval()
    g = seeded(3)
    x = torch.randn(2, 6, 16, generator=g).to(DEVICE)
    ctx = torch.randn(2, 5, 12, generator=g).to(DEVICE) if cross else None
    mask = None
    if with_mask:
        keys = 5 if cross else 6
        mask = torch.zeros(2, keys, device=DEVICE)
        mask[:, -2:] = -10000.0  # diffusers' additive (batch, keys) mask
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        expected = attn(x, encoder_hidden_states=ctx, attention_mask=mask)
        attn.set_processor(UNetAttnProcessor(backend, mask_ok=True))
        out = attn(x, encoder_hidden_states=ctx, attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_unet_processor_sends_masked_calls_to_sdpa_when_backend_takes_no_mask(caplog):
    attn = _attention_module(cross=False).eval()
    x = torch.randn(1, 4, 16, generator=seeded(4))
    mask = torch.zeros(1, 4)
    mask[:, -1] = -10000.0
    with torch.no_grad():
        expected = attn(x, attention_mask=mask)
        proc = UNetAttnProcessor("math", mask_ok=False)
        proc.attend.fn = None  # would fail if called with the mask
        attn.set_processor(proc)
        with caplog.at_level("INFO", logger="genmedia.kernels"):
            out = attn(x, attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    assert "takes no mask" in caplog.text


def test_unet_processor_image_input_and_residual():
    torch.manual_seed(0)
    attn = Attention(
        query_dim=8, heads=2, dim_head=4, norm_num_groups=2, residual_connection=True
    ).eval()
    x = torch.randn(2, 8, 3, 5, generator=seeded(5))
    with torch.no_grad():
        expected = attn(x)
        attn.set_processor(UNetAttnProcessor("sdpa"))
        out = attn(x)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
