"""Calibrate the simulator's ``tiny-cpu`` profile on this machine.

1. Bare pipelines: the real tiny pipelines of ``genmedia.models`` (default catalog), one torch
   thread as a worker replica gets, timed per phase through the step callback at a few batch
   sizes, resolutions and guidance settings; least squares fit ``step = f + q * b * (mp/ref)``
   (with and without classifier-free guidance), the VAE/output phase per image, the call overhead
   and the load time; PNG encoding + storage per image.
2. Serving path (``--serving``, needs Ray: run under ``flock /tmp/genmedia-ray.lock``): the real
   stack (``genmedia serve``) at idle, one sync request at a time per model: what the client
   waits beyond the server's own timings (HTTP, proxy, gateway: ``submit_s`` / ``respond_s``),
   the scheduler-to-worker hand-off, and how much slower a pipeline computes inside the stack
   than bare (other processes share the two cores).

Writes ``loadtests/sim/profiles/tiny-cpu.yaml`` and the raw samples under
``loadtests/results/sim-calibration-<stamp>.jsonl``.

    flock /tmp/genmedia-ray.lock python loadtests/sim/calibrate.py [--serving] [--reps 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from genmedia.loadtests.sim.costs import PROFILES_DIR, FamilyCost, Profile, dump_profile

RESULTS = Path(__file__).resolve().parents[1] / "results"
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
    from genmedia.deployments.outputs import store_images
    from genmedia.deployments.storage import LocalDirStorage
    from genmedia.models.runner import run_batch

    images = run_batch(model, jobs)
    with tempfile.TemporaryDirectory() as d:
        storage = LocalDirStorage(Path(d))
        t0 = time.perf_counter()
        for job, imgs in zip(jobs, images, strict=True):
            store_images(storage, job, imgs, prefix="cal/", extra={}, now=time.time())
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
    by_family = {}
    for m in catalog.models:
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


def calibrate_serving(reps: int, raw: list[dict], fits: dict[str, dict]) -> dict:
    """Requests one at a time (idle stack) through the harness's own replay (queue API followed
    over SSE, as ``genmedia loadtest run`` does): what a client waits beyond the pipeline's
    compute, and how much slower a pipeline computes inside the stack than bare."""
    import asyncio

    from genmedia.loadtests.replay import ReplayConfig, replay
    from genmedia.loadtests.sim.localstack import default_catalog_data, local_stack
    from genmedia.loadtests.traces import TraceRecord
    from genmedia.models.catalog import parse_catalog

    catalog = parse_catalog(default_catalog_data(), "<default>")
    gap_s = 1.5  # far apart: nothing queues
    trace = [
        TraceRecord(
            t=gap_s * (i * len(catalog.models) + k),
            tenant="sim",
            priority="interactive",
            model=m.id,
            params={"prompt": "a red fox", "seed": i},
        )
        for i in range(reps + 2)
        for k, m in enumerate(catalog.models)
    ]
    console.print(f"serving path: {len(trace)} idle requests over {trace[-1].t:.0f} s")
    with local_stack() as stack:
        cfg = ReplayConfig(url=stack.url, keys={"sim": stack.api_key})
        records = asyncio.run(replay(trace, cfg, lambda i, f: f"calibration request {i}: {f}"))
    outside, factor = [], {f: [] for f in fits}
    spread: dict[str, list[float]] = {}  # compute seconds per model
    warm = 2 * len(catalog.models)
    for n, (rec, tr) in enumerate(zip(records, trace, strict=True)):
        m = catalog.model(tr.model)
        raw.append({"kind": "serving", "record": asdict(rec)})
        if n < warm or rec.status != "COMPLETED" or rec.compute_s is None:
            continue
        outside.append(rec.latency - rec.compute_s)
        fit = fits[m.family]
        p = m.parameters
        cfg_on = p.guidance.default > 1.0 and m.family in UNET_FAMILIES
        mult = fit["cfg_multiplier"]
        bare = (
            fit["pre_s"]
            + p.steps.default
            * (fit["step_fixed_s"] + fit["step_per_image_s"] * (mult if cfg_on else 1.0))
            + fit["post_fixed_s"]
            + fit["vae_per_image_s"]
        )
        factor[m.family].append(rec.compute_s / bare)
        spread.setdefault(m.id, []).append(rec.compute_s)
    if not outside:
        raise RuntimeError("no request completed through the stack")
    cv_of: dict[str, list[float]] = {}
    for mid, v in spread.items():
        if len(v) > 1:
            cv_of.setdefault(catalog.model(mid).family, []).append(
                statistics.stdev(v) / statistics.fmean(v)
            )
    return {
        "outside_s": statistics.median(outside),
        "factor": {f: statistics.median(v) for f, v in factor.items() if v},
        "cv": {f: statistics.median(v) for f, v in cv_of.items()},
    }


def build_profile(fits: dict[str, dict], serving: dict | None) -> Profile:
    cpus = os.cpu_count() or 1
    families = {}
    for family, fit in fits.items():
        k = (serving or {}).get("factor", {}).get(family, 1.0)
        families[family] = FamilyCost(
            step_fixed_s=round(fit["step_fixed_s"] * k, 6),
            step_per_image_s=round(fit["step_per_image_s"] * k, 6),
            ref_megapixels=fit["ref_megapixels"],
            cfg_multiplier=round(fit["cfg_multiplier"], 3),
            vae_per_image_s=round(fit["vae_per_image_s"] * k, 6),
            call_overhead_s=round((fit["pre_s"] + fit["post_fixed_s"]) * k, 6),
            per_image_overhead_s=round(fit["store_per_image_s"], 6),
            cv=round((serving or {}).get("cv", {}).get(family, 0.0), 3),
            load_s=round(fit["load_s"], 3),
            device_share=round(min(1.0, 1 / cpus), 3),  # one torch thread of the machine's CPUs
        )
    # What a client waits beyond the pipeline (HTTP, gateway, job store, scheduler hand-off,
    # storage, the SSE event), less the storage the cost model already charges per image.
    store = statistics.median(f["store_per_image_s"] for f in fits.values())
    outside = max(0.0, (serving or {}).get("outside_s", 0.0) - store)
    return Profile(
        name="tiny-cpu",
        device=f"this machine's {cpus} CPU cores (no GPU), one torch thread per worker replica",
        description="Calibrated by loadtests/sim/calibrate.py from the tiny random-weight models.",
        # On this machine that overhead is CPU work of the proxy, gateway and scheduler: the
        # control plane, which serves submits and completions one at a time.
        control_plane_s=round(outside / 2, 6),
        replica_start_s=10.0,
        families=families,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--serving", action="store_true", help="also measure the real stack")
    ap.add_argument("--out", type=Path, default=PROFILES_DIR / "tiny-cpu.yaml")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    raw: list[dict] = []
    fits = calibrate_bare(args.reps, raw)
    serving = calibrate_serving(args.reps * 2, raw, fits) if args.serving else None
    profile = build_profile(fits, serving)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS / f"sim-calibration-{stamp}.jsonl"
    with raw_path.open("w") as fh:
        for r in raw:
            fh.write(json.dumps(r) + "\n")
    header = (
        f"# Calibrated on this machine by loadtests/sim/calibrate.py at {stamp}"
        f"{' (with --serving)' if serving else ''}; raw samples: "
        f"loadtests/results/{raw_path.name}\n"
    )
    if serving:
        header += (
            f"# serving path at idle (harness replay, queue API + SSE): a client waits "
            f"{serving['outside_s'] * 1000:.1f} ms beyond the pipeline's compute; "
            "stack/bare compute "
            + ", ".join(f"{f} x{v:.2f}" for f, v in serving["factor"].items())
            + "\n"
        )
    dump_profile(profile, args.out, header)
    console.print(f"profile → {args.out}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
