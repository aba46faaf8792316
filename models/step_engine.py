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

Covered: sd15, text-to-image. Other families and tasks run request-level (``engine_for`` returns
None), and so does a model whose step cache keeps per-call state in shared modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from genmedia.models.family import seeded_batch, to_uint8
from genmedia.models.params import GenerationJob

if TYPE_CHECKING:
    import torch

    from genmedia.models.runner import LoadedModel

STEP_TASKS = ("text-to-image",)  # tasks the step engine runs; the others run request-level


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

    def prepare(self, job: GenerationJob) -> MemberState: ...

    def step(self, members: list[MemberState]) -> None: ...

    def decode(self, member: MemberState) -> list[np.ndarray]: ...


class Sd15StepEngine:
    """The SD1.5 family's step engine (UNet with a timestep per sample)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipe = model.pipe

    def prepare(self, job: GenerationJob) -> MemberState:
        """Encode the prompt, set the member's own timesteps, draw its initial latents: the
        same calls, in the same order, as the pipeline's ``__call__``."""
        import torch

        params = job.params
        if params.task not in STEP_TASKS:
            raise ValueError(f"the step engine does not run {params.task!r}")
        view = self.model.call_view(params.scheduler, params.task)
        prompts, negatives, generators = seeded_batch([job])
        guidance = params.guidance_scale > 1.0 and view.unet.config.time_cond_proj_dim is None
        device = torch.device(self.model.device)
        with torch.inference_mode():
            cond, uncond = view.encode_prompt(
                prompts,
                device,
                1,
                guidance,
                negatives if any(negatives) else None,
            )
            embeds = torch.cat([uncond, cond]) if guidance else cond
            view.scheduler.set_timesteps(params.num_inference_steps, device=device)
            latents = view.prepare_latents(
                len(prompts),
                view.unet.config.in_channels,
                params.height,
                params.width,
                embeds.dtype,
                device,
                generators,
            )
        return MemberState(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(view.scheduler.timesteps),
            latents=latents,
            embeds=embeds,
            guidance=guidance,
            extra_step_kwargs=view.prepare_extra_step_kwargs(generators, 0.0),
        )

    def step(self, members: list[MemberState]) -> None:
        """One UNet forward over every member's rows (a timestep per row), then each member's
        guidance and its own scheduler's step."""
        import torch

        if not members:
            return
        if any(m.finished for m in members):
            raise ValueError("step over a member that already finished")
        samples, embeds, times = [], [], []
        for m in members:
            t = m.timesteps[m.done]
            x = torch.cat([m.latents] * 2) if m.guidance else m.latents
            x = m.view.scheduler.scale_model_input(x, t)
            samples.append(x)
            embeds.append(m.embeds)
            times.append(t.to(torch.float32).reshape(1).expand(x.shape[0]))
        with torch.inference_mode():
            out = self.pipe.unet(
                torch.cat(samples),
                torch.cat(times),
                encoder_hidden_states=torch.cat(embeds),
                return_dict=False,
            )[0]
            start = 0
            for m, x in zip(members, samples, strict=True):
                noise = out[start : start + x.shape[0]]
                start += x.shape[0]
                if m.guidance:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + m.job.params.guidance_scale * (cond - uncond)
                t = m.timesteps[m.done]
                m.latents = m.view.scheduler.step(
                    noise, t, m.latents, **m.extra_step_kwargs, return_dict=False
                )[0]
                m.done += 1

    def decode(self, member: MemberState) -> list[np.ndarray]:
        """A finished member's images, ``[H, W, 3]`` uint8 each."""
        import torch

        view = member.view
        with torch.inference_mode():
            image = view.vae.decode(
                member.latents / view.vae.config.scaling_factor,
                return_dict=False,
                generator=member.generators,
            )[0]
            images = view.image_processor.postprocess(
                image, output_type="np", do_denormalize=[True] * image.shape[0]
            )
        return list(to_uint8(np.asarray(images)))


_ENGINES: dict[str, type[Sd15StepEngine]] = {"sd15": Sd15StepEngine}


def engine_for(model: LoadedModel) -> StepEngine | None:
    """The step engine of a loaded model, or None when its family or options need the
    request-level path (no engine yet; a step cache keeping per-call state in shared modules)."""
    cls = _ENGINES.get(model.entry.family)
    if cls is None or model.step_cached:
        return None
    return cls(model)


def supports(model: LoadedModel, job: GenerationJob) -> bool:
    """Whether ``job`` can run in ``model``'s step engine."""
    return (
        model.entry.family in _ENGINES and not model.step_cached and job.params.task in STEP_TASKS
    )
