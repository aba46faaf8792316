"""Bytes moved per denoising step by each fused op, eager vs fused, at SDXL and Flux 1024^2.

Where this sits in a request's way: nowhere at run time. It is the arithmetic behind the
speedup estimates of genmedia_kernels/README.md, and ``bench.py`` uses ``bytes_per_element`` to turn
measured times into GB/s. Pure Python; ``python -m genmedia.kernels.traffic`` prints the table.

Model: a memory-bound op costs the bytes it reads and writes in HBM. Eager counts every kernel
of the stock diffusers/torch code (each reads its inputs and writes its output); fused counts one
read of the inputs and one write of the output. Small tensors (weights, shift/scale rows, cos/sin
tables) are left out unless noted. Element sizes: activations 2 bytes (fp16/bf16), float32
temporaries 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

H = 2  # bytes of a half-precision activation
F = 4  # bytes of a float32 temporary

# (bytes per element eager, fused, where the eager count comes from)
BYTES_PER_ELEMENT: dict[str, tuple[float, float, str]] = {
    "groupnorm_silu": (
        5 * H,
        3 * H,
        "GroupNorm: statistics pass reads x, apply pass reads x and writes y; SiLU reads y and "
        "writes z (5 passes). Fused: statistics read + apply read + write (3).",
    ),
    "geglu": (
        5 * H,
        3 * H,
        "per output element: gelu(g) reads g, writes t; a * t reads a and t, writes y (5). "
        "Fused: read a and g, write y (3).",
    ),
    "rmsnorm_diffusers": (
        (H + F) + (F + F) + F + (H + F) + (F + H) + (H + H),
        2 * H,
        "diffusers RMSNorm: x.float() (2+4), pow(2) (4+4), mean (4), x * rsqrt (2+4), .to(half) "
        "(4+2), * weight (2+2) = 34. Fused: 2+2.",
    ),
    "rmsnorm_torch": (
        2 * H,
        2 * H,
        "torch.nn.RMSNorm (what Flux's attention uses in diffusers 0.42) is already one fused "
        "torch kernel on CUDA (torch >= 2.8, matching dtypes): 2+2, nothing to save.",
    ),
    "rope": (
        (H / 2 + H / 2) + (H + H) + (H + F) + (F + F) + (H + F) + (F + F) + (2 * F + F) + (F + H),
        2 * H + 1 / 3,
        "diffusers apply_rotary_emb: -x_imag (1+1), stack (2+2), x.float() (2+4), * cos (4+4), "
        "rotated.float() (2+4), * sin (4+4), add (8+4), .to(half) (4+2) = 52. Fused: 2+2, plus "
        "the float32 cos/sin rows (2 * 4 * 128 bytes per token) shared by 24 heads: +0.33.",
    ),
    "adaln": (
        (H + H) + (H + H) + (H + H),
        2 * H,
        "LayerNorm (2+2), * (1 + scale) (2+2), + shift (2+2) = 12. Fused: 2+2.",
    ),
    "gated_residual": (
        (H + H) + (2 * H + H),
        3 * H,
        "gate * y (2+2), x + t (4+2) = 10. Fused: read x and y, write (6). Not installed: "
        "diffusers applies the gate inline in the block's forward.",
    ),
}


def bytes_per_element(op: str) -> tuple[float, float]:
    eager, fused, _ = BYTES_PER_ELEMENT[op]
    return eager, fused


@dataclass(frozen=True)
class Site:
    """Elements one op touches in one denoising step of one model."""

    model: str
    op: str  # key of BYTES_PER_ELEMENT
    elements: int
    how: str


def sdxl_sites(batch: int = 2) -> list[Site]:
    """SDXL base UNet at 1024^2 (latent 128^2), CFG batch 2."""
    # (in channels, out channels, latent side) of each ResnetBlock2D, in forward order
    resnets = [
        (320, 320, 128), (320, 320, 128),
        (320, 640, 64), (640, 640, 64),
        (640, 1280, 32), (1280, 1280, 32),
        (1280, 1280, 32), (1280, 1280, 32),  # mid block
        (2560, 1280, 32), (2560, 1280, 32), (1920, 1280, 32),
        (1920, 640, 64), (1280, 640, 64), (960, 640, 64),
        (960, 320, 128), (640, 320, 128), (640, 320, 128),
    ]  # fmt: skip
    gn = sum((cin + cout) * side * side for cin, cout, side in resnets) + 320 * 128 * 128
    # BasicTransformerBlocks: 10 at 640 channels / 64^2 tokens, 60 at 1280 / 32^2
    geglu = 10 * 64 * 64 * 4 * 640 + 60 * 32 * 32 * 4 * 1280
    return [
        Site(
            "sdxl", "groupnorm_silu", batch * gn, "17 ResnetBlock2D (norm1 + norm2) + conv_norm_out"
        ),
        Site("sdxl", "geglu", batch * geglu, "70 GEGLU, output tokens x 4 * dim"),
    ]


def flux_sites(batch: int = 1) -> list[Site]:
    """FLUX.1 transformer at 1024^2: 4096 image + 512 text tokens, dim 3072, 19 + 38 blocks."""
    img, txt, dim = 4096, 512, 3072
    tokens = img + txt
    blocks = 19 + 38
    qk = blocks * 2 * tokens * dim  # q and k of every attention (text + image tokens)
    adaln = blocks * tokens * dim + img * dim  # norm1 + norm1_context / single norm, norm_out
    gates = (19 * 2 + 38) * tokens * dim
    return [
        Site("flux", "rmsnorm_torch", batch * qk, "QK-norm of 57 attentions (torch.nn.RMSNorm)"),
        Site("flux", "rope", batch * qk, "q and k of 57 attentions"),
        Site(
            "flux",
            "adaln",
            batch * adaln,
            "AdaLayerNormZero x2 per double block, "
            "AdaLayerNormZeroSingle per single block, norm_out",
        ),
        Site(
            "flux",
            "gated_residual",
            batch * gates,
            "4 gates per double block (2 on 4096, 2 "
            "on 512 tokens), 1 per single block (not installed)",
        ),
    ]


# Effective HBM bandwidth assumed for the estimates: 80 % of peak.
BANDWIDTH = {"A100-80GB": 0.8 * 2.04e12, "H100-SXM": 0.8 * 3.35e12}


class Row(TypedDict):
    """One op of one model in the estimates table."""

    model: str
    op: str
    elements: int
    eager_GB: float
    fused_GB: float
    ratio: float
    gpu: str
    saved_ms_per_step: float
    saved_s_per_image: float
    steps: int


def table() -> list[Row]:
    rows: list[Row] = []
    for site, gpu, steps in [
        *((s, "A100-80GB", 30) for s in sdxl_sites()),
        *((s, "H100-SXM", 28) for s in flux_sites()),
    ]:
        eager_b, fused_b = bytes_per_element(site.op)
        eager = site.elements * eager_b
        fused = site.elements * fused_b
        saved_s = (eager - fused) / BANDWIDTH[gpu]
        rows.append(
            {
                "model": site.model,
                "op": site.op,
                "elements": site.elements,
                "eager_GB": eager / 1e9,
                "fused_GB": fused / 1e9,
                "ratio": eager / fused,
                "gpu": gpu,
                "saved_ms_per_step": saved_s * 1e3,
                "saved_s_per_image": saved_s * steps,
                "steps": steps,
            }
        )
    return rows


def markdown() -> str:
    lines = [
        "| model | op | elements/step | eager GB | fused GB | ratio | saved ms/step | "
        "saved s/image |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table():
        lines.append(
            f"| {r['model']} | {r['op']} | {r['elements'] / 1e6:,.0f} M | {r['eager_GB']:.2f} | "
            f"{r['fused_GB']:.2f} | {r['ratio']:.2f}x | {r['saved_ms_per_step']:.2f} "
            f"({r['gpu']}) | {r['saved_s_per_image']:.3f} ({r['steps']} steps) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
