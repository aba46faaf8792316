"""The model families genmedia serves, as light data (no torch/diffusers import).

Read by the catalog validator and the gateway to check requests; the family worker imports the
heavy family module named here (``models/<family>.py``) to build, load and run pipelines.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class FamilySpec:
    """What the catalog and the gateway need to know about a family without loading it."""

    name: str
    module: str
    tasks: tuple[str, ...]
    schedulers: tuple[str, ...]
    default_scheduler: str
    size_multiple: int
    title: str
    num_frames_step: int | None = None  # video: num_frames must be step * k + 1
    # negative prompts "none" and "" give different outputs: they must not share a batch
    negative_prompt_splits: bool = True


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            name="sd15",
            module="genmedia.models.sd15",
            tasks=("text-to-image", "image-to-image", "inpainting"),
            schedulers=("ddim", "euler", "euler_a", "dpmpp_2m", "pndm"),
            default_scheduler="euler",
            size_multiple=8,
            title="Stable Diffusion 1.5-style (UNet + CLIP)",
        ),
        FamilySpec(
            name="sdxl",
            module="genmedia.models.sdxl",
            tasks=("text-to-image", "image-to-image", "inpainting"),
            schedulers=("ddim", "euler", "euler_a", "dpmpp_2m", "pndm"),
            default_scheduler="euler",
            size_multiple=8,
            title="Stable Diffusion XL-style (UNet + two CLIP encoders)",
        ),
        FamilySpec(
            name="flux",
            module="genmedia.models.flux",
            tasks=("text-to-image", "image-to-image", "inpainting"),
            schedulers=("flow_euler",),
            default_scheduler="flow_euler",
            size_multiple=16,
            title="Flux-style (MMDiT transformer + CLIP + T5)",
        ),
        FamilySpec(
            name="wan",
            module="genmedia.models.wan",
            tasks=("text-to-video",),
            schedulers=("unipc", "flow_euler"),
            default_scheduler="unipc",
            size_multiple=16,
            title="Wan 2.1-style video (3D DiT + causal video VAE + UMT5)",
            num_frames_step=4,
        ),
        FamilySpec(
            name="stable-audio",
            module="genmedia.models.stable_audio",
            tasks=("text-to-audio",),
            schedulers=("cosine_dpmpp_2m_sde", "edm_dpmpp_2m"),
            default_scheduler="cosine_dpmpp_2m_sde",
            size_multiple=1,
            title="Stable Audio Open-style audio (DiT + Oobleck VAE + T5)",
        ),
    )
}


def family_spec(name: str) -> FamilySpec:
    """The spec of a family, or a ValueError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}"
        ) from None


def family_module(name: str) -> ModuleType:
    """Import the heavy family module (diffusers, torch) on first use."""
    return importlib.import_module(family_spec(name).module)
