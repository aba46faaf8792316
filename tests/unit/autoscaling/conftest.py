"""Catalog builders shared by the placement, policy and render tests."""

from __future__ import annotations

from genmedia.models.catalog import Catalog, parse_catalog


def model(mid: str, family: str = "sd15", **over) -> dict:
    """A catalog entry; default request: 1 image x 10 steps x 512x512 = 2.62 work units."""
    base = {
        "id": mid,
        "family": family,
        "weights": f"tiny://{family}",
        "parameters": {
            "width": {"default": 512, "min": 256, "max": 1024},
            "height": {"default": 512, "min": 256, "max": 1024},
            "steps": {"default": 10, "min": 1, "max": 50},
        },
        "gpu_fraction": 0.25,
        "memory_gb": 4.0,
    }
    base.update(over)
    return base


def catalog(models: list[dict], workers: dict | None = None) -> Catalog:
    return parse_catalog({"models": models, "workers": workers or {}}, "cat.yaml")
