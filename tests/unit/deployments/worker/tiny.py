"""The tiny random-weight SD1.5 model the worker tests run: built offline into a folder, one
catalog entry ``m`` at 64 px by default."""

from __future__ import annotations

from pathlib import Path

from genmedia.models import registry
from genmedia.models.catalog import ModelEntry, parse_catalog


def tiny_sd15(folder: Path, *, max_side: int = 128, max_steps: int = 10) -> tuple[ModelEntry, Path]:
    """Its catalog entry and weights folder; ``max_side`` and ``max_steps`` bound requests."""
    path = folder / "sd15"
    registry.family_module("sd15").build_tiny(path, seed=0)
    side = {"default": 64, "min": 32, "max": max_side}
    parameters = {
        "width": side,
        "height": side,
        "steps": {"default": 4, "min": 1, "max": max_steps},
        "num_images": {"default": 1, "min": 1, "max": 4},
    }
    entry = {"id": "m", "family": "sd15", "weights": str(path), "parameters": parameters}
    return parse_catalog({"models": [entry]}).models[0], path
