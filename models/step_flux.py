"""The Flux family's step engine (``engine: step``): text-to-image and image-to-image.

Where this sits in a request's way: as ``step_engine.py``, for a family worker of flux models.
At every engine step ONE transformer forward runs over every member's packed latents
(``[rows, seq, C]``; members of a set share the resolution bucket, so ``seq`` matches) with a
timestep per row and, when the transformer has ``guidance_embeds``, the distilled guidance per
row. A member with a negative prompt runs true classifier-free guidance (``flux.call_kwargs``:
``DEFAULT_TRUE_CFG_SCALE``) as two rows per output, conditional then negative, in the same
forward; each member then advances its own flow-matching Euler scheduler, whose sigmas and
``mu`` are set as ``FluxPipeline.__call__`` sets them for its size. The text ids (all zero, one
per T5 token) and the latent image ids (one per packed patch) are the same for every member of
a set and go into the forward once.

Reproducibility (``tests/unit/models/test_step_flux.py``, x86-64 CPU): a member without a
negative prompt alone is bit-identical to the request-level runner; a member with one runs its
conditional and negative rows in one forward where the pipeline runs two, and inside sets other
batch sizes run, so outputs may differ by one 8-bit level on a few values (the bound the engine
promises: one level on at most 1 % of the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from genmedia.models.family import seeded_batch, to_uint8
from genmedia.models.params import GenerationJob
from genmedia.models.step_engine import STEP_TASKS, MemberState, advance

if TYPE_CHECKING:
    import torch

    from genmedia.models.runner import LoadedModel


@dataclass
class FluxMember(MemberState):
    """A Flux member: besides the shared state, the ids its forward needs and its true-CFG
    scale (used when ``guidance`` is on: a negative prompt was given)."""

    txt_ids: Any = None  # [L, 3]
    img_ids: Any = None  # [seq, 3]
    cfg_scale: float = 1.0
    size: tuple[int, int] = field(default=(0, 0))  # (height, width) of its images


class FluxStepEngine:
    """The Flux family's step engine: text-to-image and image-to-image."""

    family = "flux"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipe = model.pipe

    def prepare(self, job: GenerationJob, source: dict[str, Any] | None = None) -> FluxMember:
        """Encode the prompt (and the negative one for true CFG), draw the member's packed
        latents (noise, or its image encoded and noised to the first timestep its strength
        leaves) and set its own sigmas: the calls of the task pipeline's ``__call__``."""
        import torch

        from genmedia.models.flux import DEFAULT_TRUE_CFG_SCALE, MAX_SEQUENCE_LENGTH

        params = job.params
        if params.task not in STEP_TASKS[self.family]:
            raise ValueError(f"the flux step engine does not run {params.task!r}")
        view = self.model.call_view(params.scheduler, params.task)
        prompts, negatives, generators = seeded_batch([job])
        rows = len(prompts)
        true_cfg = any(negatives)  # as runner.run_images: an empty negative is no negative
        device = torch.device(self.model.device)
        encode = {"device": device, "num_images_per_prompt": 1}
        with torch.inference_mode():
            cond, pooled, txt_ids = view.encode_prompt(
                prompt=prompts, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH, **encode
            )
            embeds = cond
            if true_cfg:
                neg, neg_pooled, _ = view.encode_prompt(
                    prompt=negatives,
                    prompt_2=None,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                    **encode,
                )
                embeds, pooled = torch.cat([cond, neg]), torch.cat([pooled, neg_pooled])
            timesteps, latents, img_ids = _schedule_and_latents(
                view, job, source, generators, cond.dtype, device
            )
            added = {"pooled_projections": pooled}
            if view.transformer.config.guidance_embeds:
                g = torch.full([1], params.guidance_scale, device=device, dtype=torch.float32)
                added["guidance"] = g.expand(rows * (2 if true_cfg else 1))
        return FluxMember(
            job=job,
            view=view,
            generators=generators,
            timesteps=list(timesteps),
            latents=latents,
            embeds=embeds,
            guidance=true_cfg,
            added=added,
            txt_ids=txt_ids,
            img_ids=img_ids,
            cfg_scale=DEFAULT_TRUE_CFG_SCALE,
            size=(params.height, params.width),
        )

    def step(self, members: list[MemberState]) -> None:
        """One transformer forward over every member's rows (a timestep and a guidance value
        per row), then each member's true CFG and its own scheduler's step."""
        import torch

        if not members:
            return
        flux = [_flux_member(m) for m in members]
        if any(m.finished for m in flux):
            raise ValueError("step over a member that already finished")
        first = flux[0]
        if any(
            m.img_ids.shape != first.img_ids.shape or m.txt_ids.shape != first.txt_ids.shape
            for m in flux
        ):
            raise ValueError("members of one flux step need the same size and prompt length")
        samples, times = [], []
        for m in flux:
            t = m.timesteps[m.done]
            x = torch.cat([m.latents] * 2) if m.guidance else m.latents
            samples.append(x)
            times.append(t.expand(x.shape[0]).to(x.dtype) / 1000)
        added = {k: torch.cat([m.added[k] for m in flux]) for k in first.added}
        with torch.inference_mode():
            out = self.pipe.transformer(
                hidden_states=torch.cat(samples),
                timestep=torch.cat(times),
                guidance=added.get("guidance"),
                pooled_projections=added["pooled_projections"],
                encoder_hidden_states=torch.cat([m.embeds for m in flux]),
                txt_ids=first.txt_ids,
                img_ids=first.img_ids,
                joint_attention_kwargs={},
                return_dict=False,
            )[0]
            advance(flux, samples, out, cond_first=True, scale=_cfg_scale)

    def decode(self, member: MemberState) -> list[np.ndarray]:
        """A finished member's images ``[H, W, 3]`` uint8: unpacked, unscaled and shifted, then
        the VAE, as the pipeline decodes them."""
        import torch

        m = _flux_member(member)
        view = m.view
        height, width = m.size
        with torch.inference_mode():
            latents = view._unpack_latents(m.latents, height, width, view.vae_scale_factor)
            latents = (latents / view.vae.config.scaling_factor) + view.vae.config.shift_factor
            image = view.vae.decode(latents, return_dict=False)[0]
            images = view.image_processor.postprocess(image, output_type="np")
        return list(to_uint8(np.asarray(images)))


def _flux_member(member: MemberState) -> FluxMember:
    if not isinstance(member, FluxMember):
        raise TypeError(f"the flux step engine got a {type(member).__name__}, not a FluxMember")
    return member


def _schedule_and_latents(
    view: Any,
    job: GenerationJob,
    source: dict[str, Any] | None,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A member's schedule (sigmas shifted by the ``mu`` of its image size; image-to-image:
    the tail its strength leaves), its packed latents and its latent image ids."""
    import torch
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    params = job.params
    steps, rows = params.num_inference_steps, job.num_images
    config = view.scheduler.config
    sigmas: Any = np.linspace(1.0, 1 / steps, steps)
    if getattr(config, "use_flow_sigmas", False):
        sigmas = None
    scale = view.vae_scale_factor
    seq_len = (int(params.height) // scale // 2) * (int(params.width) // scale // 2)
    mu = calculate_shift(
        seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    channels = view.transformer.config.in_channels // 4
    if params.task == "image-to-image":
        if source is None or source.get("image") is None:
            raise ValueError(f"image-to-image job {job.request_id!r} has no input image")
        if params.strength is None:
            raise ValueError(f"image-to-image job {job.request_id!r} has no strength")
        image = view.image_processor.preprocess(
            [source["image"]] * rows, height=params.height, width=params.width
        ).to(dtype=torch.float32)
        retrieve_timesteps(view.scheduler, steps, device, sigmas=sigmas, mu=mu)
        timesteps, left = view.get_timesteps(steps, params.strength, device)
        if left < 1:
            raise ValueError(f"strength {params.strength} leaves no step of the schedule")
        latents, ids = view.prepare_latents(
            image, timesteps[:1].repeat(rows), rows, channels, params.height, params.width,
            dtype, device, generators,
        )  # fmt: skip
        return timesteps, latents, ids
    latents, ids = view.prepare_latents(
        rows, channels, params.height, params.width, dtype, device, generators
    )
    timesteps, _ = retrieve_timesteps(view.scheduler, steps, device, sigmas=sigmas, mu=mu)
    view.scheduler.set_begin_index(0)
    return timesteps, latents, ids


def _cfg_scale(member: MemberState) -> float:
    """A Flux member's true-CFG scale (its request's guidance is the distilled embedding)."""
    assert isinstance(member, FluxMember)
    return member.cfg_scale
