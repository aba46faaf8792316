"""Calibration, part 1: the bare pipelines on this machine. The real tiny pipelines of
``genmedia.models`` (default catalog), one torch thread as a worker replica gets, timed per phase
through the step callback at a few batch sizes, resolutions and guidance settings; least squares
fit ``step = f + q * b * (mp/ref)`` (with and without classifier-free guidance), the VAE/output
phase per image, the call overhead and the load time; PNG encoding + storage per image.

Run by ``calibrate.py``; no Ray.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from genmedia.models.catalog import ModelEntry

console = Console()
SIZES = (64, 128)
BATCHES = (1, 2, 4, 8)
STEPS = 4
UNET_FAMILIES = ("sd15", "sdxl")  # classifier-free guidance when guidance_scale > 1


def _jobs(entry, batch: int, size: int, steps: int, guidance: float | None, seed: int):
    from genmedia.models.params import GenerateRequest, resolve_request

    out = []
    for i in range(batch):
        job, errors = resolve_request(
            entry,
            GenerateRequest(
                prompt="a red fox in the snow",
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=seed + i,
            ),
            request_id=f"cal-{seed}-{i}",
        )
        assert not errors, errors
        out.append(job)
    return out


def time_call(model, jobs) -> dict:
    """One pipeline call split into phases by the step callback."""
    from genmedia.models.runner import run_batch

    marks: list[float] = []
    t0 = time.perf_counter()
    run_batch(model, jobs, on_step=lambda s, n: marks.append(time.perf_counter()))
    t1 = time.perf_counter()
    steps = [b - a for a, b in itertools.pairwise(marks)]
    step = statistics.median(steps) if steps else (marks[0] - t0)
    return {
        "pre_s": marks[0] - t0 - step,  # before the first step: text encoders, set-up
        "step_s": step,
        "post_s": t1 - marks[-1],  # VAE decode, conversion
        "total_s": t1 - t0,
    }


def time_store(model, jobs, images_per_call: int) -> float:
    """Seconds per image to PNG-encode and store (the worker's storage step)."""
    from genmedia.deployments.store.outputs import store_outputs
    from genmedia.deployments.store.storage import LocalDirStorage
    from genmedia.models.runner import run_batch

    images = run_batch(model, jobs)
    with tempfile.TemporaryDirectory() as d:
        storage = LocalDirStorage(Path(d))
        t0 = time.perf_counter()
        for job, imgs in zip(jobs, images, strict=True):
            store_outputs(storage, job, imgs, prefix="cal/", extra={}, now=time.time())
        return (time.perf_counter() - t0) / images_per_call


def fit_family(samples: list[dict], family: str, ref_mp: float) -> dict:
    """Least squares: step = f + q_cfg * x (guided) or f + q * x (unguided), x = b * mp / ref."""
    rows, ys = [], []
    for s in samples:
        x = s["batch"] * (s["size"] ** 2 / 1e6) / ref_mp
        cfg = s["cfg"] and family in UNET_FAMILIES
        rows.append([1.0, x if cfg else 0.0, 0.0 if cfg else x])
        ys.append(s["step_s"])
    a = np.array(rows)
    has_plain = a[:, 2].any()
    if not has_plain:
        a = a[:, :2]
    coef, *_ = np.linalg.lstsq(a, np.array(ys), rcond=None)
    f = max(0.0, float(coef[0]))
    q_cfg = max(1e-6, float(coef[1]))
    q = max(1e-6, float(coef[2])) if has_plain else q_cfg
    # The profile caps cfg_multiplier at 4: keep the guided slope (requests' default) whole
    # and let the unguided one be the larger of its fit and a quarter of the guided one.
    q = max(q, q_cfg / 4.0)
    post_rows = [[1.0, s["batch"] * (s["size"] ** 2 / 1e6) / ref_mp] for s in samples]
    pcoef, *_ = np.linalg.lstsq(
        np.array(post_rows), np.array([s["post_s"] for s in samples]), rcond=None
    )
    return {
        "step_fixed_s": f,
        "step_per_image_s": q,
        "cfg_multiplier": min(4.0, max(1.0, q_cfg / q)) if has_plain else 1.0,
        "post_fixed_s": max(0.0, float(pcoef[0])),
        "vae_per_image_s": max(0.0, float(pcoef[1])),
        "pre_s": statistics.median(s["pre_s"] for s in samples),
    }


def calibrate_bare(reps: int, raw: list[dict]) -> dict[str, dict]:
    import torch

    from genmedia.models.catalog import load_catalog
    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    torch.set_num_threads(1)  # a worker replica's budget (num_cpus 0.5 -> one torch thread)
    catalog = load_catalog()
    by_family: dict[str, ModelEntry] = {}
    for m in catalog.models:
        if m.task == "text-to-image":  # the families the profiles model
            by_family.setdefault(m.family, m)  # the first model of each family
    fits = {}
    grid = [(b, s, True) for s in SIZES for b in BATCHES] + [(b, 64, False) for b in (1, 4, 8)]
    with Progress(console=console) as progress:
        task = progress.add_task("bare pipelines", total=len(by_family) * len(grid) * reps)
        for family, entry in by_family.items():
            path = resolve_source(entry.weights)
            loads = []
            for _ in range(2):
                loads.append(load_model(entry, path, "cpu").load_s)
            model = load_model(entry, path, "cpu")
            time_call(model, _jobs(entry, 1, 64, STEPS, None, 0))  # warm-up
            samples = []
            for batch, size, cfg in grid:
                guidance = None if cfg else 0.0
                if not cfg and family not in UNET_FAMILIES:
                    progress.advance(task, reps)
                    continue
                runs = []
                for r in range(reps):
                    runs.append(time_call(model, _jobs(entry, batch, size, STEPS, guidance, r)))
                    progress.advance(task)
                med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                sample = {"family": family, "batch": batch, "size": size, "cfg": cfg, **med}
                samples.append(sample)
                raw.append({"kind": "bare", **sample, "runs": runs})
            ref_mp = 64 * 64 / 1e6
            fit = fit_family(samples, family, ref_mp)
            fit["ref_megapixels"] = ref_mp
            fit["load_s"] = statistics.median(loads)
            fit["store_per_image_s"] = time_store(model, _jobs(entry, 4, 64, 1, None, 0), 4)
            raw.append({"kind": "fit", "family": family, **fit, "loads": loads})
            fits[family] = fit
    return fits


def bare_call_s(fit: dict, m: ModelEntry) -> float:
    """A call of ``m`` at its defaults, one image, by the bare fit of its family."""
    p = m.parameters
    cfg_on = p.guidance.default > 1.0 and m.family in UNET_FAMILIES
    step = fit["step_fixed_s"] + fit["step_per_image_s"] * (fit["cfg_multiplier"] if cfg_on else 1)
    return fit["pre_s"] + p.steps.default * step + fit["post_fixed_s"] + fit["vae_per_image_s"]
