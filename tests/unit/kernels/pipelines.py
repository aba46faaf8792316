"""Tiny family pipelines for the patcher tests, built in memory from the family adapters."""

from __future__ import annotations

import torch
from torch import nn

from genmedia.models import flux, sd15, sdxl

FAMILY_MODULES = {"sd15": sd15, "sdxl": sdxl, "flux": flux}
_PIPE_KWARGS = {
    "sd15": {"requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
    "flux": {},
}
SIZES = {"sd15": 64, "sdxl": 64, "flux": 32}


def make_pipe(family: str, seed: int = 0):
    """The tiny pipeline of ``family`` in eval mode (as ``from_pretrained`` would leave it)."""
    fam = FAMILY_MODULES[family]
    pipe = fam.PIPELINE_CLASS(**fam.build_components(seed), **_PIPE_KWARGS[family])
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()  # build_components leaves modules in train mode (T5 dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, family: str, steps: int = 2) -> torch.Tensor:
    """Latents after ``steps`` denoising steps for one fixed prompt and seed."""
    fam = FAMILY_MODULES[family]
    size = SIZES[family]
    with torch.inference_mode():
        out = pipe(
            prompt=["a red cube on a table"],
            width=size,
            height=size,
            num_inference_steps=steps,
            generator=[torch.Generator("cpu").manual_seed(0)],
            output_type="latent",
            **fam.call_kwargs(guidance_scale=5.0, negative_prompts=None),
        )
    return out.images.float()
