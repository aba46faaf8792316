"""The patcher end to end on the tiny family pipelines: patched output equals unpatched output
(Triton ops under the interpreter on the CPU), counts and reasons in the record, bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from genmedia.kernels.options import KernelOptions, KernelOptionsError
from genmedia.kernels.patcher import apply_kernel_options, denoiser
from genmedia.kernels.reference import tolerance

from .conftest import DEVICE
from .pipelines import generate, make_pipe

# patched module instances in the tiny checkpoints of models/<family>.py
EXPECTED = {
    # 8 ResnetBlock2D + conv_norm_out; one GEGLU per transformer block
    "sd15": {"groupnorm_silu": 9, "geglu": 7},
    "sdxl": {"groupnorm_silu": 9, "geglu": 8},
    # 4 QK-norms in the double block + 2 in the single block; rope in both attentions;
    # norm1 + norm1_context + single-block norm + norm_out
    "flux": {"rmsnorm": 6, "rope": 2, "adaln": 4},
}
ATTENTION_LAYERS = {"sd15": 14, "sdxl": 16, "flux": 2}

_unpatched: dict[str, torch.Tensor] = {}


def unpatched(family: str) -> torch.Tensor:
    if family not in _unpatched:
        _unpatched[family] = generate(make_pipe(family), family)
    return _unpatched[family]


def _assert_same(out, expected, what="pipeline"):
    atol, rtol = tolerance(what, torch.float32)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


def _patched_modules(model):
    return [m for m in model.modules() if getattr(m, "_genmedia_op", None)]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_patched_pipeline_matches_unpatched(family, kernel_device):
    pipe = make_pipe(family)
    ops = list(EXPECTED[family])
    record = apply_kernel_options(pipe, family, KernelOptions(kernels=ops), kernel_device)
    json.dumps(record)  # goes into every result
    assert record["kernels"] == EXPECTED[family]
    assert record["kernels_untouched"] == {}
    assert record["kernels_mode"] == ("interpreter" if DEVICE == "cpu" else "triton")
    assert record["attention"] == "sdpa"
    assert record["attention_layers"] == {"sdpa": ATTENTION_LAYERS[family]}
    # UNet: the stock SDPA processors stay; Flux: ours, which applies the fused RoPE
    stock = 0 if "rope" in ops else ATTENTION_LAYERS[family]
    assert record["attention_stock_layers"] == stock
    _assert_same(generate(pipe, family), unpatched(family))
    # every fused call took the kernel path, none fell back to the reference
    runners = {id(m._genmedia_ops): m._genmedia_ops for m in _patched_modules(denoiser(pipe)[1])}
    assert runners and all(r.reference_calls == 0 for r in runners.values())


@pytest.mark.parametrize(
    ("family", "ops"),
    [("sd15", ["rope", "rmsnorm", "adaln"]), ("flux", ["groupnorm_silu", "geglu"])],
)
def test_model_without_the_pattern_is_left_untouched(family, ops, caplog):
    pipe = make_pipe(family)
    with caplog.at_level(logging.WARNING, logger="genmedia.kernels"):
        record = apply_kernel_options(
            pipe, family, KernelOptions(kernels=ops), DEVICE, strict=False
        )
    assert record["kernels"] == dict.fromkeys(ops, 0)
    assert set(record["kernels_untouched"]) == set(ops)
    for op in ops:
        assert "left untouched" in record["kernels_untouched"][op]
    assert "left untouched" in caplog.text
    assert _patched_modules(denoiser(pipe)[1]) == []
    _assert_same(generate(pipe, family), unpatched(family))


def test_op_for_a_family_without_the_pattern_is_refused_by_default():
    with pytest.raises(KernelOptionsError) as e:
        apply_kernel_options(make_pipe("flux"), "flux", KernelOptions(kernels=["geglu"]), "cpu")
    assert [f for f, _ in e.value.issues] == ["kernels"]


def test_without_interpreter_the_ops_run_their_reference(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pipe = make_pipe("sd15")
    with caplog.at_level(logging.WARNING, logger="genmedia.kernels"):
        record = apply_kernel_options(
            pipe, "sd15", KernelOptions(kernels=["groupnorm_silu", "geglu"]), "cpu"
        )
    assert record["kernels_mode"] == "reference"
    assert "TRITON_INTERPRET is not set" in record["kernels_reason"]
    assert "TRITON_INTERPRET is not set" in caplog.text
    assert record["kernels"] == EXPECTED["sd15"]  # patched, running the torch reference
    _assert_same(generate(pipe, "sd15"), unpatched("sd15"))


@pytest.mark.parametrize("backend", ["math", "sdpa_math", "sdpa_flash"])
def test_explicit_attention_backend(backend):
    pipe = make_pipe("sd15")
    record = apply_kernel_options(pipe, "sd15", KernelOptions(attention=backend), "cpu")
    assert record["attention"] == backend
    assert record["attention_layers"] == {backend: ATTENTION_LAYERS["sd15"]}
    assert record["attention_fallback_reason"] is None
    assert record["attention_stock_layers"] == 0
    _assert_same(generate(pipe, "sd15"), unpatched("sd15"))


def test_explicit_backend_unavailable_on_device_is_an_error():
    with pytest.raises(KernelOptionsError) as e:
        apply_kernel_options(make_pipe("flux"), "flux", KernelOptions(attention="xformers"), "cpu")
    assert e.value.issues[0][0] == "attention"
    assert "needs cuda" in str(e.value)


def test_auto_logs_why_it_fell_back(caplog):
    with caplog.at_level(logging.INFO, logger="genmedia.kernels"):
        record = apply_kernel_options(make_pipe("flux"), "flux", KernelOptions(), "cpu")
    assert record["attention"] == "sdpa"
    assert record["attention_fallback_reason"] == "xformers needs cuda (device is cpu)"
    assert "attention auto -> sdpa: xformers needs cuda (device is cpu)" in caplog.text


def test_default_options_leave_the_pipeline_stock():
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = make_pipe("sd15")
    record = apply_kernel_options(pipe, "sd15", KernelOptions(), "cpu")
    assert record["attention"] == "sdpa"
    assert record["attention_stock_layers"] == ATTENTION_LAYERS["sd15"]
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())
    assert record["kernels"] == {} and "kernels_mode" not in record
    assert (record["compile"], record["cache"], record["quantization"]) == (False, None, "none")


def test_patching_twice_is_refused():
    pipe = make_pipe("flux")
    apply_kernel_options(pipe, "flux", KernelOptions(), "cpu")
    with pytest.raises(ValueError, match="already"):
        apply_kernel_options(pipe, "flux", KernelOptions(), "cpu")
