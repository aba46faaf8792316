"""The Wan family's step engine (``engine: step``): text-to-video.

Where this sits in a request's way: as ``step_engine.py``, for a family worker of wan models.
At every engine step ONE transformer forward runs over every member's video latents
(``[rows, C, frames, h, w]``; members of a set share the bucket: width, height and
``num_frames``) with a timestep per row. A member with classifier-free guidance
(``guidance_scale > 1``, Wan's rule) adds its rows twice, conditional then unconditional (its
negative prompt, or the empty prompt as Wan encodes a missing one), and applies its own scale;
each member then advances its own flow-matching scheduler (UniPC or Euler, its state its own).
``decode`` returns what ``wan.run_text_to_video`` returns per video: uint8 frames
``[F, H, W, 3]``, so the worker stores them as it stores a request-level call's (MP4).

Only Wan 2.1-style checkpoints run here: one transformer, a timestep per sample. Wan 2.2's
second, low-noise transformer (``boundary_ratio``) and per-token timesteps
(``expand_timesteps``) run request-level (``step_engine.engine_for`` returns None).

Reproducibility (``tests/unit/models/test_step_wan.py``, x86-64 CPU): a member alone is
bit-identical to the request-level runner when it runs without guidance; with guidance its
conditional and unconditional rows share one forward where the pipeline runs two, and inside
sets other batch sizes run, so outputs may differ by one 8-bit level on a few values (the
bound the engine promises: one level on at most 1 % of the values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import seeded_batch, to_uint8
from genmedia.models.params import GenerationJob
from genmedia.models.step_engine import STEP_TASKS, MemberState, advance

if TYPE_CHECKING:
    from genmedia.models.runner import LoadedModel


def plain(pipe: Any) -> bool:
    """Whether a Wan pipeline runs step-level: one transformer, a timestep per sample."""
    config = getattr(pipe, "config", {})
    return (
        getattr(pipe, "transformer_2", None) is None
        and config.get("boundary_ratio") is None
        and not config.get("expand_timesteps", False)
    )


class WanStepEngine:
    """The Wan family's step engine: text-to-video."""

    family = "wan"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipe = model.pipe

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> MemberState:
        """Check the clip (as ``run_text_to_video``), encode the prompt and its negative, set
        the member's own timesteps and draw its latents: the calls of ``WanPipeline.__call__``,
        in order."""
        import torch

        from genmedia.models.wan import check_num_frames, sequence_length

        params = job.params
        if params.task not in STEP_TASKS[self.family]:
            raise ValueError(f"the wan step engine does not run {params.task!r}")
        if params.num_frames is None:
            raise ValueError(f"text-to-video job {job.request_id!r} has no num_frames")
        check_num_frames(params.num_frames)
        view = self.model.call_view(params.scheduler)
        prompts, negatives, generators = seeded_batch([job])
        guidance = params.guidance_scale > 1.0
        device = torch.device(self.model.device)
        dtype = view.transformer.dtype
        with torch.inference_mode():
            cond, uncond = view.encode_prompt(
                prompt=prompts,
                negative_prompt=negatives if job.negative_prompt is not None else None,
                do_classifier_free_guidance=guidance,
                num_videos_per_prompt=1,
                max_sequence_length=sequence_length(view),
                device=device,
            )
            embeds = torch.cat([cond, uncond]) if guidance else cond
            view.scheduler.set_timesteps(params.num_inference_steps, device=device)
            latents = view.prepare_latents(
                len(prompts),
                view.transformer.config.in_channels,
                params.height,
                params.width,
                params.num_frames,
                torch.float32,
                device,
                generators,
            )
            view.scheduler.set_begin_index(0)
        return MemberState(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(view.scheduler.timesteps),
            latents=latents,
            embeds=embeds.to(dtype),
            guidance=guidance,
        )

    def step(self, members: list[MemberState]) -> None:
        """One transformer forward over every member's rows (a timestep per row), then each
        member's guidance and its own scheduler's step."""
        import torch

        if not members:
            return
        if any(m.finished for m in members):
            raise ValueError("step over a member that already finished")
        dtype = self.pipe.transformer.dtype
        samples, times = [], []
        for m in members:
            x = m.latents.to(dtype)
            x = torch.cat([x, x]) if m.guidance else x
            samples.append(x)
            times.append(m.timesteps[m.done].expand(x.shape[0]))
        with torch.inference_mode():
            out = self.pipe.transformer(
                hidden_states=torch.cat(samples),
                timestep=torch.cat(times),
                encoder_hidden_states=torch.cat([m.embeds for m in members]),
                attention_kwargs=None,
                return_dict=False,
            )[0]
            advance(members, samples, out, cond_first=True)

    def decode(self, member: MemberState) -> list[np.ndarray]:
        """A finished member's videos, uint8 frames ``[F, H, W, 3]`` each: the latents
        un-normalised with the VAE's mean and std, decoded, post-processed as the pipeline
        does."""
        import torch

        view = member.view
        vae = view.vae
        with torch.inference_mode():
            latents = member.latents.to(next(vae.parameters()).device, dtype=vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape)
            std = 1.0 / torch.tensor(vae.config.latents_std).view(shape)
            mean = mean.to(latents.device, latents.dtype)
            std = std.to(latents.device, latents.dtype)
            latents = latents / std + mean
            video = vae.decode(latents, return_dict=False)[0]
            frames = view.video_processor.postprocess_video(video, output_type="np")
        return list(to_uint8(np.asarray(frames)))
