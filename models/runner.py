"""Load a catalog entry's pipeline and run one batch of compatible jobs through it.

Called by the family worker: ``load_model`` at replica start (the family's ``load_pipeline``,
then the kernel options), ``run_batch`` from a thread (never on its event loop), one batch at a
time per pipeline, which hands the batch to its family's runner (``SPEC.run`` of
``models/<family>.py``). Each output gets its own CPU ``torch.Generator`` seeded with
``seed + i``, so a request's outputs depend on its seed, not on the batch it happened to share.

``run_images`` is the runner of the image families (text-to-image, image-to-image,
inpainting): image-to-image and inpainting run diffusers' own pipelines for those tasks built
with ``from_pipe`` over the same modules, so there is no second copy of the weights and LoRA
adapters loaded into the shared modules apply to every task.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from genmedia.models.catalog import ModelEntry
from genmedia.models.family import FamilySpec, StepCallback, per_job, seeded_batch, to_uint8
from genmedia.models.lora import AdapterCache
from genmedia.models.params import GenerationJob
from genmedia.models.registry import family_module

__all__ = [
    "DTYPES",
    "LoadedModel",
    "StepCallback",
    "cap_gpu_memory",
    "latents_callback",
    "load_model",
    "pick_device",
    "run_batch",
    "run_images",
    "to_uint8",
]

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# A family's ``call_kwargs``: its ``__call__`` arguments for guidance and negative prompts.
CallKwargs = Callable[..., dict[str, Any]]

# (steps done, the call's latents as diffusers' step callback has them): for live previews.
LatentsCallback = Callable[[int, Any], None]
# Set by ``run_batch`` around one call on the calling thread; ``run_images``' step callback
# hands it the latents after ``on_step`` (families without previews never read it).
_ON_LATENTS: ContextVar[LatentsCallback | None] = ContextVar("on_latents", default=None)


def latents_callback() -> LatentsCallback | None:
    """The ``on_latents`` of the call running on this thread (for a family's own callback)."""
    return _ON_LATENTS.get()


@contextlib.contextmanager
def _latents_to(on_latents: LatentsCallback | None) -> Iterator[None]:
    token = _ON_LATENTS.set(on_latents)
    try:
        yield
    finally:
        _ON_LATENTS.reset(token)


@dataclass
class LoadedModel:
    """A pipeline in memory with what the runner needs to drive it."""

    entry: ModelEntry
    pipe: Any
    family: ModuleType  # models/<family>.py
    device: str
    load_s: float
    # seconds per phase of the load (fast_load's phases, kernels_s) and bytes read
    load_phases: dict = field(default_factory=dict)
    _scheduler_config: dict = field(default_factory=dict)
    acceleration: dict = field(default_factory=dict)  # what kernels/options are active
    adapters: AdapterCache = field(default_factory=lambda: AdapterCache(8))
    _task_pipes: dict = field(default_factory=dict)
    _schedulers: dict = field(default_factory=dict)  # name -> a fresh instance, never stepped

    @property
    def spec(self) -> FamilySpec:
        spec: FamilySpec = self.family.SPEC
        return spec

    @property
    def step_cached(self) -> bool:
        """Step caching keeps state in the shared modules: its calls must not interleave."""
        return bool(self.acceleration.get("cache"))

    def task_pipe(self, task: str) -> Any:
        """The pipeline of a task over the same modules (built once, on first use)."""
        if task == "text-to-image":
            return self.pipe
        if task not in self._task_pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForInpainting if task == "inpainting" else AutoPipelineForImage2Image
            pipe = auto.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self._task_pipes[task] = pipe
        return self._task_pipes[task]

    def call_view(self, scheduler: str, task: str = "text-to-image") -> Any:
        """A pipeline for one call: the same modules (weights are never copied) with a scheduler
        instance of its own, so calls paused at a step boundary do not disturb each other."""
        view = copy.copy(self.task_pipe(task))
        fresh = self._schedulers.get(scheduler)
        if fresh is None:  # from_config inspects signatures: ~1 ms, a copy ~0.15 ms
            factory = self.spec.scheduler_factories()[scheduler]
            fresh = self._schedulers[scheduler] = factory.from_config(self._scheduler_config)
        view.scheduler = copy.deepcopy(fresh)
        return view


def pick_device() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cap_gpu_memory(share: float, memory_gb: float | None = None) -> float | None:
    """Cap this process's CUDA memory at its GPU share: Ray's fractional GPUs are bookkeeping
    only, so replicas packed on one GPU would otherwise take each other's memory. ``share`` is
    the fraction Ray assigned (the placement planner checked the models fit in it); without one,
    ``memory_gb`` sets the cap. Returns the fraction applied; None on CPU (logged, no-op)."""
    if not torch.cuda.is_available():
        logger.info("no CUDA device: GPU memory cap (share %.3g) not applied", share)
        return None
    fraction = share if 0.0 < share < 1.0 else None
    if fraction is None and memory_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, memory_gb * 2**30 / total)
    if fraction is None:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction)
    logger.info("GPU memory capped at %.3g of the device", fraction)
    return fraction


def load_model(entry: ModelEntry, path: Path, device: str | None = None) -> LoadedModel:
    """Load an entry's pipeline through the family's loader (``fast_load.py``: parallel reads
    into modules built without initialising their weights), then apply its kernel options;
    ``load_s`` is the whole of it, ``load_phases`` its parts."""
    from genmedia.models.fast_load import recording

    fam = family_module(entry.family)
    device = device or pick_device()
    dtype = DTYPES[entry.dtype]
    if device == "cpu" and dtype is torch.float16:
        dtype = torch.float32  # fp16 conv kernels are missing or very slow on CPU
    start = time.perf_counter()
    with recording() as reports:
        pipe = fam.SPEC.load_pipeline(path, dtype=dtype, device=device)
    weights_s = time.perf_counter() - start
    t = time.perf_counter()
    record = _apply_kernels(entry, pipe, device)
    phases: dict[str, Any] = {"weights_s": weights_s, "kernels_s": time.perf_counter() - t}
    for report in reports:
        phases.update({f"weights.{k}": v for k, v in report.phases.items()})
        phases["bytes"] = phases.get("bytes", 0) + report.bytes
        if report.fallbacks:
            phases["fallbacks"] = list(report.fallbacks)
    model = LoadedModel(
        entry,
        pipe,
        fam,
        device,
        time.perf_counter() - start,
        load_phases=phases,
        _scheduler_config=dict(pipe.scheduler.config),
        acceleration=record,
        adapters=AdapterCache(entry.max_loaded_adapters, entry.max_lora_rank),
    )
    return model


def _apply_kernels(entry: ModelEntry, pipe: Any, device: str) -> dict:
    from genmedia.kernels.op_specs import DENOISERS
    from genmedia.kernels.options import KernelOptions
    from genmedia.kernels.patcher import apply_kernel_options

    if entry.family in DENOISERS or entry.acceleration != KernelOptions():
        return apply_kernel_options(pipe, entry.family, entry.acceleration, device)
    # a family without kernel patterns, run as diffusers ships it
    return {"device": device, "kernels": {}, "note": f"no kernel patterns for {entry.family}"}


@functools.cache
def _call_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__call__).parameters)


def run_batch(
    model: LoadedModel,
    jobs: list[GenerationJob],
    on_step: StepCallback | None = None,
    inputs: list[dict] | None = None,
    on_latents: LatentsCallback | None = None,
) -> list[list[np.ndarray]]:
    """One pipeline call of any task through the family's runner: images ``[H, W, 3]`` uint8,
    video frames ``[F, H, W, 3]`` uint8 or audio ``[channels, samples]`` float32, per job.
    ``on_latents`` gets the latents after each step's ``on_step`` (image families only)."""
    if not jobs:
        return []
    if any(j.batch_key != jobs[0].batch_key for j in jobs):
        raise ValueError("run_batch got incompatible jobs in one batch")
    with _latents_to(on_latents):
        return model.spec.run(model, jobs, on_step, inputs)


def _image_inputs(
    jobs: list[GenerationJob], task: str, inputs: list[dict] | None
) -> tuple[list[Any], list[Any]]:
    """Each output's input image and mask (image-to-image / inpainting), in job order."""
    images_in: list[Any] = []
    masks_in: list[Any] = []
    if task == "text-to-image":
        return images_in, masks_in
    if inputs is None or len(inputs) != len(jobs):
        raise ValueError(f"{task} needs one input per job")
    for n, job in enumerate(jobs):
        images_in += [inputs[n]["image"]] * job.num_images
        if task == "inpainting":
            masks_in += [inputs[n]["mask"]] * job.num_images
    return images_in, masks_in


def _progress_callback(task: str, steps: int, on_step: StepCallback) -> Callable[..., dict]:
    on_latents = _ON_LATENTS.get()

    def _callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        # strength < 1 runs only the last part of the schedule: count what really runs
        total = steps
        if task != "text-to-image":
            total = getattr(pipe, "_num_timesteps", None) or total
        done = min(step + 1, total)  # PNDM calls back steps + 1 times
        on_step(done, total)
        latents = callback_kwargs.get("latents")
        if on_latents is not None and latents is not None:
            on_latents(done, latents)
        return callback_kwargs

    return _callback


def run_images(
    model: LoadedModel,
    jobs: list[GenerationJob],
    on_step: StepCallback | None,
    inputs: list[dict] | None,
    call_kwargs: CallKwargs,
) -> list[list[np.ndarray]]:
    """The image families' runner: one call of the batch's task pipeline. ``inputs`` gives each
    job's input images for image-to-image / inpainting (``{"image": PIL.Image, "mask":
    PIL.Image}``); ``call_kwargs`` is the family's (guidance, negative prompts)."""
    params = jobs[0].params
    task = params.task
    images_in, masks_in = _image_inputs(jobs, task, inputs)
    prompts, negatives, generators = seeded_batch(jobs)  # negatives: all set or none (batch_key)
    pipe = model.call_view(params.scheduler, task)
    kwargs = call_kwargs(
        guidance_scale=params.guidance_scale,
        negative_prompts=negatives if any(negatives) else None,
    )
    if task != "text-to-image":
        kwargs["image"] = images_in
        kwargs["strength"] = params.strength
    if task == "inpainting":
        kwargs["mask_image"] = masks_in
    pipe_class: type = type(pipe)
    if task == "text-to-image" or "width" in _call_parameters(pipe_class):
        kwargs["width"], kwargs["height"] = params.width, params.height
    if on_step is not None:
        kwargs["callback_on_step_end"] = _progress_callback(
            task, params.num_inference_steps, on_step
        )
    try:
        with torch.inference_mode():
            out = pipe(
                prompt=prompts,
                num_inference_steps=params.num_inference_steps,
                generator=generators,
                output_type="np",
                **kwargs,
            )
    except BaseException:
        if model.step_cached:  # diffusers clears the cache only after a finished call
            from genmedia.kernels.patcher import reset_step_cache

            reset_step_cache(model.pipe)
        raise
    return per_job(jobs, to_uint8(np.asarray(out.images)))
