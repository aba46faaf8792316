"""Checkpoint writing, loading and scheduler swapping shared by the family modules.

Where this sits: under every ``models/<family>.py``, at replica start and in tests. A family's
``build_tiny`` ends in ``save_tiny``, its ``load_pipeline`` in ``load_checkpoint`` (through
``fast_load.py``) and its ``set_scheduler`` is ``swap_scheduler``; the family module keeps what
differs (components, configs, call arguments). torch is imported on use, as the family modules do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedia.models import weights

if TYPE_CHECKING:
    import torch


def save_tiny(pipe: Any, out_dir: Path, *, family: str, seed: int, version: int) -> None:
    """Write ``pipe`` to ``out_dir`` (atomically) with the tiny marker ``weights`` checks."""
    marker = {"family": family, "seed": seed, "version": version}
    weights.save_pipeline_atomically(pipe, Path(out_dir), {weights.TINY_MARKER: marker})


def load_checkpoint(
    pipeline_class: Any,
    path: Path,
    dtype: torch.dtype | None,
    device: str,
    component_dtypes: Mapping[str, torch.dtype] | None = None,
    **components: Any,
) -> Any:
    """A safetensors-only checkpoint directory on ``device`` (``dtype`` None: float32),
    offline, progress bars off, through ``fast_load.load_pipeline``: parallel reads straight
    into modules built without initialising their weights. ``pipeline_class`` is the class or
    a function importing it (called once the reads have started). ``component_dtypes`` overrides
    ``dtype`` per component (e.g. a VAE kept in float32); ``components`` replace the
    checkpoint's own or are passed to the pipeline."""
    import torch

    from genmedia.models.fast_load import load_pipeline

    path = Path(path)
    weights.check_safetensors_only(path)
    pipe, _report = load_pipeline(
        pipeline_class,
        path,
        torch.float32 if dtype is None else dtype,
        device,
        component_dtypes,
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def swap_scheduler(pipe: Any, family: str, schedulers: Mapping[str, Any], name: str) -> None:
    """Replace ``pipe.scheduler`` by ``schedulers[name]`` built from the current config, or a
    ValueError listing the family's schedulers."""
    try:
        factory = schedulers[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r} for {family}; allowed: {', '.join(sorted(schedulers))}"
        ) from None
    pipe.scheduler = factory.from_config(pipe.scheduler.config)
