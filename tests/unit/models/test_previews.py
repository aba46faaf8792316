"""Live previews (``models/previews.py``): the fixed latent -> RGB projections, Flux's packed
latents, and the PNG a status event carries."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmedia.models import previews
from genmedia.models.previews import PROJECTIONS, encode_png, latent_rgb, preview_png, unpack


@pytest.mark.parametrize("family", sorted(PROJECTIONS))
def test_every_projection_is_three_rows_of_the_latent_channels(family: str) -> None:
    proj = PROJECTIONS[family]
    assert len(proj.weights) == 3 and len(proj.bias) == 3
    assert len({len(row) for row in proj.weights}) == 1 and proj.channels >= 1


def test_a_latent_becomes_an_rgb_image_of_its_size() -> None:
    latent = np.random.default_rng(0).standard_normal((4, 8, 12)).astype(np.float32)
    rgb = latent_rgb("sd15", latent)
    assert rgb.shape == (8, 12, 3) and rgb.dtype == np.uint8
    # a zero latent shows the bias colour
    flat = latent_rgb("sd15", np.zeros((4, 2, 2), np.float32))
    want = np.round(np.asarray(PROJECTIONS["sd15"].bias) * 255).astype(np.uint8)
    assert (flat == want).all()


def test_unpack_inverts_the_flux_pipeline_packing() -> None:
    from diffusers import FluxPipeline

    latents = torch.randn(1, 4, 6, 10)  # [B, C, h, w], h and w even
    packed = FluxPipeline._pack_latents(latents, 1, 4, 6, 10)  # [B, tokens, 4C]
    back = unpack(packed[0].numpy(), 4, width=80, height=48)
    assert np.allclose(back, latents[0].numpy())
    with pytest.raises(ValueError, match="cannot unpack"):
        unpack(packed[0].numpy()[:-1], 4, width=80, height=48)


def test_wrong_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="want"):
        latent_rgb("sd15", np.zeros((3, 4, 4), np.float32))


def test_png_is_at_most_max_side_and_decodes() -> None:
    big = np.zeros((128, 96, 3), np.uint8)
    png, w, h = encode_png(big)
    assert (w, h) == (48, 64) and max(w, h) == previews.MAX_SIDE
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (48, 64) and img.mode == "RGB"
    png, w, h = preview_png("sd15", np.zeros((4, 8, 8), np.float32))
    assert (w, h) == (8, 8) and png.startswith(b"\x89PNG")


def test_a_video_latent_shows_its_first_frame() -> None:
    latent = np.zeros((16, 3, 4, 4), np.float32)
    latent[:, 1:] = 100.0  # later frames would saturate
    rgb = latent_rgb("wan", latent)
    assert rgb.shape == (4, 4, 3)
    assert (rgb == latent_rgb("wan", latent[:, 0])).all()


def test_wan_hands_its_latents_to_the_preview_hook(tmp_path: Path) -> None:
    from genmedia.models import wan

    wan.build_tiny(tmp_path / "wan", seed=0)
    pipe = wan.load_pipeline(tmp_path / "wan")
    seen: list[tuple[int, tuple[int, ...]]] = []
    wan.run_text_to_video(
        pipe,
        ["a cat"],
        num_frames=5,
        width=64,
        height=64,
        steps=2,
        generators=[torch.Generator("cpu").manual_seed(0)],
        on_step=lambda done, total: None,
        on_latents=lambda done, latents: seen.append((done, tuple(latents.shape))),
    )
    assert [s for s, _ in seen] == [1, 2]
    shape = seen[0][1]
    assert shape[:2] == (1, 16) and len(shape) == 5
    png, w, h = preview_png("wan", np.zeros(shape[1:], np.float32))
    assert (w, h) == (shape[-1], shape[-2]) and png.startswith(b"\x89PNG")
