"""What a model family is: the ``SPEC`` every ``models/<family>.py`` exports, and the helpers
its runner shares with the others.

Where this sits in a request's way: the catalog validator (deploy time) and the gateway (every
request) read a spec's facts through ``models/registry.py`` — tasks, schedulers, the size
multiple, the num_frames rule, which components a LoRA may target — and never import torch for
them; the family worker calls the spec's hooks: ``build_tiny`` and ``load_pipeline`` at replica
start, ``run`` for every batch, ``scheduler_factories`` for each call's own scheduler. A family
module imports torch and diffusers inside those hooks only.

Adding a family is one module exporting ``SPEC`` plus a line in ``registry.FAMILY_MODULES``
and a catalog entry; the generic code asks the spec, never the family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from genmedia.models.params import GenerationJob
    from genmedia.models.runner import LoadedModel

# (steps done, total steps); called between denoising steps, may raise to stop the call
StepCallback = Callable[[int, int], None]


class SchedulerFactory(Protocol):
    """A diffusers scheduler class, or anything else building one from a scheduler config."""

    def from_config(self, config: Any, /) -> Any: ...


class TinyBuilder(Protocol):
    """Writes a deterministic random-weight checkpoint of the family to ``out_dir``."""

    def __call__(self, out_dir: Path, seed: int = 0) -> None: ...


class PipelineLoader(Protocol):
    """Loads a safetensors-only checkpoint directory onto ``device`` (``dtype`` None: float32)."""

    def __call__(
        self, path: Path, dtype: torch.dtype | None = None, device: str = "cpu"
    ) -> Any: ...


class BatchRunner(Protocol):
    """One pipeline call for a batch of compatible jobs: the outputs of each job, in order
    (images ``[H, W, 3]`` uint8, video ``[F, H, W, 3]`` uint8, audio ``[channels, samples]``
    float32). ``inputs`` holds each job's input images for image-to-image and inpainting."""

    def __call__(
        self,
        model: LoadedModel,
        jobs: list[GenerationJob],
        on_step: StepCallback | None = None,
        inputs: list[dict] | None = None,
    ) -> list[list[np.ndarray]]: ...


def image_runner(call_kwargs: Callable[..., dict[str, Any]]) -> BatchRunner:
    """The ``run`` of an image family (sd15, sdxl, flux): one call of the batch's image task
    (``runner.run_images``) with the family's own pipeline call arguments."""

    def run(
        model: LoadedModel,
        jobs: list[GenerationJob],
        on_step: StepCallback | None = None,
        inputs: list[dict] | None = None,
    ) -> list[list[np.ndarray]]:
        from genmedia.models.runner import run_images  # torch and diffusers: at call time

        return run_images(model, jobs, on_step, inputs, call_kwargs)

    return run


@dataclass(frozen=True)
class FamilySpec:
    """One model family: the facts requests and catalogs are checked against, and the hooks the
    family worker calls."""

    name: str  # the catalog's ``family`` value and the worker deployment's suffix
    title: str  # shown by GET /v1/models
    tasks: tuple[str, ...]  # what its pipelines do; the first is a model's default task
    schedulers: tuple[str, ...]  # scheduler names a request may pick
    default_scheduler: str
    size_multiple: int  # width and height must be multiples of it
    build_tiny: TinyBuilder
    load_pipeline: PipelineLoader
    scheduler_factories: Callable[[], Mapping[str, SchedulerFactory]]  # name -> factory
    run: BatchRunner
    tiny_version: int = 1  # bumped when build_tiny changes, so cached tiny checkpoints rebuild
    num_frames_step: int | None = None  # video: num_frames must be step * k + 1
    lora_components: tuple[str, ...] = ()  # what a LoRA may target; empty: takes no LoRA
    lora_denoiser: str | None = None  # the component tiny test adapters are built for

    @property
    def takes_lora(self) -> bool:
        return bool(self.lora_components)


def diffusers_classes(names: Mapping[str, str]) -> dict[str, Any]:
    """``{request name: diffusers class name}`` as classes (imports diffusers)."""
    import diffusers

    return {name: getattr(diffusers, cls) for name, cls in names.items()}


def seeded_batch(jobs: list[GenerationJob]) -> tuple[list[str], list[str], list[torch.Generator]]:
    """Prompts, negative prompts ("" when unset) and one CPU generator per output
    (``seed + i``), in job order: an output depends on its request's seed, not on its batch."""
    import torch

    prompts, negatives, generators = [], [], []
    for job in jobs:
        for i in range(job.num_images):
            prompts.append(job.prompt)
            negatives.append(job.negative_prompt or "")
            generators.append(torch.Generator("cpu").manual_seed(job.seed + i))
    return prompts, negatives, generators


def per_job(jobs: list[GenerationJob], outputs: np.ndarray) -> list[list[np.ndarray]]:
    """The batch's outputs split back into each job's ``num_images``."""
    if sum(j.num_images for j in jobs) != len(outputs):
        raise ValueError(
            f"{len(outputs)} outputs for jobs of {sum(j.num_images for j in jobs)} images"
        )
    result, k = [], 0
    for job in jobs:
        result.append([outputs[k + i] for i in range(job.num_images)])
        k += job.num_images
    return result


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline float output in [0, 1] to uint8."""
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
