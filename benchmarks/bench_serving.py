"""Serving efficiency: images/s through the whole stack at saturation ÷ the bare pipeline.

Both sides run the same tiny SD1.5-style model, the same batch size and the same torch thread
budget (one thread: the worker replica gets one Ray CPU), measured alternately in one run
(bare, stack, bare, stack, ...) because these machines are noisy. The stack is the real one:
HTTP → Serve proxy → gateway (auth, validation) → scheduler (job store, queues, batch forming)
→ family worker (pipeline, PNG encoding, storage) → back. The summary goes to
``loadtests/results/``, raw per-request samples to ``loadtests/results/raw/``.

    flock /tmp/genmedia-ray.lock python benchmarks/bench_serving.py [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator

from _bench import (
    closed_loop,
    commit,
    ensure_weights,
    machine,
    measure_bare,
    save,
    serving_catalog,
)
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from genmedia.loadtests.local import ray_stack, stamp, tenant_record, tenants_file

API_KEY = "gm_0bec0000_" + "b" * 43
console = Console()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    return ap.parse_args()


def measure(args: argparse.Namespace, concurrency: int) -> list[dict]:
    """Bare pipeline and whole stack, alternately, ``--rounds`` times."""
    import torch

    from genmedia.deployments.serve.local import run_app
    from genmedia.models.runner import load_model
    from genmedia.models.weights import resolve_source

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    catalog = serving_catalog(
        args.batch, args.steps, args.size, tempfile.mkdtemp(prefix="genmedia-bench-")
    )
    ensure_weights(catalog)
    torch.set_num_threads(1)  # the worker replica's budget: one Ray CPU -> one torch thread
    model = load_model(catalog.models[0], resolve_source("tiny://sd15"), "cpu")
    rounds = []
    with ray_stack(num_cpus=2, num_gpus=1) as url, Progress(console=console) as progress:
        run_app(catalog, tenants_file([tenant_record("bench", API_KEY)]))
        task = progress.add_task("bare / stack rounds", total=args.rounds * 2)
        for r in range(args.rounds):
            progress.update(task, description=f"round {r + 1}: bare pipeline")
            bare = measure_bare(model, args.batch, args.seconds, seed0=r * 10**6)
            progress.advance(task)
            progress.update(task, description=f"round {r + 1}: whole stack")
            stack = asyncio.run(closed_loop(url, API_KEY, concurrency, args.seconds, args.warmup))
            progress.advance(task)
            ratio = stack["images_per_s"] / bare["images_per_s"]
            rounds.append({"bare": bare, "stack": stack, "ratio": ratio})
    return rounds


def build_summary(args: argparse.Namespace, concurrency: int, rounds: list[dict]) -> dict:

    ratios = [r["ratio"] for r in rounds]
    return {
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
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def raw_rows(rounds: list[dict], batch: int) -> Iterator[dict]:
    for i, r in enumerate(rounds):
        for c in r["bare"]["call_seconds"]:
            yield {"round": i, "side": "bare", "call_s": c, "images": batch}
        for s in r["stack"]["samples"]:
            yield {"round": i, "side": "stack", **s}


def report(args: argparse.Namespace, summary: dict) -> None:
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
    console.print(f"ratio (median of {args.rounds}): [bold]{summary['ratio_median']:.3f}[/]")


def main() -> None:
    args = parse_args()
    concurrency = args.concurrency or 3 * args.batch
    rounds = measure(args, concurrency)
    summary = build_summary(args, concurrency, rounds)
    name = f"bench_serving-{stamp()}-s{args.steps}-b{args.batch}"
    summary_path, raw_path = save(name, summary, raw_rows(rounds, args.batch))
    report(args, summary)
    console.print(f"summary → {summary_path}\nraw samples → {raw_path}")


if __name__ == "__main__":
    main()
