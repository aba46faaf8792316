"""Step-level execution of a family's pipeline: many requests, one denoiser forward per step.

Where this sits in a request's way: a family worker running ``engine: step`` keeps a running
set of members (``deployments/worker/engine_policy.py`` decides who joins and leaves); for each
member this module ``prepare``s its state (prompt embeddings, its own scheduler with its own
timesteps, latents from its own generators), runs ``step`` over the whole set at every engine
step (ONE denoiser forward over every member's rows, a timestep per row, then each member's own
sampler advances with its own guidance scale), and ``decode``s a finished member while the others
go on. Outputs match the request-level runner (``runner.run_images``): the same generators
(``seed + i``), the same scheduler calls, the same embeddings; the only difference is which other
rows share the forward, which on CPU changes a float by rounding at most (tested:
``tests/unit/models/test_step_engine.py``).

Covered: sd15 text-to-image and image-to-image (a member's schedule starts at the timestep its
strength gives, so members sit at different timesteps of different schedules in one forward),
sdxl text-to-image and image-to-image (``step_sdxl.py``: pooled text embeddings and size/crop
ids per row as added conditioning), flux text-to-image and image-to-image (``step_flux.py``:
packed latents, a timestep and a distilled guidance value per row, true CFG rows for a member
with a negative prompt, each member's own flow-matching sigmas), wan text-to-video
(``step_wan.py``: a timestep per row, conditional and unconditional rows per member, each its
own UniPC / Euler state; Wan 2.1-style checkpoints only) and stable-audio text-to-audio
(``step_audio.py``: its DiT takes a timestep per row, and the cosine DPM-Solver++ SDE keeps
all of its state, the Brownian noise included, in the member's own scheduler, seeded from its
own generators). Per family, a member alone matches the request-level runner bit for bit
where its rows are the runner's rows (sd15, sdxl; flux without a negative prompt; wan without
guidance; never stable-audio, whose pipeline broadcasts one timestep over its batch where the
engine passes one per row: ~5e-7 apart), otherwise and inside sets within one 8-bit level on at
most 1 % of the values (each module's docstring and test say which). Other families and
tasks run request-level (``engine_for`` returns None), and so does a model whose step cache
keeps per-call state in shared modules, whose UNet embeds the guidance scale (LCM-style
``time_cond_proj_dim``), or a Wan 2.2-style pipeline (a second transformer, per-token
timesteps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from genmedia.models.family import per_job, seeded_batch, to_uint8
from genmedia.models.params import GenerationJob

if TYPE_CHECKING:
    import torch

    from genmedia.models.runner import LoadedModel

STEP_TASKS: dict[str, tuple[str, ...]] = {  # per family, tasks the step engine runs
    "sd15": ("text-to-image", "image-to-image"),
    "sdxl": ("text-to-image", "image-to-image"),
    "flux": ("text-to-image", "image-to-image"),
    "wan": ("text-to-video",),
    "stable-audio": ("text-to-audio",),
}


@dataclass
class MemberState:
    """One job in the running set: everything its denoising loop keeps between steps."""

    job: GenerationJob
    view: Any  # the pipeline with a scheduler instance of its own (``LoadedModel.call_view``)
    generators: list[torch.Generator]  # one per output, ``seed + i``
    timesteps: list[torch.Tensor]  # its own schedule
    latents: torch.Tensor  # [rows, C, h, w]
    embeds: torch.Tensor  # [2 * rows, L, D] (uncond then cond) with guidance, else [rows, L, D]
    guidance: bool  # classifier-free guidance on
    extra_step_kwargs: dict[str, Any] = field(default_factory=dict)  # eta, generator
    # added conditioning per row, rows as in ``embeds`` (SDXL: text_embeds, time_ids)
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    done: int = 0  # steps run

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    @property
    def total(self) -> int:
        """Denoiser calls of its schedule (PNDM runs one more than ``num_inference_steps``)."""
        return len(self.timesteps)

    @property
    def finished(self) -> bool:
        return self.done >= self.total


class StepEngine(Protocol):
    """What a family implements to run at step granularity."""

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> MemberState:
        """A member's state; ``source`` holds its input image (``{"image": PIL.Image}``) for
        image-to-image."""
        ...

    def step(self, members: list[MemberState]) -> None: ...

    def decode(self, member: MemberState) -> list[np.ndarray]: ...


class UNetStepEngine:
    """What the UNet families share: one UNet forward per engine step over every member's rows
    (a timestep per row, each member's added conditioning), each member's own guidance and
    sampler, and the decode. A family adds ``prepare``."""

    family = ""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipe = model.pipe

    def _view(self, job: GenerationJob) -> Any:
        task = job.params.task
        if task not in STEP_TASKS.get(self.family, ()):
            raise ValueError(f"the {self.family or 'base'} step engine does not run {task!r}")
        return self.model.call_view(job.params.scheduler, task)

    def step(self, members: list[MemberState]) -> None:
        """One UNet forward over every member's rows (a timestep per row), then each member's
        guidance and its own scheduler's step."""
        import torch

        if not members:
            return
        if any(m.finished for m in members):
            raise ValueError("step over a member that already finished")
        samples, embeds, times = [], [], []
        added: dict[str, list[torch.Tensor]] = {k: [] for k in members[0].added}
        for m in members:
            t = m.timesteps[m.done]
            x = torch.cat([m.latents] * 2) if m.guidance else m.latents
            x = m.view.scheduler.scale_model_input(x, t)
            samples.append(x)
            embeds.append(m.embeds)
            times.append(t.to(torch.float32).reshape(1).expand(x.shape[0]))
            if m.added.keys() != added.keys():
                raise ValueError("members of one step need the same added conditioning")
            for k, v in m.added.items():
                added[k].append(v)
        kwargs = {"added_cond_kwargs": {k: torch.cat(v) for k, v in added.items()}} if added else {}
        with torch.inference_mode():
            out = self.pipe.unet(
                torch.cat(samples),
                torch.cat(times),
                encoder_hidden_states=torch.cat(embeds),
                return_dict=False,
                **kwargs,
            )[0]
            advance(members, samples, out)

    def decode(self, member: MemberState) -> list[np.ndarray]:
        """A finished member's images, ``[H, W, 3]`` uint8 each."""
        return self.decode_many([member])[0]

    def decode_many(self, members: Sequence[MemberState]) -> list[list[np.ndarray]]:
        """The images of members that finished on the same step, one VAE forward over all
        their rows (per member, in order)."""
        import torch

        if not members:
            return []
        latents = torch.cat([m.latents for m in members])
        generators = [g for m in members for g in m.generators]
        images = self._images(members[0].view, latents, generators)
        return per_job([m.job for m in members], images)

    def _images(
        self, view: Any, latents: torch.Tensor, generators: list[torch.Generator]
    ) -> np.ndarray:
        """Finished latents → ``[n, H, W, 3]`` uint8, as the SD1.5 pipelines decode them."""
        import torch

        with torch.inference_mode():
            image = view.vae.decode(
                latents / view.vae.config.scaling_factor, return_dict=False, generator=generators
            )[0]
            images = view.image_processor.postprocess(
                image, output_type="np", do_denormalize=[True] * image.shape[0]
            )
        return to_uint8(np.asarray(images))


def decode_members(engine: StepEngine, members: Sequence[MemberState]) -> list[list[np.ndarray]]:
    """The outputs of members that finished on the same step: in one decode where the family's
    engine batches it (``decode_many``: the UNet families), else member by member."""
    many = getattr(engine, "decode_many", None)
    if many is not None:
        out: list[list[np.ndarray]] = many(members)
        return out
    return [engine.decode(m) for m in members]


class Sd15StepEngine(UNetStepEngine):
    """The SD1.5 family's step engine: text-to-image and image-to-image."""

    family = "sd15"

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> MemberState:
        """Encode the prompt, set the member's own timesteps, draw its initial latents (noise,
        or its input image encoded and noised to the first timestep its strength leaves): the
        same calls, in the same order, as the task pipeline's ``__call__``."""
        return self.prepare_many([job], [source])[0]

    def prepare_many(
        self, jobs: Sequence[GenerationJob], sources: Sequence[dict[str, Any] | None]
    ) -> list[MemberState]:
        """The states of members joining at one step boundary: their prompts encoded in one
        text-encoder forward (a missing negative prompt encodes as "", as the pipeline does),
        then each member's own sampler and latents."""
        import torch

        if not jobs:
            return []
        views = [self._view(job) for job in jobs]
        prompts, negatives, _ = seeded_batch(list(jobs))
        guidance = [job.params.guidance_scale > 1.0 for job in jobs]
        device = torch.device(self.model.device)
        states, start = [], 0
        with torch.inference_mode():
            cond, uncond = views[0].encode_prompt(
                prompts, device, 1, any(guidance), negatives if any(negatives) else None
            )
            for job, source, view, cfg in zip(jobs, sources, views, guidance, strict=True):
                rows = slice(start, start + job.num_images)
                start += job.num_images
                embeds = torch.cat([uncond[rows], cond[rows]]) if cfg else cond[rows]
                states.append(self._member(job, source, view, embeds, cfg, device))
        return states

    def _member(
        self,
        job: GenerationJob,
        source: dict[str, Any] | None,
        view: Any,
        embeds: torch.Tensor,
        guidance: bool,
        device: torch.device,
    ) -> MemberState:
        """A member's state from its embeddings: its own generators, timesteps, latents."""
        _, _, generators = seeded_batch([job])
        timesteps, latents = initial_latents(
            view, job, source, generators, embeds.dtype, device, begin_index=False
        )
        return MemberState(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(timesteps),
            latents=latents,
            embeds=embeds,
            guidance=guidance,
            extra_step_kwargs=view.prepare_extra_step_kwargs(generators, 0.0),
        )


def prepare_members(
    engine: StepEngine,
    jobs: Sequence[GenerationJob],
    sources: Sequence[dict[str, Any] | None],
) -> list[MemberState]:
    """The states of the members joining at one step boundary, in order: in one batch where
    the family's engine batches it (``prepare_many``: SD1.5, SDXL), else member by member."""
    many = getattr(engine, "prepare_many", None)
    if many is not None:
        out: list[MemberState] = many(jobs, sources)
        return out
    return [engine.prepare(job, source) for job, source in zip(jobs, sources, strict=True)]


def advance(
    members: Sequence[MemberState],
    samples: Sequence[torch.Tensor],
    out: torch.Tensor,
    *,
    cond_first: bool = False,
    scale: Callable[[MemberState], float] | None = None,
) -> None:
    """After one forward over every member's rows (``samples``, in order): each member's slice
    of ``out``, its own guidance (``uncond + scale * (cond - uncond)``; ``cond_first`` when its
    conditional rows come first; ``scale`` when not the request's guidance scale) and one step
    of its own sampler."""
    start = 0
    for m, x in zip(members, samples, strict=True):
        noise = out[start : start + x.shape[0]]
        start += x.shape[0]
        if m.guidance:
            first, second = noise.chunk(2)
            cond, uncond = (first, second) if cond_first else (second, first)
            s = m.job.params.guidance_scale if scale is None else scale(m)
            noise = uncond + s * (cond - uncond)
        t = m.timesteps[m.done]
        m.latents = m.view.scheduler.step(
            noise, t, m.latents, **m.extra_step_kwargs, return_dict=False
        )[0]
        m.done += 1


def initial_latents(
    view: Any,
    job: GenerationJob,
    source: dict[str, Any] | None,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
    *,
    begin_index: bool,
) -> tuple[Any, torch.Tensor]:
    """A member's schedule and initial latents: the tail its strength leaves and its image
    encoded and noised (image-to-image), or the whole schedule and fresh noise, one row per
    output (``begin_index``: text-to-image also sets the scheduler's begin index to 0, as the
    SDXL pipeline does)."""
    params = job.params
    view.scheduler.set_timesteps(params.num_inference_steps, device=device)
    if params.task == "image-to-image":
        return img2img_latents(view, job, source, generators, dtype, device)
    latents = view.prepare_latents(
        job.num_images,
        view.unet.config.in_channels,
        params.height,
        params.width,
        dtype,
        device,
        generators,
    )
    if begin_index and hasattr(view.scheduler, "set_begin_index"):
        view.scheduler.set_begin_index(0)
    return view.scheduler.timesteps, latents


def img2img_latents(
    view: Any,
    job: GenerationJob,
    source: dict[str, Any] | None,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image-to-image member's schedule (the tail its strength leaves) and initial latents
    (its image encoded with each output's generator, noised to the schedule's first timestep),
    as ``StableDiffusionImg2ImgPipeline.__call__`` makes them."""
    if source is None or source.get("image") is None:
        raise ValueError(f"image-to-image job {job.request_id!r} has no input image")
    if job.params.strength is None:
        raise ValueError(f"image-to-image job {job.request_id!r} has no strength")
    rows = job.num_images
    image = view.image_processor.preprocess([source["image"]] * rows)
    timesteps, _ = view.get_timesteps(job.params.num_inference_steps, job.params.strength, device)
    if len(timesteps) == 0:
        raise ValueError(f"strength {job.params.strength} leaves no step of the schedule")
    latents = view.prepare_latents(
        image, timesteps[:1].repeat(rows), rows, 1, dtype, device, generators
    )
    return timesteps, latents


_ENGINES: dict[str, str] = {  # family -> "module:class" of its step engine
    "sd15": "genmedia.models.step_engine:Sd15StepEngine",
    "sdxl": "genmedia.models.step_sdxl:SdxlStepEngine",
    "flux": "genmedia.models.step_flux:FluxStepEngine",
    "wan": "genmedia.models.step_wan:WanStepEngine",
    "stable-audio": "genmedia.models.step_audio:AudioStepEngine",
}


def _unet_plain(model: LoadedModel) -> bool:
    """Whether the model's denoiser runs step-level: no step cache keeping per-call state in
    shared modules, no guidance embedding (``time_cond_proj_dim``) the engine does not pass."""
    unet = getattr(model.pipe, "unet", None)
    cond_dim = getattr(getattr(unet, "config", None), "time_cond_proj_dim", None)
    return not model.step_cached and cond_dim is None


def _plain(model: LoadedModel) -> bool:
    """Whether the model runs step-level, per family: the UNet families as ``_unet_plain``;
    the transformer families without a step cache, and Wan with one transformer and a
    timestep per sample (``step_wan.plain``)."""
    family = model.entry.family
    if family in ("sd15", "sdxl"):
        return _unet_plain(model)
    if model.step_cached:
        return False
    if family == "wan":
        from genmedia.models.step_wan import plain

        return plain(model.pipe)
    return True


def engine_for(model: LoadedModel) -> StepEngine | None:
    """The step engine of a loaded model, or None when its family or options need the
    request-level path."""
    import importlib

    path = _ENGINES.get(model.entry.family)
    if path is None or not _plain(model):
        return None
    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    engine: StepEngine = cls(model)
    return engine


def supports(model: LoadedModel, job: GenerationJob) -> bool:
    """Whether ``job`` can run in ``model``'s step engine."""
    family = model.entry.family
    return family in _ENGINES and job.params.task in STEP_TASKS.get(family, ()) and _plain(model)
