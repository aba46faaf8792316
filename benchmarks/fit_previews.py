"""Fit each image family's latent -> RGB preview projection on its tiny checkpoint.

Offline tool behind ``models/previews.py``: for a family, run its tiny pipeline (seed 0
weights) on a few prompts and seeds with ``output_type="latent"``, decode those latents with
the family's VAE, average the decoded image over each latent pixel's patch, and fit
``rgb = W @ latent + b`` by least squares (W is 3 x C). Video (Wan): the same seeded call is
run for its latents and for its frames, and the first latent frame (which the causal VAE
decodes to the first frame alone) is paired with the first frame. Prints the ``Projection``
entries to paste into ``PROJECTIONS`` and each fit's R^2 (how much of the colour it explains:
the preview is approximate).

    .venv/bin/python benchmarks/fit_previews.py [sd15 sdxl flux wan]
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import numpy as np
import torch

from genmedia.models.previews import Projection, unpack

SIZE = 64
STEPS = 4
PROMPTS = ("a red apple", "blue sky over a field", "portrait", "a city at night")
SEEDS = (0, 1, 2, 3)
PIPELINE_KWARGS: dict[str, dict[str, Any]] = {
    "sd15": {"requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
    "flux": {},
    "wan": {},
}
VIDEO_FRAMES = 5


def _decode(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode(latents / vae.config.scaling_factor + shift).sample
    return ((images.clamp(-1, 1) + 1) / 2).float()  # [B, 3, H, W] in [0, 1]


def _video_pair(pipe: Any, prompt: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first latent frame [1, C, h, w], first decoded frame [1, 3, H, W] in [0, 1])."""
    outs = []
    for output_type in ("latent", "np"):
        with torch.inference_mode():
            out = pipe(
                prompt=prompt,
                width=SIZE,
                height=SIZE,
                num_frames=VIDEO_FRAMES,
                num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type=output_type,
            )
        outs.append(out.frames)
    latents = outs[0][:, :, 0].float()  # [1, C, F, h, w] -> the first latent frame
    frame = torch.from_numpy(np.asarray(outs[1])[:, 0]).permute(0, 3, 1, 2).float()
    return latents, frame


def samples(family: str) -> tuple[np.ndarray, np.ndarray]:
    """(latent pixels [N, C], mean decoded colour of their patches [N, 3])."""
    fam = importlib.import_module(f"genmedia.models.{family}")
    pipe = fam.pipeline_class()(**fam.build_components(0), **PIPELINE_KWARGS[family])
    pipe.set_progress_bar_config(disable=True)
    xs, ys = [], []
    for prompt in PROMPTS:
        for seed in SEEDS:
            if family == "wan":
                latents, rgb = _video_pair(pipe, prompt, seed)
                pooled = torch.nn.functional.avg_pool2d(rgb, rgb.shape[-1] // latents.shape[-1])
                xs.append(latents[0].flatten(1).T.numpy())
                ys.append(pooled[0].flatten(1).T.numpy())
                continue
            with torch.inference_mode():
                out = pipe(
                    prompt=prompt,
                    width=SIZE,
                    height=SIZE,
                    num_inference_steps=STEPS,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="latent",
                )
                latents = out.images
                packed = latents.ndim == 3
                if packed:  # Flux: [1, tokens, 4C] -> [1, C, h, w]
                    channels = latents.shape[2] // 4
                    grid = unpack(latents[0].float().numpy(), channels, SIZE, SIZE)
                    latents = torch.from_numpy(np.ascontiguousarray(grid))[None]
                rgb = _decode(pipe, latents.to(pipe.vae.dtype))
            factor = rgb.shape[-1] // latents.shape[-1]
            pooled = torch.nn.functional.avg_pool2d(rgb, factor)  # [1, 3, h, w]
            xs.append(latents[0].float().flatten(1).T.numpy())
            ys.append(pooled[0].flatten(1).T.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def fit(family: str) -> tuple[Projection, float]:
    x, y = samples(family)
    a = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)  # [C + 1, 3]
    pred = a @ coef
    r2 = 1.0 - float(((y - pred) ** 2).sum() / max(((y - y.mean(0)) ** 2).sum(), 1e-12))
    w = coef[:-1].T
    rows = tuple(tuple(round(float(v), 4) for v in row) for row in w)
    bias = tuple(round(float(v), 4) for v in coef[-1])
    proj = Projection(
        weights=rows,  # type: ignore[arg-type]
        bias=bias,  # type: ignore[arg-type]
        packed=family == "flux",
        video=family == "wan",
    )
    return proj, r2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=["sd15", "sdxl", "flux", "wan"])
    args = parser.parse_args()
    for family in args.families:
        proj, r2 = fit(family)
        print(f"# {family}: R^2 = {r2:.3f} over {len(PROMPTS) * len(SEEDS)} images")
        print(f'    "{family}": {proj!r},')


if __name__ == "__main__":
    main()
