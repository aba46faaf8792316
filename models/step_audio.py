"""The Stable Audio family's step engine (``engine: step``): text-to-audio.

Where this sits in a request's way: as ``step_engine.py``, for a family worker of stable-audio
models. Its sampler allows step-level batching: the DiT (``StableAudioDiTModel``) projects its
timestep with a Gaussian Fourier projection over the batch dimension, so a timestep per row
works as one per batch does; and every sampler state lives in the scheduler instance
(``CosineDPMSolverMultistepScheduler``: step index, past model outputs, and the SDE's Brownian
tree, seeded from the member's own generators, one tree per waveform), so each member keeps its
own. At every engine step ONE DiT forward runs over every member's rows (``[rows, C, L]``: the
latent length is the model's ``sample_size`` whatever the duration, and the set shares the
duration bucket) with a timestep per row, each member's text+duration embeddings (cross
attention) and duration embeddings (global), one rotary table for all; a member with
classifier-free guidance adds its rows twice, unconditional then conditional (all-zero
embeddings without a negative prompt, as the pipeline), and applies its own scale.
``decode`` returns what ``stable_audio.run_text_to_audio`` returns per waveform: float32
``[channels, samples]`` in [-1, 1], cut to the member's duration; the worker stores it at
``stable_audio.sample_rate`` as for a request-level call.

Reproducibility (``tests/unit/models/test_step_audio.py``, x86-64 CPU): the waveforms are
compared as 8-bit levels of their [-1, 1] range (the bound the engine promises: one level on at
most 1 % of the values) and by absolute difference. Not bit-identical, even alone: the pipeline
broadcasts one timestep over its batch where the engine passes one per row, so the timestep
projection rounds differently; measured at most ~5e-7 apart alone and inside sets, one level on
the rare sample that sits on a level boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import seeded_batch
from genmedia.models.params import GenerationJob
from genmedia.models.step_engine import STEP_TASKS, MemberState, advance

if TYPE_CHECKING:
    from genmedia.models.runner import LoadedModel


@dataclass
class AudioMember(MemberState):
    """A Stable Audio member: besides the shared state, its rotary table and the samples of
    the decoded waveform its duration keeps."""

    rotary: Any = None  # (cos, sin), one table for every row
    span: tuple[int, int] = (0, 0)  # waveform samples [start, end)


class AudioStepEngine:
    """The Stable Audio family's step engine: text-to-audio."""

    family = "stable-audio"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipe = model.pipe

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> AudioMember:
        """Check the duration (as ``run_text_to_audio``), encode the prompt, its negative and
        the duration, set the member's own timesteps and draw its latents: the calls of
        ``StableAudioPipeline.__call__``, in order."""
        import torch
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        from genmedia.models.stable_audio import check_duration

        params = job.params
        if params.task not in STEP_TASKS[self.family]:
            raise ValueError(f"the stable-audio step engine does not run {params.task!r}")
        if params.duration_s is None:
            raise ValueError(f"text-to-audio job {job.request_id!r} has no duration_s")
        view = self.model.call_view(params.scheduler)
        duration = check_duration(view, params.duration_s)
        prompts, negatives, generators = seeded_batch([job])
        rows = len(prompts)
        guidance = params.guidance_scale > 1.0
        negative = negatives if job.negative_prompt is not None else None
        device = torch.device(self.model.device)
        rate = view.vae.config.sampling_rate
        with torch.inference_mode():
            embeds = view.encode_prompt(prompts, device, guidance, negative)
            start, end = view.encode_duration(
                0.0, duration, device, guidance and negative is not None, rows
            )
            text = torch.cat([embeds, start, end], dim=1)
            audio = torch.cat([start, end], dim=2)
            if guidance and negative is None:  # the unconditional rows: zeros
                text = torch.cat([torch.zeros_like(text), text])
                audio = torch.cat([audio, audio])
            view.scheduler.set_timesteps(params.num_inference_steps, device=device)
            latents = view.prepare_latents(
                rows, view.transformer.config.in_channels, int(view.transformer.config.sample_size),
                text.dtype, device, generators, None, None, 1,
                audio_channels=view.vae.config.audio_channels,
            )  # fmt: skip
            rotary = get_1d_rotary_pos_embed(
                view.rotary_embed_dim,
                latents.shape[2] + audio.shape[1],
                use_real=True,
                repeat_interleave_real=False,
            )
        return AudioMember(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(view.scheduler.timesteps),
            latents=latents,
            embeds=text,
            guidance=guidance,
            extra_step_kwargs=view.prepare_extra_step_kwargs(generators, 0.0),
            added={"global_hidden_states": audio},
            rotary=rotary,
            span=(0, int(duration * rate)),
        )

    def step(self, members: list[MemberState]) -> None:
        """One DiT forward over every member's rows (a timestep per row), then each member's
        guidance and its own sampler's step."""
        import torch

        if not members:
            return
        audio = [_audio_member(m) for m in members]
        if any(m.finished for m in audio):
            raise ValueError("step over a member that already finished")
        rotary = audio[0].rotary
        if any(m.rotary[0].shape != rotary[0].shape for m in audio):
            raise ValueError("members of one stable-audio step need the same latent length")
        samples, times = [], []
        for m in audio:
            t = m.timesteps[m.done]
            x = torch.cat([m.latents] * 2) if m.guidance else m.latents
            samples.append(m.view.scheduler.scale_model_input(x, t))
            times.append(t.reshape(1).expand(x.shape[0]))
        with torch.inference_mode():
            out = self.pipe.transformer(
                torch.cat(samples),
                torch.cat(times),
                encoder_hidden_states=torch.cat([m.embeds for m in audio]),
                global_hidden_states=torch.cat([m.added["global_hidden_states"] for m in audio]),
                rotary_embedding=rotary,
                return_dict=False,
            )[0]
            advance(audio, samples, out)

    def decode(self, member: MemberState) -> list[np.ndarray]:
        """A finished member's waveforms, float32 ``[channels, samples]`` in [-1, 1], cut to
        its duration."""
        import torch

        m = _audio_member(member)
        with torch.inference_mode():
            audio = m.view.vae.decode(m.latents).sample
        audio = audio[:, :, m.span[0] : m.span[1]].cpu().float().numpy()
        return list(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0))


def _audio_member(member: MemberState) -> AudioMember:
    if not isinstance(member, AudioMember):
        raise TypeError(f"the stable-audio step engine got a {type(member).__name__}")
    return member
