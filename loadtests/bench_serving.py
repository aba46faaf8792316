"""Serving efficiency: images/s through the whole stack at saturation ÷ the bare pipeline.

Both sides run the same tiny SD1.5-style model, the same batch size and the same torch thread
budget (one thread: the worker replica gets one Ray CPU), measured alternately in one run
(bare, stack, bare, stack, ...) because these machines are noisy. The stack is the real one:
HTTP → Serve proxy → gateway (auth, validation) → scheduler (job store, queues, batch forming)
→ family worker (pipeline, PNG encoding, storage) → back. Raw per-request samples and a summary
go to ``loadtests/results/``.

    python loadtests/bench_serving.py [--steps 20] [--batch 8] [--rounds 3] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import free_port

RESULTS = Path(__file__).resolve().parent / "results"
API_KEY = "gm_0bec0000_" + "b" * 43
console = Console()


def bench_catalog(batch: int, steps: int, size: int, outputs: str):
    from genmedia.models.catalog import parse_catalog

    return parse_catalog(
        {
            "server": {
                "storage": {"kind": "local", "dir": outputs},
                "gateway_num_cpus": 0.25,
                "scheduler_num_cpus": 0.25,
                "scheduler": {"job_store": f"{outputs}/jobs.sqlite"},
            },
            "workers": {"sd15": {"num_cpus": 1}},
            "models": [
                {
                    "id": "bench-sd15",
                    "family": "sd15",
                    "weights": "tiny://sd15",
                    "parameters": {
                        "width": {"default": size, "min": 32, "max": 512},
                        "height": {"default": size, "min": 32, "max": 512},
                        "steps": {"default": steps, "min": 1, "max": 100},
                        "num_images": {"default": 1, "min": 1, "max": 1},
                    },
                    "max_batch_size": batch,
                    "gpu_fraction": 0.5,
                }
            ],
        },
        "<bench>",
    )


def measure_bare(model, batch: int, seconds: float, seed0: int) -> dict:
    """Images/s of back-to-back pipeline calls of ``batch`` images in this process."""
    from genmedia.models.params import GenerateRequest, resolve_request
    from genmedia.models.runner import run_batch

    def jobs(k: int):
        out = []
        for i in range(batch):
            job, _ = resolve_request(
                model.entry,
                GenerateRequest(prompt="a red fox", seed=seed0 + k * batch + i),
                request_id=f"bare-{k}-{i}",
            )
            out.append(job)
        return out

    run_batch(model, jobs(10**5))  # warm-up
    calls = []
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run_batch(model, jobs(k))
        calls.append(time.perf_counter() - t0)
        k += 1
    elapsed = time.perf_counter() - start
    return {
        "images": k * batch,
        "seconds": elapsed,
        "images_per_s": k * batch / elapsed,
        "call_seconds": calls,
    }


async def _flood(url: str, concurrency: int, seconds: float, warmup: float) -> dict:
    """Closed-loop saturation: ``concurrency`` requests always in flight; counts the window."""
    samples: list[dict] = []
    stop_at = time.perf_counter() + warmup + seconds
    window_start = time.perf_counter() + warmup
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers=headers
    ) as client:
        seed = iter(range(10**9))

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/models/bench-sd15/generate",
                    json={"prompt": "a red fox", "seed": next(seed)},
                )
                t1 = time.perf_counter()
                body = r.json()
                samples.append(
                    {
                        "sent": t0,
                        "done": t1,
                        "status": r.status_code,
                        "latency_s": t1 - t0,
                        "batch_images": body.get("batch", {}).get("images"),
                        "queue_s": body.get("timings", {}).get("queue_s"),
                        "compute_s": body.get("timings", {}).get("compute_s"),
                    }
                )

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    in_window = [
        s
        for s in samples
        if window_start <= s["done"] <= window_start + seconds and s["status"] == 200
    ]
    errors = sum(1 for s in samples if s["status"] != 200)
    return {
        "images": len(in_window),
        "seconds": seconds,
        "images_per_s": len(in_window) / seconds,
        "errors": errors,
        "mean_batch_images": statistics.fmean(s["batch_images"] for s in in_window)
        if in_window
        else 0.0,
        "samples": samples,
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except Exception:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="requests in flight (default: 3 x batch: one computing, one staged "
        "at the worker, one waiting in the scheduler's queue)",
    )
    args = ap.parse_args()
    concurrency = args.concurrency or 3 * args.batch

    import ray
    import torch
    from ray import serve

    from genmedia.deployments.cli.preflight import check_weights
    from genmedia.deployments.serve.app import APP_NAME, build_app
    from genmedia.deployments.tenants.config import key_record, parse_tenants
    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    outputs = tempfile.mkdtemp(prefix="genmedia-bench-")
    catalog = bench_catalog(args.batch, args.steps, args.size, outputs)
    issues = check_weights(catalog, build_tiny=True)
    if issues:
        raise SystemExit(f"weights: {issues}")
    torch.set_num_threads(1)  # the worker replica's budget: one Ray CPU -> one torch thread
    model = load_model(catalog.models[0], resolve_source("tiny://sd15"), "cpu")

    port = free_port()
    os.environ.setdefault("RAY_worker_niceness", "0")  # same priority as the bare side
    ray.init(
        num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tenants = parse_tenants(
        {
            "tenants": [
                {
                    "id": "bench",
                    "api_keys": [key_record(API_KEY).model_dump(mode="json")],
                    "quotas": {
                        "max_concurrent_jobs": 10_000,
                        "requests_per_minute": 1_000_000,
                        "max_queued_jobs": 10_000,
                    },
                }
            ]
        },
        "<bench tenants>",
    )
    serve.run(build_app(catalog, tenants), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    rounds = []
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("bare / stack rounds", total=args.rounds * 2)
            for r in range(args.rounds):
                progress.update(task, description=f"round {r + 1}: bare pipeline")
                bare = measure_bare(model, args.batch, args.seconds, seed0=r * 10**6)
                progress.advance(task)
                progress.update(task, description=f"round {r + 1}: whole stack")
                stack = asyncio.run(_flood(url, concurrency, args.seconds, args.warmup))
                progress.advance(task)
                rounds.append(
                    {
                        "bare": bare,
                        "stack": stack,
                        "ratio": stack["images_per_s"] / bare["images_per_s"],
                    }
                )
    finally:
        serve.shutdown()
        ray.shutdown()

    ratios = [r["ratio"] for r in rounds]
    summary = {
        "benchmark": "bench_serving",
        "model": "tiny sd15 (UNet 32/64 ch, CLIP 32 hidden)",
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "concurrency": concurrency,
        "torch_threads": 1,
        "rounds": [
            {
                "bare_images_per_s": r["bare"]["images_per_s"],
                "stack_images_per_s": r["stack"]["images_per_s"],
                "stack_mean_batch_images": r["stack"]["mean_batch_images"],
                "stack_errors": r["stack"]["errors"],
                "ratio": r["ratio"],
            }
            for r in rounds
        ],
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = RESULTS / f"bench_serving-{stamp}-s{args.steps}-b{args.batch}"
    (base.with_suffix(".json")).write_text(json.dumps(summary, indent=2))
    with base.with_suffix(".jsonl").open("w") as f:
        for i, r in enumerate(rounds):
            for c in r["bare"]["call_seconds"]:
                f.write(
                    json.dumps({"round": i, "side": "bare", "call_s": c, "images": args.batch})
                    + "\n"
                )
            for s in r["stack"]["samples"]:
                f.write(json.dumps({"round": i, "side": "stack", **s}) + "\n")

    table = Table(
        "round",
        "bare img/s",
        "stack img/s",
        "mean batch",
        "errors",
        "ratio",
        title=f"serving efficiency (tiny sd15, {args.size}px, {args.steps} steps, "
        f"batch {args.batch})",
    )
    for i, r in enumerate(summary["rounds"]):
        table.add_row(
            str(i + 1),
            f"{r['bare_images_per_s']:.2f}",
            f"{r['stack_images_per_s']:.2f}",
            f"{r['stack_mean_batch_images']:.2f}",
            str(r["stack_errors"]),
            f"{r['ratio']:.3f}",
        )
    console.print(table)
    console.print(
        f"ratio (median of {args.rounds}): [bold]{summary['ratio_median']:.3f}[/]"
        f"  → {base.with_suffix('.json')}"
    )


if __name__ == "__main__":
    main()
