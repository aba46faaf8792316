"""The SDXL family's step engine (``engine: step``): text-to-image and image-to-image.

Where this sits in a request's way: as ``step_engine.py`` (the shared UNet step, the decode),
for a family worker of sdxl models. SDXL's UNet takes, besides a timestep per row, added
conditioning per row: the pooled text embedding of the second encoder (``text_embeds``) and the
size/crop ids (``time_ids``). ``prepare`` builds both per member exactly as
``StableDiffusionXLPipeline.__call__`` does for that request alone (so a member without a
negative prompt keeps SDXL's zero unconditional embeddings while a set-mate with one encodes
its own), and the shared step concatenates them row by row with everyone else's. An
image-to-image member starts at the timestep its strength leaves (as in ``step_engine.py``), and
its ids come from its encoded image's size with the pipeline's aesthetic-score defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import seeded_batch, to_uint8
from genmedia.models.params import GenerationJob
from genmedia.models.step_engine import MemberState, UNetStepEngine, initial_latents

if TYPE_CHECKING:
    import torch


class SdxlStepEngine(UNetStepEngine):
    """The SDXL family's step engine: text-to-image and image-to-image."""

    family = "sdxl"

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> MemberState:
        """Encode the prompt with both encoders, set the member's own timesteps (image-to-image:
        the tail its strength leaves), draw its latents (noise, or its image encoded and noised
        to the first of them) and build the size/crop ids: the calls of the task pipeline's
        ``__call__``, in order."""
        return self.prepare_many([job], [source])[0]

    def prepare_many(
        self, jobs: Sequence[GenerationJob], sources: Sequence[dict[str, Any] | None]
    ) -> list[MemberState]:
        """The states of members joining at one step boundary: the prompts of the members with
        a negative prompt encoded in one forward of both encoders, those of the members without
        one (or an empty one) in another, as the request-level runner passes them (SDXL's
        unconditional rows are zeros without a negative prompt), then each member's own
        sampler, latents and ids."""
        import torch

        states: list[MemberState | None] = [None] * len(jobs)
        device = torch.device(self.model.device)
        for negative in (False, True):
            group = [i for i, j in enumerate(jobs) if bool(j.negative_prompt) == negative]
            if not group:
                continue
            prompts, negatives, _ = seeded_batch([jobs[i] for i in group])
            guidance = [jobs[i].params.guidance_scale > 1.0 for i in group]
            view = self._view(jobs[group[0]])
            with torch.inference_mode():
                encoded = view.encode_prompt(
                    prompt=prompts,
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=any(guidance),
                    negative_prompt=negatives if negative else None,
                )
            start = 0
            for i, cfg in zip(group, guidance, strict=True):
                rows = slice(start, start + jobs[i].num_images)
                start += jobs[i].num_images
                parts = [None if t is None else t[rows] for t in encoded]
                states[i] = self._member(jobs[i], sources[i], parts, cfg, device)
        return [s for s in states if s is not None]

    def _member(
        self,
        job: GenerationJob,
        source: dict[str, Any] | None,
        encoded: list[Any],
        guidance: bool,
        device: torch.device,
    ) -> MemberState:
        """A member's state from its rows of the encoders' outputs (``cond``, ``uncond``,
        ``pooled``, ``uncond_pooled``)."""
        import torch

        cond, uncond, pooled, uncond_pooled = encoded
        view = self._view(job)
        _, _, generators = seeded_batch([job])
        rows = job.num_images
        with torch.inference_mode():
            timesteps, latents = initial_latents(
                view, job, source, generators, cond.dtype, device, begin_index=True
            )
            time_ids, neg_time_ids = _time_ids(view, job.params.task, latents, pooled)
            time_ids = time_ids.repeat(rows, 1)
            if guidance:  # rows: every unconditional one, then every conditional one
                embeds = torch.cat([uncond, cond])
                text_embeds = torch.cat([uncond_pooled, pooled])
                time_ids = torch.cat([neg_time_ids.repeat(rows, 1), time_ids])
            else:
                embeds, text_embeds = cond, pooled
        return MemberState(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(timesteps),
            latents=latents,
            embeds=embeds.to(device),
            guidance=guidance,
            extra_step_kwargs=view.prepare_extra_step_kwargs(generators, 0.0),
            added={"text_embeds": text_embeds.to(device), "time_ids": time_ids.to(device)},
        )

    def _images(
        self, view: Any, latents: torch.Tensor, generators: list[torch.Generator]
    ) -> np.ndarray:
        """Finished latents → ``[n, H, W, 3]`` uint8, as the pipeline decodes them (the VAE's
        latent mean and std when its config has them, float32 for a float16 VAE that needs
        it, the watermark when the pipeline has one)."""
        import torch

        vae = view.vae
        with torch.inference_mode():
            upcast = vae.dtype == torch.float16 and vae.config.force_upcast
            if upcast:
                vae.to(dtype=torch.float32)
                latents = latents.to(torch.float32)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                latents = latents * _channels(std, latents) / vae.config.scaling_factor
                latents = latents + _channels(mean, latents)
            else:
                latents = latents / vae.config.scaling_factor
            try:
                image = vae.decode(latents, return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(dtype=torch.float16)
            if getattr(view, "watermark", None) is not None:
                image = view.watermark.apply_watermark(image)
            images = view.image_processor.postprocess(image, output_type="np")
        return to_uint8(np.asarray(images))


def _channels(values: list[float], like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.tensor(values).view(1, len(values), 1, 1).to(like.device, like.dtype)


def _time_ids(
    view: Any, task: str, latents: torch.Tensor, pooled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The size/crop ids of one output and of its unconditional row (``[1, n]`` each), as the
    task pipeline builds them with its defaults: the output size as original and target size,
    no crop; image-to-image adds aesthetic scores 6.0 / 2.5 when the model asks for them."""
    scale = view.vae_scale_factor
    size = (int(latents.shape[-2]) * scale, int(latents.shape[-1]) * scale)
    if view.text_encoder_2 is None:
        projection = int(pooled.shape[-1])
    else:
        projection = int(view.text_encoder_2.config.projection_dim)
    if task == "image-to-image":
        ids, neg = view._get_add_time_ids(
            size, (0, 0), size, 6.0, 2.5, size, (0, 0), size,
            dtype=pooled.dtype, text_encoder_projection_dim=projection,
        )  # fmt: skip
        return ids, neg
    ids = view._get_add_time_ids(
        size, (0, 0), size, dtype=pooled.dtype, text_encoder_projection_dim=projection
    )
    return ids, ids
