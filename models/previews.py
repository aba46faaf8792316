"""Live previews: a running call's latents projected to a small RGB image, without a VAE decode.

Where this sits in a request's way: a request that sets ``"preview": true`` has its family
worker, at most about twice a second (``deployments/worker/batch.py`` throttles), take the
latents diffusers hands its step callback (``runner.py``), project the first output's latent
pixels to RGB with the family's fixed 3 x C matrix and bias (``PROJECTIONS``), and PNG-encode
the result (at most ``MAX_SIDE`` pixels a side); the PNG travels on the progress stream to the
scheduler and out on the SSE stream as the status event's ``preview``.

The projections are approximate by design: each is a least-squares fit of the VAE's decoded
colours (averaged over each latent pixel's patch) on the latents, made offline on the tiny
checkpoints by ``benchmarks/fit_previews.py``, whose output is pasted below. They show the
layout and the colours roughly, never the decoded image; a real checkpoint wants its own fit.
numpy only; Pillow is imported to encode.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

MAX_SIDE = 64  # a preview's longer side, in pixels, at most


@dataclass(frozen=True)
class Projection:
    """A family's latent -> RGB map: ``rgb = weights @ latent + bias`` per latent pixel, in
    [0, 1]; ``packed``: the latents are 2x2 patches packed into tokens (Flux); ``video``: they
    are ``[C, F, h, w]`` and the preview shows the first latent frame (Wan)."""

    weights: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]  # 3 rows of C
    bias: tuple[float, float, float]
    packed: bool = False
    video: bool = False

    @property
    def channels(self) -> int:
        return len(self.weights[0])


# Fitted by ``benchmarks/fit_previews.py`` on the tiny checkpoints (seed 0 weights, 16 images of
# 64x64; Wan: first frames of 5-frame clips); R^2 of the fit: sd15 0.11, sdxl 0.11, flux 0.07,
# wan 0.11 (random-weight VAEs decode to nearly flat colour, so tiny models' previews are too).
PROJECTIONS: dict[str, Projection] = {
    "sd15": Projection(
        weights=(
            (-0.0057, -0.0024, -0.0058, -0.0015),
            (-0.0016, -0.0012, 0.0006, 0.0017),
            (0.0051, -0.0027, 0.0029, 0.0077),
        ),
        bias=(0.5709, 0.5127, 0.5472),
    ),
    "sdxl": Projection(
        weights=(
            (-0.0054, -0.0009, -0.0045, -0.002),
            (-0.0006, 0.0004, 0.0019, 0.0016),
            (0.0073, -0.0043, 0.0019, 0.0078),
        ),
        bias=(0.5596, 0.5062, 0.547),
    ),
    "flux": Projection(
        weights=(
            (0.0111, -0.0093, 0.0002, -0.0211),
            (0.0045, -0.0141, 0.0001, -0.0099),
            (-0.0119, -0.0014, 0.0015, 0.0087),
        ),
        bias=(0.5896, 0.4804, 0.5225),
        packed=True,
    ),
    "wan": Projection(
        weights=(
            (
                0.0043,
                0.0005,
                0.0011,
                0.0006,
                -0.0004,
                -0.0002,
                -0.0008,
                -0.0007,
                0.0024,
                -0.0017,
                0.0025,
                0.0013,
                -0.001,
                0.0004,
                -0.0017,
                -0.0007,
            ),
            (
                0.0061,
                -0.0022,
                0.0035,
                -0.0007,
                0.0019,
                -0.0016,
                -0.0026,
                -0.0001,
                0.0041,
                -0.0013,
                -0.0008,
                -0.0006,
                -0.0028,
                0.0014,
                -0.0003,
                0.0004,
            ),
            (
                -0.0037,
                0.0011,
                -0.0018,
                0.0,
                -0.0006,
                0.0018,
                0.0019,
                0.0003,
                -0.0029,
                0.002,
                0.0002,
                0.0007,
                0.0013,
                -0.0008,
                0.0011,
                -0.0003,
            ),
        ),
        bias=(0.5594, 0.4962, 0.5529),
        video=True,
    ),
}


def supports_preview(family: str) -> bool:
    """Whether ``family`` has a projection (its requests may ask for previews)."""
    return family in PROJECTIONS


def unpack(tokens: np.ndarray, channels: int, width: int, height: int) -> np.ndarray:
    """Flux's packed latents ``[tokens, channels * 4]`` back to ``[channels, h, w]``: each token
    is a 2x2 patch, in the image's aspect ratio (``width`` x ``height``)."""
    n = tokens.shape[0]
    rows = max(1, round(math.sqrt(n * height / max(1, width))))
    cols = n // rows
    if rows * cols != n or tokens.shape[1] != channels * 4:
        raise ValueError(f"cannot unpack latents of shape {tokens.shape} for {width}x{height}")
    grid = tokens.reshape(rows, cols, channels, 2, 2)
    return grid.transpose(2, 0, 3, 1, 4).reshape(channels, rows * 2, cols * 2)


def latent_rgb(family: str, latent: np.ndarray, width: int = 0, height: int = 0) -> np.ndarray:
    """One output's latents (``[C, h, w]``, Flux's ``[tokens, 4C]``, Wan's ``[C, F, h, w]``) as
    ``[h, w, 3]`` uint8."""
    proj = PROJECTIONS[family]
    x = np.asarray(latent, dtype=np.float32)
    if proj.packed:
        x = unpack(x, proj.channels, width, height)
    if proj.video and x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] != proj.channels:
        raise ValueError(f"{family} latents of shape {x.shape}: want [{proj.channels}, h, w]")
    w = np.asarray(proj.weights, dtype=np.float32)
    b = np.asarray(proj.bias, dtype=np.float32)
    rgb = np.einsum("rc,chw->hwr", w, x) + b
    return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(rgb: np.ndarray, max_side: int = MAX_SIDE) -> tuple[bytes, int, int]:
    """``[h, w, 3]`` uint8 as PNG bytes, scaled down to ``max_side`` on its longer side."""
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False, compress_level=1)
    return buf.getvalue(), img.width, img.height


def preview_png(
    family: str, latent: np.ndarray, width: int = 0, height: int = 0
) -> tuple[bytes, int, int]:
    """One output's preview: PNG bytes, width and height."""
    return encode_png(latent_rgb(family, latent, width, height))
